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
import statistics
import sys
from pathlib import Path


from .config import TrainConfig, load_config
from .progress import report_run
from .train import CHECKPOINT, CONFIG, METRICS, train

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
    """The final metrics of a finished run with exactly this config; None otherwise."""
    try:
        metrics = json.loads((cfg.run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return metrics["final"] if metrics.get("final") is not None and _same_config(cfg) else None


def train_runs(configs: list[TrainConfig], rerun: bool = False) -> list[dict]:
    """Trains each config in turn and returns their final metrics. A run already finished
    with the same config is skipped unless ``rerun``; an interrupted one (a checkpoint and the
    same config, no final metrics) is resumed."""
    finals = []
    for i, cfg in enumerate(configs, 1):
        done = None if rerun else finished_metrics(cfg)
        if done is not None:
            print(f"[{i}/{len(configs)}] {cfg.run.name}: finished before (mIoU {done['miou']:.4f}), skipped",
                  file=sys.stderr)
            report_run(i, len(configs), cfg.run.name, skipped=True)
            finals.append(done)
            continue
        print(f"[{i}/{len(configs)}] {cfg.run.name}", file=sys.stderr)
        report_run(i, len(configs), cfg.run.name)  # to the study runner's terminal, when there is one
        resumable = not rerun and (cfg.run_dir / CHECKPOINT).is_file() and _same_config(cfg)
        finals.append(train(cfg, resume=resumable))
    return finals


def _same_config(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml holds exactly ``cfg`` (a missing or bad one does not)."""
    try:
        return load_config(cfg.run_dir / CONFIG).to_dict() == cfg.to_dict()
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------
# Reading results back
# --------------------------------------------------------------------------------------------


def load_runs(results_dir: str | Path) -> list[dict]:
    """Every finished run under ``results_dir``: its name, settings, final and per-eval metrics, timings."""
    runs = []
    for metrics_path in sorted(Path(results_dir).glob(f"*/{METRICS}")):
        run_dir = metrics_path.parent
        try:
            metrics = json.loads(metrics_path.read_text())
            cfg = load_config(run_dir / CONFIG)
        except (OSError, ValueError) as exc:
            print(f"load_runs: skipped {run_dir} ({exc})", file=sys.stderr)
            continue
        if metrics.get("final") is None:
            continue  # unfinished
        timings = metrics.get("timings", {})
        runs.append({
            "run": run_dir.name, "model": cfg.model.name, "data": Path(cfg.data.root).name,
            "resolution": metrics.get("data", {}).get("image_side"),
            "crop_size": cfg.data.crop_size, "loss": cfg.loss.type, "two_phase": cfg.loss.init_from is not None,
            "seed": cfg.run.seed, "miou": metrics["final"]["miou"],
            "pixel_accuracy": metrics["final"]["pixel_accuracy"],
            "per_class_iou": metrics["final"]["per_class_iou"], "evals": metrics["evals"],
            "s_per_iteration": timings.get("median_iteration_s"), "crf_share": timings.get("crf_share"),
            "device": timings.get("device"), "config": cfg.to_dict(),
        })
    return runs


def _spread(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (model, data, crop) and DenseCRF schedule: mIoU mean and standard deviation
    over seeds for each loss, the gains over pCE, and the median s/iteration (and DenseCRF share).

    One-phase and two-phase DenseCRF runs (``loss.init_from``: fine-tuned from pCE) are never
    averaged together: each schedule gets its own row (``schedule``), with the setting's pCE and
    full-supervision runs in both.
    """
    groups: dict[tuple, dict[tuple, list[dict]]] = {}
    for run in runs:
        key = (run["model"], run["data"], run["resolution"], run["crop_size"])
        # DenseCRF runs are kept apart by schedule; pCE and full runs serve every schedule.
        schedule = None
        if run["loss"] == "pce_crf":
            schedule = "two-phase" if run.get("two_phase") else "one-phase"
        member = (run["loss"], schedule)
        groups.setdefault(key, {}).setdefault(member, []).append(run)
    rows = []
    for (model, data, resolution, crop), by_loss in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        schedules = [s for s in ("one-phase", "two-phase") if ("pce_crf", s) in by_loss]
        for schedule in schedules or ["one-phase"]:
            members_of = {loss: by_loss.get((loss, schedule if loss == "pce_crf" else None), []) for loss in LOSSES}
            row = {"model": model, "data": data, "resolution": resolution, "crop_size": crop, "schedule": schedule}
            for loss in LOSSES:
                members = members_of[loss]
                mean, std = _spread([r["miou"] for r in members])
                times = [r["s_per_iteration"] for r in members if r["s_per_iteration"] is not None]
                row[f"{loss}_miou"], row[f"{loss}_std"], row[f"{loss}_seeds"] = mean, std, len(members)
                row[f"{loss}_s_per_iteration"] = statistics.median(times) if times else None
                if loss == "pce_crf":
                    shares = [r["crf_share"] for r in members if r["crf_share"] is not None]
                    row["crf_share"] = statistics.median(shares) if shares else None
            for loss in ("pce_crf", "full"):
                base, other = row["pce_miou"], row[f"{loss}_miou"]
                row[f"{loss}_gain"] = other - base if base is not None and other is not None else None
            rows.append(row)
    return rows
