"""The study's training runs and their results, for the notebooks.

    configs = study_grid(base, name="small", losses=("pce", "pce_crf", "full"), seeds=(0, 1))
    finals = train_runs(configs)            # a finished run is skipped (rerun=True trains it again)
    runs = load_runs("results")             # every results/*/metrics.json with its config
    table = summarize(runs)                 # mean, spread and count over seeds per setting

Runs are named ``<name>_<loss>_seed<seed>``. With ``two_phase=True`` the DenseCRF
run is the paper's schedule: it starts from the finished pCE run of the same seed
(``loss.init_from``) and fine-tunes for ``finetune_epochs``.
"""

from __future__ import annotations

import copy
import json
import re
import statistics
import sys
from pathlib import Path

from .config import TrainConfig, load_config
from .crf_weight import relative_crf_weight
from .data.io import DataError
from .progress import progress_bar, report_run
from .run_pool import resolve_processes, train_in_parallel
from .runs import CHECKPOINT, CONFIG, METRICS, check_run_folder
from .train import train

LOSSES = ("pce", "pce_crf", "full")
LOSS_LABELS = {"pce": "pCE", "pce_crf": "pCE + DenseCRF", "full": "full supervision"}


def base_config(data_root: str, results_dir: str, **settings) -> TrainConfig:
    """A training config from the notebooks' flat parameters: each ``section_key=value``
    (e.g. ``optim_epochs=30``, ``loss_crf_weight=5e-7``) sets ``section.key``; checked like ``--set``."""
    overrides = [f"data.root={data_root}", f"run.results_dir={results_dir}"]
    for key, value in settings.items():
        section, _, name = key.partition("_")
        if not name:
            raise ValueError(f"study: setting {key!r} must be <section>_<key>, e.g. optim_epochs")
        overrides.append(f"{section}.{name}={json.dumps(value)}")
    return load_config(None, overrides)


def run_name(name: str, loss: str, seed: int) -> str:
    return f"{name}_{loss}_seed{seed}"


_RUN_NAME = re.compile(r"^(?P<study>.+)_(?P<loss>" + "|".join(sorted(LOSSES, key=len, reverse=True))
                       + r")_seed(?P<seed>\d+)$")


def study_of(run: str) -> str | None:
    """The study a run belongs to (``run_name``'s ``name``); None for a run not named by a study."""
    match = _RUN_NAME.match(run)
    return match["study"] if match else None


def in_studies(run: str, study_names=None) -> bool:
    """Whether ``run`` belongs to one of ``study_names`` (a name or a list; None: any), matched exactly:
    ``small`` takes ``small_pce_seed0``, not ``small2_pce_seed0`` nor a sweep's ``small_sweep_w1``."""
    if study_names is None:
        return True
    names = [study_names] if isinstance(study_names, str) else list(study_names)
    return study_of(run) in {str(n) for n in names}


def study_grid(base: TrainConfig, name: str, losses=LOSSES, seeds=(0,), two_phase: bool = False,
               finetune_epochs: int | None = None) -> list[TrainConfig]:
    """One config per (loss, seed), in an order that trains a two-phase run after its pCE run."""
    unknown = [loss for loss in losses if loss not in LOSSES]
    if unknown:
        raise ValueError(f"study: unknown loss {unknown[0]!r} (choose from {', '.join(LOSSES)})")
    if two_phase and "pce_crf" in losses and "pce" not in losses:
        raise ValueError("study: two_phase needs the pce runs (the DenseCRF runs start from them)")
    configs = []
    for seed in seeds:
        for loss in sorted(losses, key=LOSSES.index):
            cfg = copy.deepcopy(base)
            cfg.loss.type = loss
            cfg.run.seed = int(seed)
            cfg.run.name = run_name(name, loss, seed)
            if loss == "pce_crf" and two_phase:
                cfg.loss.init_from = str(Path(cfg.run.results_dir) / run_name(name, "pce", seed) / CHECKPOINT)
                cfg.optim.epochs = finetune_epochs or base.optim.epochs
            configs.append(cfg.validate())
    return configs


def finished_metrics(cfg: TrainConfig) -> dict | None:
    """The final metrics of a finished run with exactly this config; None otherwise (also for a
    folder whose files come from different runs: it is reported and trained again)."""
    try:
        metrics = json.loads((cfg.run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("final") is None or not _same_config(cfg):
        return None
    try:
        check_run_folder(cfg.run_dir)
    except DataError as exc:
        print(f"{exc}; training it again", file=sys.stderr)
        return None
    return metrics["final"]


def train_runs(configs: list[TrainConfig], rerun: bool = False, parallel_runs: int | str = 1) -> list[dict]:
    """Trains each config and returns their final metrics. A run already finished with the same
    config is skipped unless ``rerun``; an interrupted one (a checkpoint and the same config, no
    final metrics) is resumed. ``parallel_runs``: how many train at once, each in its own process
    (``"auto"``: one per CPU core as memory allows, one on a GPU; see ``rloss.run_pool``)."""
    finals: list[dict | None] = [None] * len(configs)
    pending = []  # (index, resume)
    for i, cfg in enumerate(configs):
        done = None if rerun else finished_metrics(cfg)
        if done is not None:
            print(f"[{i + 1}/{len(configs)}] {cfg.run.name}: finished before (mIoU {done['miou']:.4f}), skipped",
                  file=sys.stderr)
            report_run(i + 1, len(configs), cfg.run.name, skipped=True)
            finals[i] = done
        else:
            resumable = not rerun and (cfg.run_dir / CHECKPOINT).is_file() and _same_config(cfg) and _one_run(cfg)
            pending.append((i, resumable))
    processes = resolve_processes(parallel_runs, configs[0].run.device if configs else "cpu", len(pending))

    def announce(j: int) -> None:
        i = pending[j][0]
        print(f"[{i + 1}/{len(configs)}] {configs[i].run.name}", file=sys.stderr)
        report_run(i + 1, len(configs), configs[i].run.name)  # to the study runner's terminal, when there is one

    if processes == 1:
        for j, (i, resumable) in enumerate(pending):
            announce(j)
            finals[i] = train(configs[i], resume=resumable)
        return finals  # type: ignore[return-value]

    print(f"training {len(pending)} runs, {processes} at once (one process each)", file=sys.stderr)
    bar = progress_bar(total=len(pending), desc=f"runs finished ({processes} at once)", unit="run")

    def finished(j: int, final: dict, printed: str) -> None:
        i = pending[j][0]
        sys.stderr.write(printed)
        bar.write(f"{configs[i].run.name}: done, mIoU {final['miou']:.4f}", file=sys.stderr)
        bar.update(1)

    try:
        done = train_in_parallel([(configs[i], resumable) for i, resumable in pending], processes,
                                 on_start=announce, on_done=finished)
    finally:
        bar.close()
    for (i, _), final in zip(pending, done):
        finals[i] = final
    return finals  # type: ignore[return-value]


def _one_run(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml and checkpoint.pt were written by the same run."""
    try:
        check_run_folder(cfg.run_dir, (CONFIG, CHECKPOINT))
        return True
    except DataError:
        return False


def _same_config(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml holds exactly ``cfg`` (a missing or bad one does not)."""
    try:
        return load_config(cfg.run_dir / CONFIG).to_dict() == cfg.to_dict()
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Reading results back
# --------------------------------------------------------------------------------------------


def _relative_weight(cfg: TrainConfig) -> float:
    if cfg.loss.crf_weight is None:
        return cfg.loss.crf_relative_weight
    crop = cfg.data.crop_size
    return relative_crf_weight(cfg.loss.crf_weight, crop, crop, cfg.loss.sigma_xy, cfg.loss.scale_factor)


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every finished run under ``results_dir``: its name, settings, final and per-eval metrics, timings."""
    runs = []
    for metrics_path in sorted(Path(results_dir).glob(f"*/{METRICS}")):
        run_dir = metrics_path.parent
        try:
            metrics = json.loads(metrics_path.read_text())
            if metrics.get("final") is None:
                continue  # unfinished
            cfg = load_config(run_dir / CONFIG)
            check_run_folder(run_dir)  # never one run's metrics under another's config
        except (OSError, ValueError) as exc:  # DataError (a mixed folder, an unreadable file) is a ValueError
            print(f"load_runs: skipped {run_dir} ({exc})", file=sys.stderr)
            continue
        timings = metrics.get("timings", {})
        runs.append({
            "run": run_dir.name, "model": cfg.model.name, "data": Path(cfg.data.root).name,
            "resolution": metrics.get("data", {}).get("image_side"),
            "crop_size": cfg.data.crop_size, "loss": cfg.loss.type, "two_phase": cfg.loss.init_from is not None,
            "seed": cfg.run.seed, "miou": metrics["final"]["miou"], "iterations": metrics["final"].get("iteration"),
            "crf_relative_weight": _relative_weight(cfg),
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


def gain_along_training(crf_runs: list[dict], pce_runs: list[dict]) -> list[tuple[int, float]]:
    """``(iteration, mean DenseCRF mIoU - mean pCE mIoU)`` at the evaluations both have, over seeds."""
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
                    "run.checkpoint_every_iters", "run.eval_every_epochs", "data.num_workers", "loss.backend",
                    "loss.type")
NEUTRAL_SECTIONS = ("wandb",)
# Settings of the DenseCRF term alone: they tell DenseCRF runs apart and mean nothing to pCE or full runs.
CRF_SETTINGS = ("loss.crf_relative_weight", "loss.crf_weight", "loss.sigma_rgb", "loss.sigma_xy",
                "loss.scale_factor", "loss.kernel", "loss.init_from")


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
    if run["loss"] == "pce_crf" and init_from and Path(init_from).parent.name in by_dir:
        run = by_dir[Path(init_from).parent.name]
    flat = _flat_settings(run["config"])
    return tuple(sorted((k, v) for k, v in flat.items() if k not in CRF_SETTINGS))


def _crf_variant(run: dict) -> tuple:
    """What tells one DenseCRF setting from another: its own settings, and for the two-phase schedule
    its fine-tuning length (the path it starts from differs per seed, so only its presence counts)."""
    flat = _flat_settings(run["config"])
    variant = {k: flat.get(k) for k in CRF_SETTINGS}
    variant["loss.init_from"] = bool(variant["loss.init_from"])
    if variant["loss.init_from"]:
        variant["optim.epochs"], variant["optim.iterations"] = flat["optim.epochs"], flat["optim.iterations"]
    return tuple(sorted(variant.items()))


def _differences(keys: list[tuple]) -> list[str]:
    """For settings given as sorted (key, value) tuples: per entry, the pairs that are not the same in all."""
    dicts = [dict(k) for k in keys]
    names = sorted({n for d in dicts for n in d})
    varying = [n for n in names if len({repr(d.get(n)) for d in dicts}) > 1]
    return [", ".join(f"{n}={d.get(n)}" for n in varying) for d in dicts]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per setting: mIoU mean and standard deviation over seeds for each loss, the gains
    over pCE, the median s/iteration (and DenseCRF share).

    Runs are pooled over seeds only when *every* setting that changes what a run learns is the
    same (data, model, crop, schedule, learning rate, ...; not its name, folder or device), so
    runs of two weights, two epoch counts or two data sets never share a row. Each DenseCRF
    setting (weight, bandwidths, schedule) gets its own row, beside the pCE and full-supervision
    runs of the same shared settings; a two-phase DenseCRF run (``loss.init_from``) sits beside
    the pCE run it was fine-tuned from. ``differs`` names what tells a row from the others of
    its model, data and crop.
    """
    by_dir = {run["run"]: run for run in runs}
    groups: dict[tuple, dict] = {}
    for run in runs:
        group = groups.setdefault(_shared_settings(run, by_dir), {"pce": [], "full": [], "pce_crf": {}})
        if run["loss"] == "pce_crf":
            group["pce_crf"].setdefault(_crf_variant(run), []).append(run)
        else:
            group[run["loss"]].append(run)
    rows, keys = [], []
    for shared, group in groups.items():
        for variant, crf_runs in (sorted(group["pce_crf"].items(), key=lambda kv: repr(kv[0])) or [((), [])]):
            members_of = {"pce": group["pce"], "full": group["full"], "pce_crf": crf_runs}
            first = next(r for members in members_of.values() for r in members)
            two_phase = dict(variant).get("loss.init_from", False)
            row = {"model": first["model"], "data": first["data"], "resolution": first["resolution"],
                   "crop_size": first["crop_size"], "schedule": "two-phase" if two_phase else "one-phase",
                   "crf_relative_weight": crf_runs[0]["crf_relative_weight"] if crf_runs else None,
                   "iterations": statistics.median(r["iterations"] for m in members_of.values() for r in m)}
            for loss in LOSSES:
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
            for loss in ("pce_crf", "full"):
                base, other = row["pce_miou"], row[f"{loss}_miou"]
                row[f"{loss}_gain"] = other - base if base is not None and other is not None else None
            rows.append(row)
            keys.append(shared + variant)
    for label in {(r["model"], r["data"], r["resolution"], r["crop_size"]) for r in rows}:
        members = [i for i, r in enumerate(rows) if (r["model"], r["data"], r["resolution"], r["crop_size"]) == label]
        for i, text in zip(members, _differences([keys[i] for i in members])):
            rows[i]["differs"] = text
    order = lambda r: (str(r["model"]), str(r["data"]), str(r["resolution"]), str(r["crop_size"]), r["schedule"],
                       r["crf_relative_weight"] or 0.0, r["differs"])
    return sorted(rows, key=order)
