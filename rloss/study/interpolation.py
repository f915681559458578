"""Notebook 04: input upscaling x logit upsampling, measured on the trained low-resolution models.

    paths = checkpoint_paths("results", "small", losses, seeds)    # a missing run: one clear error
    predictors = {key: load_predictor(path) for key, path in paths.items()}
    rows = evaluate_runs(predictors, "data/synthetic_40px", "val")   # one row per (loss, seed, combo)
    summary = summarize(rows)                                       # mean and std over seeds
    findings = conclusions(rows, summary)                           # statements computed from the numbers
    write_results("results", "small", rows, summary, meta)          # interpolation_small.json/.csv/.md

A *combo* is ``(input interpolation, logit interpolation)``: the image is resized
to the network's input size with the first (PIL), the network's stride-4 logits
straight to the image's own size with the second (torch), as
:meth:`rloss.engine.infer.Predictor.predict` does.
Scores are those of :func:`rloss.engine.infer.evaluate_interpolations`: mIoU over the
split, mean boundary F-score per image, median seconds per image (end to end).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..engine.config import DEVICES
from ..data.folder import SegmentationFolder
from ..data.io import IGNORE_INDEX, DataError, write_text_atomic
from .plots import save_figure
from ..engine.infer import Predictor, _resize_input, _resize_logits, load_predictor, network_size, resolve_interpolation
from ..metrics import ConfusionMatrix, boundary_f_score
from ..engine.runs import CHECKPOINT, METRICS, check_run_folder
from .grid import ALL_LOSSES, LOSS_LABELS, LOSSES, run_name
from .parameters import check_choice, check_distinct_list, check_integer, check_study_name

__all__ = [
    "DEFAULT_COMBOS",
    "ROW_FIELDS",
    "evaluate_interpolations",
    "checkpoint_paths",
    "check_parameters",
    "check_classes",
    "evaluate_runs",
    "summarize",
    "paired_effect",
    "conclusions",
    "time_resizes",
    "resize_timing_table",
    "describe_setup",
    "markdown_table",
    "rows_csv",
    "write_results",
    "result_paths",
    "plot_metrics",
    "plot_examples",
    "combo_name",
    "example_panels",
    "save_figure",
]

ROW_FIELDS = ("loss", "seed", "input_interpolation", "logit_interpolation", "miou", "boundary_f",
              "median_s_per_image", "n_images", "pixel_accuracy")
METRIC_LABELS = {"miou": "mIoU", "boundary_f": "boundary F", "median_s_per_image": "s / image"}


def combo_name(input_interpolation: str, logit_interpolation: str) -> str:
    return f"{input_interpolation}/{logit_interpolation}"


def _combo(row: dict) -> tuple[str, str]:
    return row["input_interpolation"], row["logit_interpolation"]


def _loss_label(loss: str) -> str:
    return LOSS_LABELS.get(loss, loss)


# The (input, logit) interpolation pairs the study compares; nearest as a floor.
DEFAULT_COMBOS = (
    ("bilinear", "bilinear"), ("bilinear", "bicubic"), ("bicubic", "bilinear"), ("bicubic", "bicubic"),
    ("nearest", "nearest"),
)


# --------------------------------------------------------------------------------------------
# The runs
# --------------------------------------------------------------------------------------------


def _check_runs_wanted(losses, seeds) -> tuple[list[str], list[int]]:
    """The losses (of the study's, grid.ALL_LOSSES) and seeds naming the runs: distinct, non-empty."""
    return check_distinct_list("losses", losses, ALL_LOSSES, item="loss"), check_distinct_list("seeds", seeds)


def checkpoint_paths(results_dir, study_name: str, losses=LOSSES, seeds=(0,)) -> dict[tuple[str, int], Path]:
    """``{(loss, seed): results_dir/<study_name>_<loss>_seed<seed>/checkpoint.pt}``.

    Every run must be finished (its checkpoint and final metrics written); otherwise one
    FileNotFoundError names each missing or unfinished run and says to run notebook 02 first.
    """
    losses, seeds = _check_runs_wanted(losses, seeds)
    paths, missing, unfinished, mixed = {}, [], [], []
    for loss in losses:
        for seed in seeds:
            run_dir = Path(results_dir) / run_name(study_name, loss, int(seed))
            path = run_dir / CHECKPOINT
            if not path.is_file():
                missing.append(str(path))
                continue
            try:
                final = json.loads((run_dir / METRICS).read_text()).get("final")
            except (OSError, ValueError, AttributeError):
                final = None
            if final is None:
                unfinished.append(str(run_dir))
            else:
                try:
                    check_run_folder(run_dir)
                except DataError as exc:
                    mixed.append(str(exc))
            paths[(loss, int(seed))] = path
    if mixed:
        raise DataError("; ".join(mixed))
    if missing or unfinished:
        parts = []
        if missing:
            parts.append(f"checkpoint not found: {', '.join(missing)}")
        if unfinished:
            parts.append(f"run not finished (no final metrics in {METRICS}): {', '.join(unfinished)}")
        raise FileNotFoundError(
            f"{'; '.join(parts)}. Run notebook 02 first: it trains the runs {study_name}_<loss>_seed<seed> "
            f"for losses {losses} and seeds {seeds} into {results_dir}.")
    return paths


def check_parameters(data_root, results_dir, study_name: str, losses, seeds, device: str = "auto",
                     split: str = "val", examples: int = 4, cpu_threads: int = 1) -> tuple[Path, Path]:
    """Notebook 04's parameters checked (one ValueError line naming the first at fault; a data set
    without the split: FileNotFoundError); returns ``data_root`` and ``results_dir`` as paths."""
    check_choice("device", device, DEVICES)
    _check_runs_wanted(losses, seeds)
    check_integer("examples", examples, 0)
    check_integer("cpu_threads", cpu_threads, 0)  # 0: torch's default
    check_study_name("study_name", study_name)
    data_root = Path(data_root)
    if not (data_root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file():
        raise FileNotFoundError(f"{data_root}: no split {split!r} (ImageSets/Segmentation/{split}.txt); "
                                "run notebook 01 first, or set data_root to a data set in the VOC layout")
    return data_root, Path(results_dir)


def check_classes(predictor: Predictor, data_root, split: str = "val") -> SegmentationFolder:
    """The split, after checking that its classes are the checkpoint's (ids would mean other things)."""
    data = SegmentationFolder(data_root, split, require_scribbles=False)
    if data.class_names != predictor.class_names:
        raise ValueError(f"{data_root}: its classes {data.class_names} are not the classes the checkpoint "
                         f"{predictor.checkpoint_path} was trained on {predictor.class_names}")
    return data


def evaluate_interpolations(checkpoint, data_root, split: str = "val", combos=None, device: str = "auto",
                            size: int | None = None, progress: bool = False) -> list[dict]:
    """mIoU, mean boundary F-score and median seconds per image for each ``(input, logit)`` mode pair.

    Every image of the split is predicted at its original size (network side ``size``, default the
    checkpoint's crop size) and scored against its full mask. ``combos`` defaults to
    :data:`DEFAULT_COMBOS`. ``checkpoint`` is a path or a :class:`Predictor`.
    """
    from tqdm import tqdm

    combos = [tuple(c) for c in (DEFAULT_COMBOS if combos is None else combos)]
    for combo in combos:
        if len(combo) != 2:
            raise ValueError(f"a combo is (input mode, logit mode), got {combo!r}")
        for mode in combo:
            resolve_interpolation(mode, 1, 1)
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_predictor(checkpoint, device)
    data = SegmentationFolder(data_root, split, class_names=predictor.class_names, require_scribbles=False)
    cms = [ConfusionMatrix(predictor.num_classes) for _ in combos]
    bfs: list[list[float]] = [[] for _ in combos]
    times: list[list[float]] = [[] for _ in combos]
    sync = torch.cuda.synchronize if predictor.device.type == "cuda" else (lambda: None)
    warm = False
    for index in tqdm(range(len(data)), desc=f"interpolations {split}", unit="img", disable=not progress,
                      file=sys.stderr):
        sample = data[index]
        if sample.mask is None:
            raise DataError(f"{data.root}: {sample.id} has no full mask; the study needs them")
        if not warm:  # the first forward pass of a process is slow (allocation, lazy init): untimed
            predictor.predict([sample.image], "bilinear", size)
            warm = True
        for c, (in_mode, out_mode) in enumerate(combos):
            sync()
            t0 = time.perf_counter()
            [pred] = predictor.predict([sample.image], size=size, input_interpolation=in_mode,
                                       logit_interpolation=out_mode)
            sync()
            times[c].append(time.perf_counter() - t0)
            cms[c].update(torch.from_numpy(pred.labels), torch.from_numpy(sample.mask))
            bfs[c].append(boundary_f_score(pred.labels, sample.mask))
    rows = []
    for c, (in_mode, out_mode) in enumerate(combos):
        scores = cms[c].scores(predictor.class_names)
        rows.append({
            "input_interpolation": in_mode,
            "logit_interpolation": out_mode,
            "miou": scores["miou"],
            "boundary_f": float(np.mean(bfs[c])),
            "pixel_accuracy": scores["pixel_accuracy"],
            "per_class_iou": scores["per_class_iou"],
            "median_s_per_image": statistics.median(times[c]),
            "images": len(data),
            "network_short_side": predictor.size if size is None else size,
        })
    return rows


def evaluate_runs(predictors: dict, data_root, split: str = "val", combos=DEFAULT_COMBOS,
                  progress: bool = False) -> list[dict]:
    """One row (:data:`ROW_FIELDS`) per ``(loss, seed)`` of ``predictors`` and combo, in that order."""
    rows = []
    for (loss, seed), predictor in predictors.items():
        check_classes(predictor, data_root, split)
        for r in evaluate_interpolations(predictor, data_root, split, combos=combos, progress=progress):
            rows.append({
                "loss": loss, "seed": int(seed),
                "input_interpolation": r["input_interpolation"], "logit_interpolation": r["logit_interpolation"],
                "miou": r["miou"], "boundary_f": r["boundary_f"], "median_s_per_image": r["median_s_per_image"],
                "n_images": r["images"], "pixel_accuracy": r["pixel_accuracy"],
            })
    return rows


def time_resizes(images, size: int, num_classes: int, combos=DEFAULT_COMBOS, repeats: int = 5) -> list[dict]:
    """The resizing alone, without the network: median seconds per image of the input resize
    (image -> network size) and of the logit resize (``num_classes`` stride-4 maps to the image's size)."""
    out = []
    generator = torch.Generator().manual_seed(0)
    for in_mode, out_mode in combos:
        t_in, t_out = [], []
        for image in images:
            h, w = image.shape[:2]
            nh, nw = network_size(h, w, size)
            # The decoder's stride-4 size (ceil, as the convolutions with padding give it).
            logits = torch.randn(1, num_classes, -(-nh // 4), -(-nw // 4), generator=generator)
            for _ in range(repeats):
                t0 = time.perf_counter()
                _resize_input(image, nh, nw, in_mode)
                t1 = time.perf_counter()
                _resize_logits(logits, h, w, out_mode)
                t2 = time.perf_counter()
                t_in.append(t1 - t0)
                t_out.append(t2 - t1)
        out.append({"input_interpolation": in_mode, "logit_interpolation": out_mode,
                    "input_resize_s": statistics.median(t_in), "logit_resize_s": statistics.median(t_out)})
    return out


def resize_timing_table(resize_timing: list[dict]) -> str:
    """:func:`time_resizes`' medians in milliseconds, one line per combo."""
    lines = ["the resizing alone, median ms per image (no network):", f"{'input/logits':>18}  {'input':>8}  {'logits':>8}"]
    for t in resize_timing:
        name = combo_name(t["input_interpolation"], t["logit_interpolation"])
        lines.append(f"{name:>18}  {1e3 * t['input_resize_s']:8.4f}  {1e3 * t['logit_resize_s']:8.4f}")
    return "\n".join(lines)


def describe_setup(predictors: dict, data: SegmentationFolder, data_root) -> dict:
    """The models and the images they are scored on: ``sizes`` (Counter of image (h, w)),
    ``network_sides`` (the models' input short sides) and ``lines`` to print, with a warning when
    no image is smaller than the network input (then the input interpolation changes nothing)."""
    data_root = Path(data_root)
    sizes = collections.Counter(data.load(i).image.shape[:2] for i in data.ids)
    first = next(iter(predictors.values()))
    lines = [f"{len(predictors)} models on {first.device} ({torch.get_num_threads()} CPU threads): "
             f"{', '.join(p.run_name for p in predictors.values())}",
             f"{data_root} / {data.split}: {len(data)} images, sizes (h, w): {dict(sizes)}"]
    for p in predictors.values():
        trained_on = Path(p.config.data.root)
        note = "" if trained_on.resolve() == data_root.resolve() else f" (trained on {trained_on}, evaluated on another set)"
        lines.append(f"  {p.run_name}: {p.model_name}, network short side {p.size} px{note}")
    network_sides = {p.size for p in predictors.values()}
    upscaled = sum(n for (h, w), n in sizes.items() if min(h, w) < min(network_sides))
    lines.append(f"images upscaled to the network: {upscaled} of {len(data)}")
    if not upscaled:
        lines.append(f"WARNING: no image of {data_root} is smaller than the network input ({min(network_sides)} px): "
                     "the input interpolation then changes nothing; is data_root the low-resolution set?")
    return {"sizes": sizes, "network_sides": network_sides, "lines": lines}


# --------------------------------------------------------------------------------------------
# Aggregation and conclusions
# --------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _loss_order(rows: list[dict]) -> list[str]:
    present = {r["loss"] for r in rows}
    return [loss for loss in ALL_LOSSES if loss in present] + sorted(present - set(ALL_LOSSES))


def _combo_order(rows: list[dict]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(_combo(r) for r in rows))


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds (None with one seed) per loss x combo.

    Losses in the study's order, combos in their first appearance's order. A seed that
    appears twice for one loss and combo, or a differing image count, is a ValueError.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["loss"], *_combo(r)), []).append(r)
    out = []
    for loss in _loss_order(rows):
        for combo in _combo_order(rows):
            members = groups.get((loss, *combo))
            if not members:
                continue
            seeds = [m["seed"] for m in members]
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"{loss} {combo_name(*combo)}: seed listed twice in {seeds}")
            images = {m["n_images"] for m in members}
            if len(images) != 1:
                raise ValueError(f"{loss} {combo_name(*combo)}: runs scored on different image counts {sorted(images)}")
            row = {"loss": loss, "input_interpolation": combo[0], "logit_interpolation": combo[1],
                   "n_seeds": len(members), "seeds": sorted(seeds), "n_images": images.pop()}
            for metric in ("miou", "boundary_f", "median_s_per_image"):
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([m[metric] for m in members])
            out.append(row)
    return out


def paired_effect(rows: list[dict], loss: str, factor: str = "input", metric: str = "miou",
                  better: str = "bicubic", worse: str = "bilinear") -> dict:
    """``better`` minus ``worse`` for one side of the combo (``factor`` "input" or "logit"),
    paired over seeds and over the other side's modes where both combos were run.

    ``seed_spread`` is the typical standard deviation over seeds of ``metric`` for this loss
    (the mean of the per-combo standard deviations of the combos compared; None with one seed).
    ``verdict``: ``better`` or ``worse`` when the mean difference exceeds the seed spread in that
    direction, ``"within spread"`` when it does not, ``"equal"`` when every difference is zero,
    ``"one seed"`` when there is no spread to judge a non-zero difference by, ``"not run"``
    when no pair exists.
    """
    if factor not in ("input", "logit"):
        raise ValueError(f"factor must be 'input' or 'logit', got {factor!r}")
    side, other = (0, 1) if factor == "input" else (1, 0)
    values = {(r["seed"], _combo(r)): r[metric] for r in rows if r["loss"] == loss}
    diffs, combos_used = [], set()
    for (seed, combo), value in values.items():
        if combo[side] != better:
            continue
        partner = [None, None]
        partner[side], partner[other] = worse, combo[other]
        key = (seed, tuple(partner))
        if key in values:
            diffs.append(value - values[key])
            combos_used.update({combo, tuple(partner)})
    seeds = sorted({seed for seed, _ in values})
    result = {"loss": loss, "factor": factor, "metric": metric, "better": better, "worse": worse,
              "diffs": diffs, "mean": statistics.fmean(diffs) if diffs else None, "n_seeds": len(seeds),
              "seed_spread": None}
    stds = []
    for combo in combos_used:
        per_seed = [values[(s, combo)] for s in seeds if (s, combo) in values]
        if len(per_seed) > 1:
            stds.append(statistics.stdev(per_seed))
    if stds:
        result["seed_spread"] = statistics.fmean(stds)
    mean, spread = result["mean"], result["seed_spread"]
    if mean is None:
        verdict = "not run"
    elif all(d == 0 for d in diffs):
        verdict = "equal"
    elif spread is None:
        verdict = "one seed"
    elif mean > spread:
        verdict = better
    elif mean < -spread:
        verdict = worse
    else:
        verdict = "within spread"
    result["verdict"] = verdict
    return result


def _signed(x: float, digits: int = 4) -> str:
    return f"{x:+.{digits}f}"


def _effect_line(effect: dict, what: str) -> str:
    metric = METRIC_LABELS[effect["metric"]]
    if effect["verdict"] == "not run":
        return f"  {what}: {effect['better']} vs {effect['worse']} not both run"
    n = len(effect["diffs"])
    text = (f"  {what}, {effect['better']} - {effect['worse']}: {metric} {_signed(effect['mean'])} "
            f"(mean of {n} paired difference{'s' if n != 1 else ''}, range {_signed(min(effect['diffs']))} "
            f"to {_signed(max(effect['diffs']))})")
    verdict = effect["verdict"]
    if verdict == "equal":
        return text + ": identical predictions' scores"
    positive, negative = sum(d > 0 for d in effect["diffs"]), sum(d < 0 for d in effect["diffs"])
    if n > 1 and (positive == n or negative == n):
        text += f", the same sign in all {n} pairs"
    elif n > 1:
        text += f", {positive} up and {negative} down"
    if verdict == "one seed":
        return text + ": one seed, so no seed spread to judge it by"
    spread = f"seed spread {effect['seed_spread']:.4f}"
    if verdict == "within spread":
        return text + f": within the {spread}"
    return text + f": {verdict} is better by more than the {spread}"


def _best_text(ranked: list[dict], metric: str, label: str) -> str:
    """"best <label> X with A, +d over the next, B" or, for a tie, every combo sharing the best."""
    top = ranked[0][f"{metric}_mean"]
    tied = [s for s in ranked if s[f"{metric}_mean"] == top]
    if len(tied) > 1:
        return (f"best {label} {top:.4f}, tied between {len(tied)} combinations (input/logits): "
                + ", ".join(combo_name(*_combo(s)) for s in tied))
    text = f"best {label} {top:.4f} with {combo_name(*_combo(ranked[0]))} (input/logits)"
    if len(ranked) > 1:
        text += f", {_signed(top - ranked[1][f'{metric}_mean'])} over the next, {combo_name(*_combo(ranked[1]))}"
    return text


def conclusions(rows: list[dict], summary: list[dict] | None = None, resize_timing: list[dict] | None = None) -> list[str]:
    """What the numbers say, as lines of text: the best combo per loss and its margins, the effect
    of bicubic over bilinear for the input and for the logits against the seed spread, the
    nearest floor, the time per image, and a tally over the losses."""
    summary = summarize(rows) if summary is None else summary
    lines = []
    tally = {"input": [], "logit": []}
    for loss in _loss_order(rows):
        group = [s for s in summary if s["loss"] == loss]
        n_seeds = max(s["n_seeds"] for s in group)
        ranked = sorted(group, key=lambda s: -s["miou_mean"])
        best = ranked[0]
        lines.append(f"{_loss_label(loss)} ({n_seeds} seed{'s' if n_seeds != 1 else ''}): "
                     + _best_text(ranked, "miou", "mIoU"))
        best_bf = max(group, key=lambda s: s["boundary_f_mean"])
        lines.append("  " + _best_text(sorted(group, key=lambda s: -s["boundary_f_mean"]), "boundary_f", "boundary F"))
        for factor, what in (("input", "input upscaling"), ("logit", "logit upsampling")):
            for metric in ("miou", "boundary_f"):
                effect = paired_effect(rows, loss, factor, metric)
                lines.append(_effect_line(effect, what))
                if metric == "miou":
                    tally[factor].append((loss, effect["verdict"], effect["diffs"]))
        floor = [s for s in group if _combo(s) == ("nearest", "nearest")]
        smooth = [s for s in ranked if _combo(s) != ("nearest", "nearest")]
        if floor and smooth and floor[0]["miou_mean"] >= best["miou_mean"]:
            lines.append(f"  nearest/nearest, meant as the floor, has the best mIoU (or ties it): "
                         f"{_signed(floor[0]['miou_mean'] - smooth[0]['miou_mean'])} over the best smooth "
                         f"combination, {combo_name(*_combo(smooth[0]))}")
        elif floor:
            lines.append(f"  nearest/nearest (the floor): mIoU {floor[0]['miou_mean']:.4f}, "
                         f"{_signed(floor[0]['miou_mean'] - best['miou_mean'])} from the best; boundary F "
                         f"{_signed(floor[0]['boundary_f_mean'] - best_bf['boundary_f_mean'])} from the best")
    for factor, what in (("input", "Bicubic input upscaling"), ("logit", "Bicubic logit upsampling")):
        verdicts = tally[factor]
        if not verdicts:
            continue
        wins = [_loss_label(loss) for loss, v, _ in verdicts if v == "bicubic"]
        losses_ = [_loss_label(loss) for loss, v, _ in verdicts if v == "bilinear"]
        undecided = [_loss_label(loss) for loss, v, _ in verdicts if v in ("one seed", "not run")]
        text = (f"{what} beats bilinear on mIoU by more than the seed spread for {len(wins)} of {len(verdicts)} "
                f"losses{' (' + ', '.join(wins) + ')' if wins else ''}; bilinear beats it so for {len(losses_)}"
                f"{' (' + ', '.join(losses_) + ')' if losses_ else ''}")
        if undecided:
            text += f"; undecided (one seed or not run) for {len(undecided)} ({', '.join(undecided)})"
        # The seed spread is a strict yardstick for paired differences (same model, same images):
        # say also where the sign never changes, which the spread can hide.
        ahead = [_loss_label(loss) for loss, _, d in verdicts if len(d) > 1 and all(x > 0 for x in d)]
        behind = [_loss_label(loss) for loss, _, d in verdicts if len(d) > 1 and all(x < 0 for x in d)]
        text += (f". In every paired comparison (same model, same images) bicubic is ahead for {len(ahead)} of "
                 f"{len(verdicts)} losses{' (' + ', '.join(ahead) + ')' if ahead else ''} and behind for "
                 f"{len(behind)}{' (' + ', '.join(behind) + ')' if behind else ''}")
        lines.append(text + ".")
    by_combo: dict[tuple, list[float]] = {}
    for r in rows:
        by_combo.setdefault(_combo(r), []).append(r["median_s_per_image"])
    timing = ", ".join(f"{combo_name(*c)} {1e3 * statistics.median(v):.2f}" for c, v in by_combo.items())
    lines.append(f"Time per image, end to end (median over runs, ms): {timing}.")
    if resize_timing:
        parts = ", ".join(f"{combo_name(*_combo(t))} {1e3 * (t['input_resize_s'] + t['logit_resize_s']):.3f}"
                          for t in resize_timing)
        lines.append(f"Of which the resizing alone (input + logits, ms): {parts}.")
    return lines


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------


def _pm(mean: float, std: float | None, digits: int = 4, scale: float = 1.0) -> str:
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def markdown_table(summary: list[dict]) -> str:
    """One line per loss x combo: mIoU, boundary F and ms per image as mean ± std over seeds
    (the mean alone with one seed); the best mIoU and boundary F of each loss in bold."""
    lines = ["| loss | input | logits | mIoU | boundary F | ms / image | seeds | images |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    best = {}
    for s in summary:
        for metric in ("miou", "boundary_f"):
            key = (s["loss"], metric)
            best[key] = max(best.get(key, -math.inf), s[f"{metric}_mean"])
    for s in summary:
        cells = []
        for metric in ("miou", "boundary_f"):
            text = _pm(s[f"{metric}_mean"], s[f"{metric}_std"])
            cells.append(f"**{text}**" if s[f"{metric}_mean"] == best[(s["loss"], metric)] else text)
        ms = _pm(s["median_s_per_image_mean"], s["median_s_per_image_std"], digits=2, scale=1e3)
        lines.append(f"| {_loss_label(s['loss'])} | {s['input_interpolation']} | {s['logit_interpolation']} | "
                     f"{cells[0]} | {cells[1]} | {ms} | {s['n_seeds']} | {s['n_images']} |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: list[dict]) -> str:
    """The per-run rows as CSV with the :data:`ROW_FIELDS` header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in ROW_FIELDS})
    return buffer.getvalue()


def result_paths(results_dir, study_name: str) -> dict[str, Path]:
    stem = Path(results_dir) / f"interpolation_{study_name}"
    return {"json": stem.with_suffix(".json"), "csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"),
            "plot": Path(f"{stem}.png"), "examples": Path(f"{stem}_examples.png")}


def write_results(results_dir, study_name: str, rows: list[dict], summary: list[dict] | None = None,
                  meta: dict | None = None) -> dict[str, Path]:
    """``interpolation_<study_name>.json`` (meta, rows, summary, conclusions), ``.csv`` (the rows)
    and ``.md`` (the summary table), each written atomically. Returns their paths."""
    summary = summarize(rows) if summary is None else summary
    meta = dict(meta or {})
    paths = result_paths(results_dir, study_name)
    doc = {"study_name": study_name, **meta, "rows": [{k: r.get(k) for k in ROW_FIELDS} for r in rows],
           "summary": summary, "conclusions": conclusions(rows, summary, meta.get("resize_timing"))}
    write_text_atomic(paths["json"], json.dumps(doc, indent=1) + "\n")
    write_text_atomic(paths["csv"], rows_csv(rows))
    parts = [f"# Input upscaling x logit upsampling: {study_name}"]
    where = ", ".join(f"{k} {meta[k]}" for k in ("data_root", "split", "device") if k in meta)
    if where:
        parts.append(where)
    parts.append("Mean ± standard deviation over seeds (the mean alone for one seed); best per loss in bold.")
    write_text_atomic(paths["md"], "\n\n".join(parts) + "\n\n" + markdown_table(summary))
    return {k: paths[k] for k in ("json", "csv", "md")}


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_metrics(summary: list[dict], rows: list[dict], title: str = ""):
    """mIoU, boundary F and ms per image per loss: one marker per combo at the mean over seeds
    with a bar of ± one standard deviation, the seeds as small dots; then the paired mIoU
    differences bicubic - bilinear (input, logits) per loss, their mean with a bar of ± the seed
    spread (:func:`paired_effect`)."""
    import matplotlib.pyplot as plt

    losses = _loss_order(rows)
    combos = _combo_order(rows)
    width = 0.8 / max(len(combos), 1)
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 0.8]})
    for ax, (metric, label, scale) in zip(axes, (("miou", "mIoU", 1), ("boundary_f", "boundary F-score", 1),
                                                 ("median_s_per_image", "ms per image (median)", 1e3))):
        for c, combo in enumerate(combos):
            xs, means, errs = [], [], []
            for i, loss in enumerate(losses):
                s = next((s for s in summary if s["loss"] == loss and _combo(s) == combo), None)
                if s is None:
                    continue
                x = i - 0.4 + width * (c + 0.5)
                xs.append(x)
                means.append(s[f"{metric}_mean"] * scale)
                errs.append((s[f"{metric}_std"] or 0.0) * scale)
                seeds = [r[metric] * scale for r in rows if r["loss"] == loss and _combo(r) == combo]
                ax.scatter([x] * len(seeds), seeds, s=8, color=colors(c), alpha=0.45, zorder=2)
            ax.errorbar(xs, means, yerr=errs, fmt="o", color=colors(c), capsize=3, zorder=3,
                        label=combo_name(*combo))
        ax.set_xticks(range(len(losses)), [_loss_label(loss) for loss in losses], fontsize=8)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(title="input/logits", fontsize=7, title_fontsize=8)
    ax = axes[3]
    for f, (factor, color) in enumerate((("input", "tab:blue"), ("logit", "tab:orange"))):
        for i, loss in enumerate(losses):
            effect = paired_effect(rows, loss, factor)
            if effect["mean"] is None:
                continue
            x = i + (f - 0.5) * 0.3
            ax.scatter([x] * len(effect["diffs"]), effect["diffs"], s=10, color=color, alpha=0.45)
            ax.errorbar([x], [effect["mean"]], yerr=[effect["seed_spread"] or 0.0], fmt="D", color=color, capsize=3,
                        label=f"{factor}: bicubic - bilinear" if i == 0 else None)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(losses)), [_loss_label(loss) for loss in losses], fontsize=8)
    ax.set_title("paired Δ mIoU (bar: ± seed spread)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_examples(samples, predictions: dict, network_inputs: dict, title: str = ""):
    """One row per sample: the image, its full mask, the network's input with each upscaling
    (and their difference, amplified, when both bilinear and bicubic are given), and the label map of each combo, titled with its pixel accuracy and the pixels where it
    differs from the first combo.

    ``predictions[sample.id][combo]`` is a label map, ``network_inputs[sample.id][mode]`` an RGB image.
    """
    import matplotlib.pyplot as plt

    from ..data.io import colorize
    samples = list(samples)
    if not samples:
        raise ValueError("plot_examples: no samples")
    combos = list(predictions[samples[0].id])
    modes = list(network_inputs[samples[0].id])
    ncols = 2 + len(modes) + ({"bilinear", "bicubic"} <= set(modes)) + len(combos)
    fig, axes = plt.subplots(len(samples), ncols, figsize=(1.55 * ncols, 1.75 * len(samples) + 0.4), squeeze=False)
    for row, sample in enumerate(samples):
        h, w = sample.image.shape[:2]
        panels = [(f"{sample.id} ({w}x{h})", sample.image), ("full mask", colorize(sample.mask))]
        for mode in modes:
            picture = network_inputs[sample.id][mode]
            panels.append((f"{mode} in ({picture.shape[1]}x{picture.shape[0]})", picture))
        if {"bilinear", "bicubic"} <= set(modes):
            diff = np.abs(network_inputs[sample.id]["bicubic"].astype(np.int16)
                          - network_inputs[sample.id]["bilinear"].astype(np.int16)).max(axis=2)
            panels.append((f"|bicubic - bilinear| x8\n(max {int(diff.max())} of 255)",
                           np.clip(diff * 8, 0, 255).astype(np.uint8)))
        first = predictions[sample.id][combos[0]]
        valid = sample.mask != IGNORE_INDEX
        for combo in combos:
            labels = predictions[sample.id][combo]
            accuracy = float((labels[valid] == sample.mask[valid]).mean()) if valid.any() else float("nan")
            changed = int((labels != first).sum())
            note = f"acc {accuracy:.3f}" + (f", {changed} px ≠" if combo != combos[0] else "")
            panels.append((f"{combo_name(*combo)}\n{note}", colorize(labels)))
        for col, (name, picture) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, interpolation="nearest", **({"cmap": "gray", "vmin": 0, "vmax": 255} if picture.ndim == 2 else {}))
            ax.set_title(name, fontsize=6.5)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def example_panels(predictor: Predictor, samples, combos=DEFAULT_COMBOS, input_modes=("bilinear", "bicubic")):
    """``(predictions, network_inputs)`` for :func:`plot_examples`: each sample's label map per combo
    and the image as the network sees it with each input mode."""
    predictions, inputs = {}, {}
    for sample in samples:
        h, w = sample.image.shape[:2]
        nh, nw = network_size(h, w, predictor.size)
        inputs[sample.id] = {mode: _resize_input(sample.image, nh, nw, mode) for mode in input_modes}
        predictions[sample.id] = {
            tuple(combo): predictor.predict([sample.image], input_interpolation=combo[0],
                                            logit_interpolation=combo[1])[0].labels
            for combo in combos
        }
    return predictions, inputs
