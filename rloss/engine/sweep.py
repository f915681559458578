"""Choosing a regularizer's weight on your own data, without looking at val.

    result = sweep_crf_weight(base_config, name="mine40")   # trains one run per weight
    result["best"]                                          # the chosen relative weight
    sweep_crf_weight(base_config, name="mine40nc", key="loss.nc_weight")  # the normalized cut weight

``key`` is the weight swept: ``loss.crf_relative_weight`` (DenseCRF, the default) or
``loss.nc_weight`` (normalized cut). Weight 0 drops that term: pCE, or for a
``pce_kernelcut`` base the other term alone. A positive weight trains ``base``'s loss
type if it has the term (``pce_kernelcut`` keeps the other term at its configured
weight), else the term's own type (``pce_crf``, ``pce_nc``).

Each weight (relative to the paper's balance, ``rloss/crf_weight.py``) trains one run
of ``base``'s schedule on the train split minus a held-out share of it, and is scored
by mIoU on that held-out share (``data.holdout_fraction``): the val split is never
read, so val stays a fair test of the chosen weight. Runs are ``<name>_sweep_w<weight>``
(``<name>_sweep_nc_w<weight>`` for ``loss.nc_weight``, but for weight 0) in ``base``'s results folder, trained
``parallel_runs`` at once; finished ones are skipped, so a sweep interrupted or extended with
more weights only trains what is missing.
The result goes to ``<results>/<name>_weight_sweep.json`` (what the study's
notebooks read with ``crf_relative_weight = "sweep"``); the study layer draws it (``rloss.study.plots``).

For the paper's two-phase schedule (the regularized run fine-tunes a finished pCE run), sweep
the weight of the fine-tuning: ``sweep_crf_weight(two_phase_base(base, name), name)`` first trains
pCE on the kept share (``<name>_sweep_start``), then fine-tunes it once per weight, as long as the
study's fine-tuning (``rloss.engine.config.fine_tuning``); weight 0 is then pCE trained on for as long, the
control. Its run is named for pCE, not for the swept key (``<runs_prefix>_sweep_w0``), so that the
normalized cut sweep of a study reuses the DenseCRF sweep's.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from ..data.io import write_text_atomic
from .config import CRF_LOSS_TYPES, NC_LOSS_TYPES, LossConfig, TrainConfig, fine_tuning
from .progress import announce
from .run_pool import THREADS_PER_RUN, resolve_processes, train_runs
from .runs import CHECKPOINT

DEFAULT_WEIGHTS = (0.0, 0.25, 1.0, 4.0, 16.0)  # relative; x4 steps around the published balance
# The same x4 steps around the default normalized cut weight.
DEFAULT_NC_WEIGHTS = tuple(w * LossConfig().nc_weight for w in DEFAULT_WEIGHTS)
DEFAULT_HOLDOUT = 0.2
# The weights a sweep can choose: key -> (the loss types with that term, the type with it alone,
# run-name infix).
SWEEP_KEYS = {
    "loss.crf_relative_weight": (CRF_LOSS_TYPES, "pce_crf", ""),
    "loss.nc_weight": (NC_LOSS_TYPES, "pce_nc", "nc_"),
}
DEFAULT_KEY = "loss.crf_relative_weight"


def swept_loss_type(base_type: str, key: str, weight: float) -> str:
    """The loss type trained at ``weight`` of ``key``: without the term at 0, else with it."""
    with_term, alone, _ = SWEEP_KEYS[key]
    if weight > 0:
        return base_type if base_type in with_term else alone
    return {"pce_kernelcut": "pce_nc" if key == DEFAULT_KEY else "pce_crf"}.get(base_type, "pce")


def sweep_path(results_dir: str | Path, name: str) -> Path:
    return Path(results_dir) / f"{name}_weight_sweep.json"


def sweep_configs(base: TrainConfig, name: str, weights=None, holdout_fraction: float = DEFAULT_HOLDOUT,
                  key: str = DEFAULT_KEY, runs_prefix: str | None = None) -> list[TrainConfig]:
    """One config per weight: ``base`` trained on train minus the held-out share, scored on it. Runs are
    ``<runs_prefix>_sweep_<infix>w<weight>`` (``runs_prefix`` default: ``name``); a weight that trains
    plain pCE is ``<runs_prefix>_sweep_w0`` for every key: the same run."""
    if key not in SWEEP_KEYS:
        raise ValueError(f"sweep: the swept key must be one of {', '.join(SWEEP_KEYS)}; got {key!r}")
    if weights is None:
        weights = DEFAULT_WEIGHTS if key == DEFAULT_KEY else DEFAULT_NC_WEIGHTS
    if not weights:
        raise ValueError("sweep: give at least one weight")
    configs = []
    for weight in sorted(set(float(w) for w in weights)):
        if weight < 0:
            raise ValueError(f"sweep: weights must be >= 0, got {weight:g}")
        cfg = copy.deepcopy(base)
        cfg.loss.type = swept_loss_type(base.loss.type, key, weight)
        if key == DEFAULT_KEY:
            cfg.loss.crf_relative_weight, cfg.loss.crf_weight = weight, None
        else:
            cfg.loss.nc_weight = weight
        cfg.data.holdout_fraction = holdout_fraction
        infix = "" if cfg.loss.type == "pce" else SWEEP_KEYS[key][2]
        cfg.run.name = f"{runs_prefix or name}_sweep_{infix}w{weight:g}"
        cfg.wandb.enabled = False
        configs.append(cfg.validate())
    return configs


def two_phase_base(base: TrainConfig, name: str, finetune_iterations: int | None = None,
                   holdout_fraction: float = DEFAULT_HOLDOUT, rerun: bool = False) -> TrainConfig:
    """``base`` set up to sweep a weight of the two-phase schedule: trains pCE with ``base``'s schedule on
    train minus the held-out share (run ``<name>_sweep_start``; it never sees the share the sweep scores
    on) and returns ``base`` fine-tuning its final weights for ``finetune_iterations`` (None: the
    study's share of ``base``'s length, :func:`rloss.engine.config.fine_tuning`)."""
    start = copy.deepcopy(base)
    start.loss.type, start.loss.init_from = "pce", None
    start.data.holdout_fraction = holdout_fraction
    start.run.name = f"{name}_sweep_start"
    start.wandb.enabled = False
    start = start.validate()
    announce(f"sweep {name}: pCE on the kept share first ({start.run.name}), fine-tuned once per weight")
    train_runs([start], rerun=rerun)
    tuned = fine_tuning(base, finetune_iterations)
    tuned.loss.init_from = str(start.run_dir / CHECKPOINT)
    return tuned.validate()


def sweep_crf_weight(base: TrainConfig, name: str, weights=None, holdout_fraction: float = DEFAULT_HOLDOUT,
                     rerun: bool = False, time_budget_s: float | None = None,
                     key: str = DEFAULT_KEY, parallel_runs: int | str = "auto", runs_prefix: str | None = None) -> dict:
    """Trains the sweep's runs (in order of weight, ``parallel_runs`` at once: see
    ``rloss.engine.run_pool``) and writes and returns the result.

    With ``time_budget_s``, no new group of runs starts once the time spent plus the longest
    group so far would exceed it; the choice is then made among the finished weights
    (``complete`` is false in the result).
    """
    configs = sweep_configs(base, name, weights, holdout_fraction, key, runs_prefix)
    processes = resolve_processes(parallel_runs, base.run.device, len(configs), base.run.threads or THREADS_PER_RUN)
    started, longest, points = time.monotonic(), 0.0, []
    for first in range(0, len(configs), processes):
        spent = time.monotonic() - started
        if time_budget_s is not None and points and spent + longest > time_budget_s:
            announce(f"sweep {name}: time budget of {time_budget_s:.0f} s reached after {len(points)} of "
                     f"{len(configs)} weights")
            break
        group = configs[first:first + processes]
        weights_now = ", ".join(f"{cfg.run.name} ({_swept(cfg, key):g})" for cfg in group)
        groups_left = -(-(len(configs) - first) // processes)
        left = f", about {groups_left * spent / (first // processes) / 60:.0f} min left" if first else ""
        announce(f"sweep {name}: {key} of {weights_now}: {first + len(group)}/{len(configs)}{left}")
        t0 = time.monotonic()
        finals = train_runs(group, rerun=rerun, parallel_runs=len(group))
        longest = max(longest, time.monotonic() - t0)
        for cfg, final in zip(group, finals):
            weight = _swept(cfg, key)
            if key == DEFAULT_KEY:  # relative to the published balance; the loss got the absolute one
                absolute = cfg.absolute_crf_weight() if cfg.loss.type in CRF_LOSS_TYPES else 0.0
            else:  # the normalized cut weight is the loss's own (no size normalisation)
                absolute = weight
            points.append({"weight": weight, "relative_weight": weight, "absolute_weight": absolute,
                           "loss_type": cfg.loss.type, "heldout_miou": final["miou"], "run": cfg.run.name,
                           "iterations": final["iteration"]})  # the floor of passes may raise the configured length
    best, noise = _choose(points, configs, key)
    result = {
        "name": name, "key": key, "loss_type": base.loss.type,
        "data_root": base.data.root, "crop_size": base.data.crop_size, "sigma_xy": base.loss.sigma_xy,
        "scale_factor": base.loss.scale_factor, "holdout_fraction": holdout_fraction,
        "iterations": max((p["iterations"] for p in points), default=None), "seed": base.run.seed,
        "fine_tunes": base.loss.init_from,  # the two-phase start, or None
        "points": points, "complete": len(points) == len(configs),
        "best": best["weight"], "best_absolute": best["absolute_weight"], "best_heldout_miou": best["heldout_miou"],
        "best_by_score": max(points, key=_by_score)["weight"], **noise,
    }
    path = sweep_path(base.run.results_dir, name)
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")
    announce(f"sweep {name}: chose {key} {result['best']:g}: {result['reason']}; written to {path}")
    return result


def _by_score(point: dict) -> tuple:
    return point["heldout_miou"], -point["weight"]  # a tie goes to the smaller weight


def _choose(points: list[dict], configs: list[TrainConfig], key: str) -> tuple[dict, dict]:
    """The chosen point and what the JSON says of the noise. With weight 0 (pCE) in the sweep, each
    point gets the bootstrap interval of its gain over pCE (``rloss.engine.sweep_noise``); the best-scoring
    weight whose interval lies above 0 is chosen; if none does, the published weight (1x; for the
    normalized cut, the config's default) unless its interval lies below 0, then pCE (weight 0)."""
    from .sweep_noise import INTERVAL, RESAMPLES, gain_interval, heldout_confusions

    zero = next((p for p in points if p["weight"] == 0), None)
    if zero is None or len(points) < 2:
        best = max(points, key=_by_score)
        return best, {"noise": None, "beats_noise": None,
                      "reason": f"held-out mIoU {best['heldout_miou']:.4f}, the highest (no weight 0 in the sweep: "
                                "no comparison with pCE, no noise estimate)"}
    by_run = {cfg.run.name: cfg for cfg in configs}
    confusions = {p["run"]: heldout_confusions(by_run[p["run"]]) for p in points}
    baseline = confusions[zero["run"]]
    for p in points:
        p["gain_over_pce"] = p["heldout_miou"] - zero["heldout_miou"]
        p["gain_low"], p["gain_high"] = gain_interval(confusions[p["run"]], baseline)
    noise = {"noise": {"method": "paired bootstrap over the held-out images (training noise not included)",
                       "images": len(baseline), "resamples": RESAMPLES, "interval": INTERVAL}}
    above = [p for p in points if p["weight"] > 0 and p["gain_low"] > 0]
    if above:
        best = max(above, key=_by_score)
        # The grid's top: the curve has not turned down within it, so a larger weight may score higher.
        edge = best["weight"] == max(p["weight"] for p in points) and len(points) > 2
        return best, {**noise, "beats_noise": True, "at_largest_weight": edge, "reason": (
            f"held-out mIoU {best['heldout_miou']:.4f}, {100 * best['gain_over_pce']:+.2f} pp over pCE "
            f"({INTERVAL:.0%} interval {100 * best['gain_low']:+.2f} to {100 * best['gain_high']:+.2f} over "
            f"{len(baseline)} held-out images)" + ("; it is the largest weight swept: a larger one may score "
                                                    "higher (sweep-weight --weights adds some)" if edge else ""))}
    # DenseCRF's published balance; normalized cut has no published weight, only the config's default.
    published, label = (1.0, "published") if key == DEFAULT_KEY else (LossConfig().nc_weight, "default")
    fallback = next((p for p in points if p["weight"] == published), None)
    why = (f"no weight beats pCE by more than the held-out noise (best by score: "
           f"{max(points, key=_by_score)['weight']:g}, {INTERVAL:.0%} intervals of the gain over pCE include 0)")
    if fallback is not None and fallback["gain_high"] < 0:
        return zero, {**noise, "beats_noise": False, "reason": why + f"; the {label} {published:g} scores "
                      f"below pCE beyond the noise: keeping pCE (weight 0), the regularizer off"}
    chosen = fallback or {"weight": published, "relative_weight": published, "absolute_weight": None,
                          "heldout_miou": None, "run": None, "loss_type": None}  # a weight the sweep did not train
    return chosen, {**noise, "beats_noise": False, "reason": why + f"; keeping the {label} weight {published:g}"}


def _swept(cfg: TrainConfig, key: str) -> float:
    return cfg.loss.crf_relative_weight if key == DEFAULT_KEY else cfg.loss.nc_weight


def read_sweep(results_dir: str | Path, name: str) -> dict:
    """The sweep result the study reads; a missing or unreadable one is a ValueError saying how to make it."""
    path = sweep_path(results_dir, name)
    try:
        result = json.loads(path.read_text())
        float(result["best"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: no weight sweep result ({exc.__class__.__name__}); run "
                         f"`python -m rloss sweep-weight --name {name} ...` first") from None
    return result
