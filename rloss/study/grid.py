"""The study's training runs and their results, for the notebooks.

    configs = study_grid(base, name="small", losses=("pce", "pce_crf", "full"), seeds=(0, 1))
    finals = train_runs(configs)            # a finished run is skipped (rerun=True trains it again)
    runs = load_runs("results")             # every results/*/metrics.json with its config
    table = summarize(runs)                 # mean, spread and count over seeds per setting

``losses`` may add the regularizers beyond Table 1 (:data:`EXTRA_LOSSES`: pCE + normalized cut,
pCE + KernelCut). Runs are named ``<name>_<loss>_seed<seed>``. With ``two_phase=True`` each regularized
run follows the paper's DenseCRF schedule: it starts from the finished pCE run of the same seed
(``loss.init_from``) and fine-tunes for ``finetune_iterations`` (default: half the pCE run's length,
``rloss.engine.config.fine_tuning``).

The training recipe is written once: the config's defaults (``rloss/engine/config.py``), or ``recipe="paper"``.
The training notebooks' parameters reach it through ``rloss.study.training_notebook``.
"""

from __future__ import annotations

import copy
import itertools
import json
import statistics
import sys
from pathlib import Path

from ..engine.config import TrainConfig, config_from_dict, fine_tuning, recipe_config
from ..crf_weight import relative_crf_weight
from ..engine.progress import announce
from ..engine.run_pool import finished_metrics, train_runs  # noqa: F401  (re-exported: the notebooks' calls)
from ..engine.runs import (CHECKPOINT, METRICS, in_studies, read_run_config, run_folders,  # noqa: F401
                          run_name, study_of)  # re-exported: the notebooks' calls
from .parameters import check_distinct_list

LOSSES = ("pce", "pce_crf", "full")  # the losses of the paper's Table 1 this study compares, in its order
# The regularized losses beyond Table 1 (issue 19): extra columns, shown only where such runs exist.
EXTRA_LOSSES = ("pce_nc", "pce_kernelcut")
ALL_LOSSES = LOSSES + EXTRA_LOSSES
REGULARIZERS = ("pce_crf",) + EXTRA_LOSSES  # the losses with a regularizer term, compared with pCE
LOSS_LABELS = {"pce": "pCE", "pce_crf": "pCE + DenseCRF", "full": "full supervision",
               "pce_nc": "pCE + normalized cut", "pce_kernelcut": "pCE + KernelCut"}


# The paper's two-phase schedule is the recipe's: a regularized run fine-tunes the pCE run of its seed.
TWO_PHASE = True

def base_config(data_root: str, results_dir: str, recipe: str = "default", **settings) -> TrainConfig:
    """A training config from flat settings over the ``recipe``'s defaults: each ``section_key=value``
    (e.g. ``optim_iterations=2000``, ``loss_crf_weight=5e-7``) sets ``section.key`` to the value as it is;
    the config dataclasses declare the keys, and check the values once, as they check a config file."""
    values = {"data": {"root": str(data_root)}, "run": {"results_dir": str(results_dir)}}
    for key, value in settings.items():
        section, _, name = key.partition("_")
        if not name:
            raise ValueError(f"study: setting {key!r} must be <section>_<key>, e.g. optim_epochs")
        values.setdefault(section, {})[name] = value
    return config_from_dict(values, "the study's settings", base=recipe_config(recipe)).validate()


def check_grid(losses, seeds) -> None:
    """The grid's parameters, each checked with its name before any run starts."""
    check_distinct_list("losses", losses, ALL_LOSSES, item="loss")
    check_distinct_list("seeds", seeds)


def plan_grid(base: TrainConfig, name: str, losses=LOSSES, seeds=(0,), two_phase: bool | None = False,
              finetune_iterations: int | None = None, rerun: bool = False, sweep_crf: bool = False,
              sweep_nc: bool = False) -> list[TrainConfig]:
    """The training notebooks' grid: :func:`study_grid` of ``base``, at ``base``'s weights; ``sweep_crf``
    (``sweep_nc``) first chooses the DenseCRF (normalized cut) weight on a held-out share of train
    (:func:`chosen_weights`; val is never read). ``two_phase`` None: the recipe's (:data:`TWO_PHASE`)."""
    two_phase = TWO_PHASE if two_phase is None else two_phase
    check_grid(losses, seeds)
    if sweep_crf or sweep_nc:  # only when asked: it is the training side of the study
        base = chosen_weights(base, name, two_phase, finetune_iterations, rerun, sweep_crf, sweep_nc)
    crf_weight = base.loss.crf_relative_weight if base.loss.crf_weight is None else base.loss.crf_weight
    off = [loss for loss, weight in (("pce_crf", crf_weight), ("pce_nc", base.loss.nc_weight))
           if loss in losses and weight == 0]
    if off:  # a regularizer at weight 0 is pCE: its runs would duplicate the pCE runs under another name
        losses = [loss for loss in losses if loss not in off]
        announce(f"{', '.join(LOSS_LABELS[loss] for loss in off)}: weight 0 is pCE; "
                 "no such runs are trained (the pCE runs are the result)")
    configs = study_grid(base, name, losses=losses, seeds=seeds, two_phase=two_phase,
                         finetune_iterations=finetune_iterations)
    print(f"{len(configs)} runs: " + ", ".join(c.run.name for c in configs))
    return configs


def chosen_weights(base: TrainConfig, name: str, two_phase: bool, finetune_iterations: int | None = None,
                   rerun: bool = False, crf: bool = True, nc: bool = False) -> TrainConfig:
    """A copy of ``base`` with its DenseCRF weight (``crf``) and normalized cut weight (``nc``) chosen by
    sweeps (``rloss.engine.sweep``) on a held-out share of train. A two-phase grid sweeps the weight of the
    fine-tuning, from pCE trained on the kept share. The normalized cut sweep (``<name>_nc``) trains
    pCE + normalized cut and shares the DenseCRF sweep's pCE runs."""
    from ..engine.sweep import sweep_crf_weight, two_phase_base
    from .plots import save_sweep_plot

    sweep_base = two_phase_base(base, name, finetune_iterations, rerun=rerun) if two_phase else base
    chosen_base = copy.deepcopy(base)
    if crf:  # the sweep's runs set their own weights
        chosen = sweep_crf_weight(sweep_base, name, rerun=rerun)
        save_sweep_plot(chosen, base.run.results_dir)
        chosen_base.loss.crf_relative_weight = chosen["best"]
        print(f"DenseCRF weight chosen by the sweep: {chosen['best']:g}x the published balance ({chosen['reason']})")
    if nc:
        nc_base = copy.deepcopy(sweep_base)
        nc_base.loss.type = "pce_nc"
        chosen = sweep_crf_weight(nc_base, f"{name}_nc", rerun=rerun, key="loss.nc_weight", runs_prefix=name)
        save_sweep_plot(chosen, base.run.results_dir)
        chosen_base.loss.nc_weight = chosen["best"]
        print(f"normalized cut weight chosen by the sweep: {chosen['best']:g} ({chosen['reason']})")
    return chosen_base


def train_grid(configs: list[TrainConfig], rerun: bool = False, parallel_runs: int | str = 1) -> list[dict]:
    """Trains the grid (:func:`train_runs`: finished runs skipped, interrupted ones resumed, ``parallel_runs``
    at once) and returns its runs as :func:`load_runs` reads them back."""
    train_runs(configs, rerun=rerun, parallel_runs=parallel_runs)
    names = {cfg.run.name for cfg in configs}
    results_dirs = dict.fromkeys(cfg.run.results_dir for cfg in configs)
    return [r for results_dir in results_dirs for r in load_runs(results_dir) if r["run"] in names]


def grid_summary(runs: list[dict]) -> str:
    """Per setting, each loss's final mIoU (mean ± spread over seeds) and time per iteration, and the
    DenseCRF loss's share of an iteration: the training notebooks' printed result."""
    lines = []
    for row in summarize(runs):
        lines.append(f"{row['model']} on {row['data']} ({row['resolution']} px images, crop {row['crop_size']}):")
        for loss in ALL_LOSSES:
            mean, std, n = row[f"{loss}_miou"], row[f"{loss}_std"], row[f"{loss}_seeds"]
            if n:
                spread = f" ± {std:.4f}" if std is not None else ""
                t = row[f"{loss}_s_per_iteration"]
                lines.append(f"  {LOSS_LABELS[loss]:>17}: mIoU {mean:.4f}{spread} over {n} seed(s), "
                             f"{t * 1000:.0f} ms/iteration")
        if row.get("crf_share") is not None:
            lines.append(f"  DenseCRF loss share of an iteration: {row['crf_share']:.1%}")
    return "\n".join(lines)


def study_grid(base: TrainConfig, name: str, losses=LOSSES, seeds=(0,), two_phase: bool = False,
               finetune_iterations: int | None = None) -> list[TrainConfig]:
    """One config per (loss, seed), in an order that trains a two-phase run after its pCE run."""
    unknown = [loss for loss in losses if loss not in ALL_LOSSES]
    if unknown:
        raise ValueError(f"study: unknown loss {unknown[0]!r} (choose from {', '.join(ALL_LOSSES)})")
    if two_phase and any(loss in REGULARIZERS for loss in losses) and "pce" not in losses:
        raise ValueError("study: two_phase needs the pce runs (the regularized runs start from them)")
    configs = []
    for seed in seeds:
        for loss in sorted(losses, key=ALL_LOSSES.index):
            cfg = fine_tuning(base, finetune_iterations) if loss in REGULARIZERS and two_phase else copy.deepcopy(base)
            cfg.loss.type = loss
            cfg.run.seed = int(seed)
            cfg.run.name = run_name(name, loss, seed)
            if loss in REGULARIZERS and two_phase:
                cfg.loss.init_from = str(Path(cfg.run.results_dir) / run_name(name, "pce", seed) / CHECKPOINT)
            configs.append(cfg.validate())
    return configs


# --------------------------------------------------------------------------------------------
# Reading results back
# --------------------------------------------------------------------------------------------


def _relative_weight(cfg: TrainConfig) -> float:
    if cfg.loss.crf_weight is None:
        return cfg.loss.crf_relative_weight
    crop = cfg.data.crop_size
    return relative_crf_weight(cfg.loss.crf_weight, crop, crop, cfg.loss.sigma_xy, cfg.loss.scale_factor,
                               channels=cfg.data.channels)


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every finished run under ``results_dir``: its name, settings, final and per-eval metrics, timings."""
    runs = []
    for run_dir in run_folders(results_dir, needs=(METRICS,), label="load_runs"):  # a mixed folder is skipped
        try:
            metrics = json.loads((run_dir / METRICS).read_text())
            if metrics.get("final") is None:
                continue  # unfinished
            cfg = read_run_config(run_dir)
        except (OSError, ValueError) as exc:  # an unreadable file
            print(f"load_runs: skipped {run_dir} ({exc})", file=sys.stderr)
            continue
        timings = metrics.get("timings", {})
        runs.append({
            "run": run_dir.name, "model": cfg.model.name, "data": Path(cfg.data.root).name,
            "resolution": metrics.get("data", {}).get("image_side"),
            "crop_size": cfg.data.crop_size, "loss": cfg.loss.type, "two_phase": cfg.loss.init_from is not None,
            "seed": cfg.run.seed, "miou": metrics["final"]["miou"], "iterations": metrics["final"].get("iteration"),
            "crf_relative_weight": _relative_weight(cfg), "nc_weight": cfg.loss.nc_weight,
            "pixel_accuracy": metrics["final"]["pixel_accuracy"],
            "per_class_iou": metrics["final"]["per_class_iou"], "evals": metrics["evals"],
            "s_per_iteration": timings.get("median_iteration_s"), "crf_share": timings.get("crf_share"),
            "device": timings.get("device"), "config": cfg.to_dict(),
        })
    return runs


# A run has converged when its validation mIoU gained less than this over its last quarter of iterations.
CONVERGED_GAIN, LATE_SHARE, MIN_EVALS = 0.01, 0.25, 8


def _median_slope(points: list[tuple[int, float]]) -> float:
    """The Theil-Sen slope: the median of the slopes between every pair of points, which one
    outlying point cannot move far."""
    slopes = [(y1 - y0) / (x1 - x0) for i, (x0, y0) in enumerate(points) for x1, y1 in points[i + 1:] if x1 != x0]
    return statistics.median(slopes) if slopes else 0.0


def convergence(run: dict) -> dict:
    """``late_gain``: the validation mIoU the run gained over its last quarter of iterations: the
    median slope between the evaluations in that quarter (at least the last three) times its
    length, so that one noisy evaluation at either end does not decide it;
    ``converged``: that gain is below ``CONVERGED_GAIN`` and the curve has at least ``MIN_EVALS``
    evaluations to tell."""
    points = sorted((e["iteration"], e["miou"]) for e in run["evals"] if e.get("miou") is not None)
    if len(points) < 2:
        return {"late_gain": None, "evals": len(points), "converged": False}
    last = points[-1][0]
    late = [p for p in points if p[0] >= (1 - LATE_SHARE) * last]
    late = points[-max(len(late), 3):]
    late_gain = _median_slope(late) * LATE_SHARE * last
    return {"late_gain": late_gain, "evals": len(points),
            "converged": len(points) >= MIN_EVALS and late_gain < CONVERGED_GAIN}


def started_from(run: dict) -> str | None:
    """The name of the run a two-phase run fine-tuned (the folder of its ``loss.init_from``), else None."""
    init_from = run["config"]["loss"].get("init_from")
    return Path(init_from).parent.name if init_from else None


def curve(run: dict, runs: list[dict]) -> list[tuple[int, float]]:
    """The run's ``(iteration, mIoU)`` evaluations; a two-phase run's continue the iterations of the
    pCE run it fine-tuned, when that run is among ``runs``."""
    start = next((r for r in runs if r["run"] == started_from(run)), None)
    offset = start["iterations"] if start is not None else 0
    return sorted((offset + e["iteration"], e["miou"]) for e in run["evals"] if e.get("miou") is not None)


def gain_along_training(crf_runs: list[dict], pce_runs: list[dict]) -> list[tuple[int, float]]:
    """``(iteration, mean regularized mIoU - mean pCE mIoU)`` over seeds. One-phase runs are compared at
    the evaluations both have. A two-phase run continues the iterations of the pCE run it fine-tunes
    and is compared with that run's end point (where its pCE training stopped)."""
    by_name = {r["run"]: r for r in pce_runs}
    fine_tuned = [r for r in crf_runs if started_from(r) in by_name]
    if fine_tuned:
        curves = [{i: miou - by_name[started_from(run)]["miou"] for i, miou in curve(run, pce_runs)}
                  for run in fine_tuned]
        common = set.intersection(*(set(c) for c in curves))
        return sorted((i, statistics.fmean(c[i] for c in curves)) for i in common)

    def mean_curve(runs):
        curves = [{e["iteration"]: e["miou"] for e in r["evals"] if e.get("miou") is not None} for r in runs]
        common = set.intersection(*(set(c) for c in curves)) if curves else set()
        return {i: statistics.fmean(c[i] for c in curves) for i in common}

    crf, pce = mean_curve(crf_runs), mean_curve(pce_runs)
    return sorted((i, crf[i] - pce[i]) for i in set(crf) & set(pce))


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


# Settings that change nothing a run learns: where it writes, how it logs, how fast it runs.
NEUTRAL_SETTINGS = ("run.name", "run.seed", "run.results_dir", "run.device", "run.threads", "run.compile",
                    "run.checkpoint_every_iters", "run.eval_every_epochs", "run.eval_every_iters", "data.num_workers",
                    "loss.backend", "loss.type")
NEUTRAL_SECTIONS = ("wandb",)
# Settings of the DenseCRF term alone: they tell DenseCRF runs apart and mean nothing to pCE or full runs.
CRF_SETTINGS = ("loss.crf_relative_weight", "loss.crf_weight", "loss.sigma_rgb", "loss.sigma_xy",
                "loss.scale_factor", "loss.kernel", "loss.init_from")
# Settings of the normalized cut term alone, likewise.
NC_SETTINGS = ("loss.nc_weight", "loss.nc_sigma_rgb", "loss.nc_sigma_xy")
# What tells one setting of each regularized loss from another (the lattice's scale and kernel, and
# the two-phase start, apply to every regularizer).
VARIANT_SETTINGS = {"pce_crf": CRF_SETTINGS,
                    "pce_nc": NC_SETTINGS + ("loss.scale_factor", "loss.kernel", "loss.init_from"),
                    "pce_kernelcut": CRF_SETTINGS + NC_SETTINGS}


def _flat_settings(config: dict) -> dict:
    flat = {}
    for section, entries in config.items():
        if section in NEUTRAL_SECTIONS:
            continue
        for key, value in entries.items():
            name = f"{section}.{key}"
            if name not in NEUTRAL_SETTINGS:
                flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _shared_settings(run: dict, by_dir: dict) -> tuple:
    """The settings a run shares with the pCE and full runs it is compared with. A two-phase
    DenseCRF run is compared with the pCE run it starts from: its settings are that run's."""
    init_from = run["config"]["loss"].get("init_from")
    if run["loss"] in REGULARIZERS and init_from and Path(init_from).parent.name in by_dir:
        run = by_dir[Path(init_from).parent.name]
    flat = _flat_settings(run["config"])
    return tuple(sorted((k, v) for k, v in flat.items() if k not in CRF_SETTINGS + NC_SETTINGS))


def _variant(run: dict) -> tuple:
    """What tells one setting of a regularized loss from another: its own settings, and for the two-phase
    schedule its fine-tuning length (the path it starts from differs per seed, so only its presence counts).
    Beyond DenseCRF the names carry the loss (``pce_nc:loss.nc_weight``): each regularizer has its own."""
    flat = _flat_settings(run["config"])
    variant = {k: flat.get(k) for k in VARIANT_SETTINGS[run["loss"]]}
    variant["loss.init_from"] = bool(variant["loss.init_from"])
    if variant["loss.init_from"]:
        variant["optim.epochs"], variant["optim.iterations"] = flat["optim.epochs"], flat["optim.iterations"]
    prefix = "" if run["loss"] == "pce_crf" else f"{run['loss']}:"  # DenseCRF's names as before issue 19
    return tuple(sorted((prefix + k, v) for k, v in variant.items()))


def _differences(keys: list[tuple]) -> list[str]:
    """For settings given as sorted (key, value) tuples: per entry, the pairs that are not the same in
    all the entries that have them (a loss without runs in a row has no settings there: its columns
    already tell the rows apart)."""
    dicts = [dict(k) for k in keys]
    names = sorted({n for d in dicts for n in d})
    varying = [n for n in names if len({repr(d[n]) for d in dicts if n in d}) > 1]
    return [", ".join(f"{n}={d[n]}" for n in varying if n in d) for d in dicts]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per setting: mIoU mean and standard deviation over seeds for each loss, the gains
    over pCE, the median s/iteration (and DenseCRF share).

    Runs are pooled over seeds only when *every* setting that changes what a run learns is the
    same (data, model, crop, schedule, learning rate, ...; not its name, folder or device), so
    runs of two weights, two epoch counts or two data sets never share a row. Each setting of a
    regularized loss (DenseCRF, normalized cut, KernelCut: weight, bandwidths, schedule) is a
    variant; a row is one combination of variants (usually one of each), beside the pCE and
    full-supervision runs of the same shared settings; a two-phase run (``loss.init_from``) sits
    beside the pCE run it was fine-tuned from. Every loss of :data:`ALL_LOSSES` has its keys (no
    runs: ``<loss>_seeds`` 0). ``differs`` names what tells a row from the others of its model,
    data and crop.
    """
    by_dir = {run["run"]: run for run in runs}
    groups: dict[tuple, dict] = {}
    for run in runs:
        group = groups.setdefault(_shared_settings(run, by_dir),
                                  {"pce": [], "full": [], **{loss: {} for loss in REGULARIZERS}})
        if run["loss"] in REGULARIZERS:
            group[run["loss"]].setdefault(_variant(run), []).append(run)
        else:
            group[run["loss"]].append(run)
    rows, keys = [], []
    for shared, group in groups.items():
        choices = [sorted(group[loss].items(), key=lambda kv: repr(kv[0])) or [((), [])] for loss in REGULARIZERS]
        for combination in itertools.product(*choices):
            members_of = {"pce": group["pce"], "full": group["full"],
                          **{loss: members for loss, (_, members) in zip(REGULARIZERS, combination)}}
            first = next(r for members in members_of.values() for r in members)
            regularized = [r for loss in REGULARIZERS for r in members_of[loss]]
            two_phase = any(r["config"]["loss"].get("init_from") for r in regularized)
            nc_runs = members_of["pce_nc"] or members_of["pce_kernelcut"]
            row = {"model": first["model"], "data": first["data"], "resolution": first["resolution"],
                   "crop_size": first["crop_size"], "schedule": "two-phase" if two_phase else "one-phase",
                   "crf_relative_weight": members_of["pce_crf"][0]["crf_relative_weight"] if members_of["pce_crf"] else None,
                   "nc_weight": nc_runs[0].get("nc_weight") if nc_runs else None,  # the table's column
                   "nc_weights": {loss: members_of[loss][0].get("nc_weight")  # each NC loss's own
                                  for loss in ("pce_nc", "pce_kernelcut") if members_of[loss]},
                   "iterations": statistics.median(r["iterations"] for m in members_of.values() for r in m)}
            for loss in ALL_LOSSES:
                members = members_of[loss]
                mean, std = _spread([r["miou"] for r in members])
                times = [r["s_per_iteration"] for r in members if r["s_per_iteration"] is not None]
                row[f"{loss}_miou"], row[f"{loss}_std"], row[f"{loss}_seeds"] = mean, std, len(members)
                row[f"{loss}_s_per_iteration"] = statistics.median(times) if times else None
                row[f"{loss}_runs"] = [r["run"] for r in members]
                classes = dict.fromkeys(c for r in members for c in r["per_class_iou"])
                row[f"{loss}_per_class"] = {c: _spread([r["per_class_iou"][c] for r in members
                                                        if r["per_class_iou"].get(c) is not None])[0] for c in classes}
                if loss == "pce_crf":
                    shares = [r["crf_share"] for r in members if r["crf_share"] is not None]
                    row["crf_share"] = statistics.median(shares) if shares else None
            for loss in REGULARIZERS + ("full",):
                base, other = row["pce_miou"], row[f"{loss}_miou"]
                row[f"{loss}_gain"] = other - base if base is not None and other is not None else None
            rows.append(row)
            keys.append(shared + tuple(pair for variant, _ in combination for pair in variant))
    for label in {(r["model"], r["data"], r["resolution"], r["crop_size"]) for r in rows}:
        members = [i for i, r in enumerate(rows) if (r["model"], r["data"], r["resolution"], r["crop_size"]) == label]
        for i, text in zip(members, _differences([keys[i] for i in members])):
            rows[i]["differs"] = text
    order = lambda r: (str(r["model"]), str(r["data"]), str(r["resolution"]), str(r["crop_size"]), r["schedule"],
                       r["crf_relative_weight"] or 0.0, r["nc_weight"] or 0.0, r["differs"])
    return sorted(rows, key=order)


LOSS_COLOURS = {"pce": "tab:blue", "pce_crf": "tab:orange", "full": "tab:green", "pce_nc": "tab:purple",
                "pce_kernelcut": "tab:red"}


def plot_grid_curves(runs: list[dict], title: str):
    """Validation mIoU along training, one line per run (a colour per loss, labelled once)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labelled = set()
    for run in sorted(runs, key=lambda r: (r["loss"], r["seed"])):
        points = curve(run, runs)  # a two-phase run continues its pCE run's line
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", color=LOSS_COLOURS[run["loss"]], alpha=0.8,
                label=None if run["loss"] in labelled else LOSS_LABELS[run["loss"]])
        labelled.add(run["loss"])
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU")
    ax.set_title(f"{title}: learning curves (one line per seed)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig
