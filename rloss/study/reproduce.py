"""Checks a recorded study against today's code: ``python -m rloss reproduce --recorded DIR``.

The study is run again into a fresh folder (its data, runs, tables and executed notebooks, every
relative folder of the parameter file placed under it), then compared run by run with the
recorded one: each evaluation's scores and the final ones, to the last digit, with the settings
and the provenance (commit, threads, torch, CPU) of any run that differs. On the same machine
kind a CPU study must reproduce exactly (``rloss.engine.run_pool`` fixes each run's thread count, and
nothing else varies), so any difference is printed and the exit status is 1.

A recorded study is a folder holding, per run, ``runs/<run>/config.yaml`` and ``metrics.json``
(the checkpoints are not kept), beside the tables and figures: ``record_study`` makes one from a
study's results folder.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from ..engine.runs import CONFIG, METRICS, read_run_config

RUNS_DIR = "runs"  # a recorded study's run folders
# The study's outputs kept beside the runs: notebook 05's folders (tables and figures), notebook 04's
# files, the weight sweeps' results and plots.
RECORDED_OUTPUTS = ("report-*", "interpolation_*", "*_weight_sweep.*")
# Per-evaluation entries that are not scores.
NOT_SCORES = ("epoch", "iteration", "num_pixels")


def _runs_dir(folder: Path) -> Path:
    """Where a study's run folders are: ``runs/`` in a recorded study, else the results folder itself."""
    return folder / RUNS_DIR if (folder / RUNS_DIR).is_dir() else folder


def _run_metrics(folder: Path) -> dict[str, dict]:
    """Each run's metrics.json under ``folder`` (a study's results folder, or a recorded one with
    ``runs/``), by run name; a folder without any is a ValueError naming it."""
    runs = {}
    for path in sorted(_runs_dir(folder).glob(f"*/{METRICS}")):
        try:
            runs[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not readable as a run's metrics ({exc.__class__.__name__})") from None
    if not runs:
        raise ValueError(f"{folder}: no run folders (<run>/{METRICS}) found")
    return runs


def _comparable_config(run_dir: Path) -> dict:
    """The run's settings, flat, with the paths that name where the study was run reduced to the
    part that names what they are (the data set's folder, the run a fine-tuning starts from)."""
    try:
        config = read_run_config(run_dir).to_dict()
    except Exception:  # a missing or unreadable config is reported as having no settings
        return {}
    flat = {f"{section}.{key}": value for section, entries in config.items() for key, value in entries.items()}
    flat.pop("run.results_dir", None)
    flat["data.root"] = Path(flat["data.root"]).name
    if flat.get("loss.init_from"):
        flat["loss.init_from"] = Path(flat["loss.init_from"]).parent.name
    return flat


def _score_differences(recorded: dict, fresh: dict) -> list[str]:
    """The scores that differ between two evaluations (or final entries), as 'key: a -> b'."""
    out = []
    for key in sorted(set(recorded) | set(fresh)):
        if key in NOT_SCORES:
            continue
        a, b = recorded.get(key), fresh.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            out += [f"{key}.{line}" for line in _score_differences(a or {}, b or {})]
        elif a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


def _differences_of_run(name: str, recorded: dict, fresh: dict, recorded_dir: Path, fresh_dir: Path) -> list[str]:
    lines = []
    if recorded.get("final") is None or fresh.get("final") is None:
        which = "recorded" if recorded.get("final") is None else "new"
        return [f"{name}: the {which} run did not finish"]
    final = _score_differences(recorded["final"], fresh["final"])
    if final:
        delta = 100 * (fresh["final"]["miou"] - recorded["final"]["miou"])
        lines.append(f"{name}: final mIoU {100 * recorded['final']['miou']:.4f} -> {100 * fresh['final']['miou']:.4f} "
                     f"% ({delta:+.4f} pp); {len(final)} final scores differ, e.g. {final[0]}")
    evals_a, evals_b = recorded.get("evals", []), fresh.get("evals", [])
    if [e.get("iteration") for e in evals_a] != [e.get("iteration") for e in evals_b]:
        lines.append(f"{name}: evaluated at other iterations ({len(evals_a)} recorded, {len(evals_b)} new)")
    else:
        first = next(((a["iteration"], d) for a, b in zip(evals_a, evals_b) if (d := _score_differences(a, b))), None)
        if first and not final:
            lines.append(f"{name}: the final scores agree but the evaluation at iteration {first[0]} differs "
                         f"({first[1][0]})")
        elif first:
            lines.append(f"{name}:   first differing evaluation: iteration {first[0]} ({first[1][0]})")
    if lines:  # what may explain it
        settings = _changed(_comparable_config(recorded_dir / name), _comparable_config(fresh_dir / name))
        lines.append(f"{name}:   settings: {settings}")
        lines.append(f"{name}:   provenance: {_changed(recorded.get('provenance') or {}, fresh.get('provenance') or {})}")
    return lines


def _changed(a: dict, b: dict) -> str:
    """The entries of two flat dicts that differ, as 'key: a -> b; ...', or 'the same'."""
    changed = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(changed) if changed else "the same"


def _compare(recorded: Path, fresh: Path) -> tuple[list[str], list[str]]:
    """The differences, run by run, and the names of the runs both studies have."""
    runs_a, runs_b = _run_metrics(recorded), _run_metrics(fresh)
    shared = sorted(set(runs_a) & set(runs_b))
    lines = [f"{name}: recorded, but not in the new study" for name in sorted(set(runs_a) - set(runs_b))]
    lines += [f"{name}: in the new study, but not recorded" for name in sorted(set(runs_b) - set(runs_a))]
    for name in shared:
        lines += _differences_of_run(name, runs_a[name], runs_b[name], _runs_dir(recorded), _runs_dir(fresh))
    return lines, shared


def compare_studies(recorded: str | Path, fresh: str | Path) -> list[str]:
    """Every difference between a recorded study and a fresh one, run by run (an empty list: the
    fresh study reproduces the recorded one exactly)."""
    return _compare(Path(recorded), Path(fresh))[0]


def report_comparison(recorded: str | Path, fresh: str | Path) -> int:
    """Prints the comparison; returns 0 when every run reproduces exactly, else 1."""
    lines, shared = _compare(Path(recorded), Path(fresh))
    if not lines:
        print(f"reproduce: all {len(shared)} runs of {fresh} equal the recorded ones in {recorded}, "
              "every evaluation to the last digit")
        return 0
    print("\n".join(lines))
    differing = len({line.split(":", 1)[0] for line in lines})
    print(f"reproduce: {differing} of {len(shared)} runs differ from the recorded ones in {recorded} (listed above)")
    return 1


def record_study(results_dir: str | Path, dest: str | Path) -> Path:
    """Copies a finished study's runs (config.yaml and metrics.json, not the checkpoints) and its
    tables and figures from ``results_dir`` into the new folder ``dest``, which must not exist yet."""
    results_dir, dest = Path(results_dir), Path(dest)
    runs = _run_metrics(results_dir)
    unfinished = [name for name, metrics in runs.items() if metrics.get("final") is None]
    if unfinished:
        raise ValueError(f"{results_dir / unfinished[0]}: the run has not finished; finish the study before recording it")
    if dest.exists():
        raise FileExistsError(f"{dest} exists: record into a new folder (nothing was written)")
    staging = dest.with_name(f".{dest.name}.part")
    shutil.rmtree(staging, ignore_errors=True)
    for name in runs:
        (staging / RUNS_DIR / name).mkdir(parents=True)
        for file in (CONFIG, METRICS):
            shutil.copy2(results_dir / name / file, staging / RUNS_DIR / name / file)
    for pattern in RECORDED_OUTPUTS:
        for path in sorted(results_dir.glob(pattern)):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, staging / path.name)
    staging.rename(dest)  # the recorded folder appears whole or not at all
    return dest


def reproduce(recorded: str | Path, params: str | Path, out: str | Path | None = None,
              parallel_runs: int | str | None = None, overrides: list[str] = (), only: list[str] | None = None) -> int:
    """Runs the study of ``params`` (``only`` some notebooks, as ``rloss study --only``) into the fresh
    folder ``out`` (default ``results/reproduce-<date>-<time>``) and compares its runs with
    ``recorded``'s; returns the exit status."""
    from .runner import run_study

    recorded = Path(recorded)
    _run_metrics(recorded)  # a bad recorded folder is reported before 20 minutes of training
    out = Path(out) if out is not None else Path("results") / time.strftime("reproduce-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: reproduce runs the study into a fresh folder")
    out.mkdir(parents=True, exist_ok=True)
    print(f"reproduce: the study of {params} into {out}, then compared with {recorded}", file=sys.stderr)
    status = run_study(params, only=only, overrides=list(overrides), output_dir=out / "notebooks",
                       base_dir=out.resolve(), parallel_runs=parallel_runs)
    if status:
        return status
    return report_comparison(recorded, _results_dir_of(params, overrides, out))


def _results_dir_of(params: str | Path, overrides, out: Path) -> Path:
    """Where the study of ``params``, run under ``out``, wrote its runs (its ``common.results_dir``)."""
    from .runner import apply_overrides, read_params

    common = apply_overrides(read_params(params), list(overrides)).get("common", {})
    return out / common.get("results_dir", "results")
