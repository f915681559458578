"""Runs the study's notebooks in order with papermill: ``python -m rloss study --params params/X.yaml``.

A parameter file has a ``common`` section and one section per notebook, named by
the notebook's file name without ``.ipynb``::

    common:
      results_dir: results
    02_train_40px:
      epochs: 30
      seeds: [0, 1]

Each notebook gets the ``common`` values it declares in its ``parameters`` cell,
then its own section. A key in a notebook's section that the notebook does not
declare, or a ``common`` key that no notebook declares, is an error naming the
key, the section and the file, before anything runs (papermill itself would only
warn and go on). ``--set 02_train_40px.wandb=true``
changes one value on top of the file (the value is read as YAML), checked the same
way. Executed copies go to ``results/notebooks-<parameter file name>/``; a failure names the notebook
and the cell.

Folders in a parameter file (parameters named ``*_root`` or ``*_dir``) are relative to
the folder the study is run from (the repository root, where ``make`` is typed), as on
the command line, or to ``base_dir`` when given (``rloss reproduce`` puts a whole study,
data included, in a fresh folder that way); the runner hands the notebooks absolute paths.
``parallel_runs`` sets that parameter in every notebook that declares it: how many runs train
at once changes the time, never a number (``rloss.engine.run_pool``). (A notebook's own
defaults, used when it is opened by hand, are relative to notebooks/.)
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import yaml

from .display import StudyDisplay, clock
from ..engine.run_pool import resolve_processes
from ..engine.termination import exit_code, reason

NOTEBOOKS_DIR = Path("notebooks")
# The kernel's traffic encrypted (CurveZMQ, where its kernelspec supports it, as ipykernel's does):
# no "running over TCP without encryption" warning at each notebook's start.
KERNEL_CONFIG = {"KernelManager": {"transport_encryption": "auto"}}


def _repository_hint() -> str:
    """", e.g. cd <root>" when this package sits in a checkout that has the notebooks, else ""."""
    root = Path(__file__).resolve().parents[2]
    return f", e.g. cd {root}" if study_notebooks(root / NOTEBOOKS_DIR) else ""


def study_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered notebooks, in order."""
    return sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))


def declared_parameters(notebook: Path) -> dict:
    """The names and default values in the notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def declared_defaults(declared: dict) -> dict:
    """The literal default values of :func:`declared_parameters` (name -> value); others are left out."""
    defaults = {}
    for name, info in declared.items():
        try:
            defaults[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            pass  # not a literal
    return defaults


def read_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"parameter file {path} not found")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) or v is None for v in doc.values()):
        raise ValueError(f"{path} must hold sections (common, 00_..., 01_...) of name: value pairs")
    return {k: (v or {}) for k, v in doc.items()}


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    """``SECTION.KEY=VALUE`` strings (VALUE read as YAML) set on top of a parameter file's sections."""
    params = {k: dict(v) for k, v in params.items()}
    for item in overrides:
        target, sep, raw = item.partition("=")
        section, dot, key = target.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. 02_train_40px.epochs=5")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
        params.setdefault(section, {})[key] = value
    return params


def is_path_parameter(name: str) -> bool:
    return name.endswith(("_root", "_dir"))


def absolute_paths(values: dict, base: Path) -> dict:
    """``values`` with the relative folders of path parameters made absolute against ``base``."""
    return {k: (str((base / v).resolve()) if is_path_parameter(k) and isinstance(v, str) and v else v)
            for k, v in values.items()}


def plan(params_path: str | Path, notebooks: list[Path], rerun: bool = False,
         overrides: list[str] = (), base_dir: str | Path | None = None,
         parallel_runs: int | str | None = None) -> list[tuple[Path, dict]]:
    """Each notebook with the parameters it will get; unknown sections or keys are errors."""
    params = apply_overrides(read_params(params_path), list(overrides))
    all_names = {nb.stem for nb in study_notebooks(notebooks[0].parent)}
    stray = [s for s in params if s != "common" and s not in all_names]
    if stray:
        raise ValueError(f"{params_path}: section {stray[0]!r} names no notebook "
                         f"(notebooks: {', '.join(sorted(all_names))})")
    common = params.get("common", {})
    if common:  # a key no notebook declares would be dropped silently: a typo
        declared_anywhere = set().union(*(declared_parameters(nb) for nb in study_notebooks(notebooks[0].parent)))
        unknown = [k for k in common if k not in declared_anywhere]
        if unknown:
            raise ValueError(f"{params_path}: common.{unknown[0]} is not a parameter of any notebook "
                             f"(their parameters: {', '.join(sorted(declared_anywhere))})")
    out = []
    for nb in notebooks:
        declared = declared_parameters(nb)
        section = params.get(nb.stem, {})
        unknown = [k for k in section if k not in declared]
        if unknown:
            raise ValueError(f"{params_path}: {nb.stem}.{unknown[0]} is not a parameter of {nb} "
                             f"(its parameters: {', '.join(declared)})")
        values = {k: v for k, v in common.items() if k in declared}
        values.update(section)
        values = absolute_paths(values, Path(base_dir) if base_dir is not None else Path.cwd())
        if "seeds" in declared:  # a notebook of runs: its values checked now, not after the notebooks before it
            from .training_notebook import check_training_parameters

            try:
                check_training_parameters({**declared_defaults(declared), **values})
            except ValueError as exc:
                raise ValueError(f"{params_path}: {nb.stem}: {str(exc).removeprefix('config: ')}") from None
        if rerun and "rerun" in declared:
            values["rerun"] = True
        if parallel_runs is not None and "parallel_runs" in declared:
            values["parallel_runs"] = parallel_runs
        out.append((nb, values))
    return out


def run_study(params_path: str | Path, only: list[str] | None = None, rerun: bool = False,
              overrides: list[str] = (), output_dir: str | Path | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
              base_dir: str | Path | None = None, parallel_runs: int | str | None = None) -> int:
    """Executes the notebooks in order; returns 0, or 1 after the first failure (reported). The executed
    copies go to ``output_dir`` (default: ``results/notebooks-<parameter file name>``, so that another
    parameter file's study does not replace them)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    notebooks = study_notebooks(notebooks_dir)
    if not notebooks:
        raise FileNotFoundError(f"no numbered notebooks in {Path(notebooks_dir).resolve()}: run the study from the "
                                f"repository root (the folder with notebooks/ and params/){_repository_hint()}")
    if only:
        picked = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
        if not picked:
            raise ValueError(f"--only {' '.join(only)} matches no notebook")
        notebooks = picked
    if parallel_runs is not None:
        resolve_processes(parallel_runs, "cpu", pending=2)  # checked now, not after the first notebooks
    steps = plan(params_path, notebooks, rerun, overrides, base_dir, parallel_runs)  # all checks before the first notebook runs
    output_dir = Path(output_dir) if output_dir is not None else Path("results") / f"notebooks-{Path(params_path).stem}"
    if only:  # a partial rerun keeps the whole study's executed notebooks: its copies go to a folder of their own
        output_dir = output_dir / time.strftime("only-%Y%m%d-%H%M%S")
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for i, (nb, values) in enumerate(steps, 1):
        out = output_dir / nb.name
        print(f"== [{i}/{len(steps)}] {nb} ({len(values)} parameters from {params_path})", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            with StudyDisplay(i, len(steps), nb.stem, start) as display:
                papermill.execute_notebook(
                    str(nb), str(out), parameters=values, cwd=str(nb.parent), kernel_name="python3",
                    progress_bar=False, request_save_on_cell_execute=False, log_output=False,
                    on_notebook_start=display.notebook_started, on_cell_start=display.cell_started,
                    config=Config(KERNEL_CONFIG),
                    # Stop the kernel at once when done or interrupted: a graceful shutdown during a
                    # running cell (Ctrl-C) makes the kernel print a long zmq traceback.
                    shutdown_kernel="immediate",
                )
        except KeyboardInterrupt as exc:
            print(f"study: {reason(exc)} during {nb}; notebooks done before it are complete, "
                  "finished runs are kept and an interrupted run resumes on the next start", file=sys.stderr)
            return exit_code(exc)
        except PapermillExecutionError as exc:
            print(f"study: {nb} failed in cell {exc.cell_index} (execution count {exc.exec_count}): "
                  f"{exc.ename}: {exc.evalue}\n       the executed copy, with the error, is {out}", file=sys.stderr)
            return 1
        print(f"   {nb.name} done in {clock(time.monotonic() - t0)} (study {clock(time.monotonic() - start)})",
              file=sys.stderr)
    print(f"study: {len(steps)} notebooks in {(time.monotonic() - start) / 60:.1f} min; executed copies in {output_dir}",
          file=sys.stderr)
    return 0
