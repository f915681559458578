"""nbval: the notebooks' folders in pytest's temporary folder, and the expected outputs of the
cells tagged ``nbval-check-output``.

The notebooks' own defaults (the smoke parameters) name folders relative to notebooks/, such as
``results_dir = "../results"``. Under nbval every such parameter is pointed into one temporary
folder per test session instead (``../results`` -> ``<tmp>/results``), the way papermill injects
parameters: the assignments are appended to the ``parameters`` cell. The notebooks then share that
folder in order (01's data, 02's runs, 05's table) and the project's results/ and data/ stay as they
were.

The notebooks are committed without outputs (the study writes executed copies to
results/notebooks/), so nbval would have no reference to compare those cells with
and would pass them unchecked. Their expected outputs live in
``expected_outputs.json`` (keyed ``<notebook stem>/<cell id>``), and this hook hands
them to nbval as the reference. A tagged cell without an entry stops the run.

After a deliberate change to such an output:
``python tests/update_notebook_expectations.py`` (runs the notebooks with their own
defaults, the smoke parameters, and rewrites the file).
"""

import ast
import json
from pathlib import Path

import nbformat
import pytest

EXPECTED = Path(__file__).with_name("expected_outputs.json")
PARENT = "../"  # parameters whose default starts with it name a folder of the project
_PROJECT = pytest.StashKey[Path]()


def temporary_paths(parameters: dict, root: Path) -> dict:
    """The parameters that name a project folder (``"../results"``), each moved under ``root``
    (``root / "results"``). ``parameters``: name -> default value."""
    return {name: str(Path(root) / value[len(PARENT):]) for name, value in parameters.items()
            if isinstance(value, str) and value.startswith(PARENT)}


def parameter_defaults(source: str) -> dict:
    """name -> value of the literal assignments in a parameters cell."""
    defaults = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # not a literal: not a folder name either
    return defaults


def injected_source(source: str, root: Path) -> str:
    """The parameters cell with its project folders pointed under ``root``."""
    moved = temporary_paths(parameter_defaults(source), root)
    if not moved:
        return source
    lines = [f"{name} = {value!r}" for name, value in moved.items()]
    return source.rstrip("\n") + "\n\n# injected by notebooks/conftest.py: pytest's temporary folder\n" + "\n".join(lines) + "\n"


def pytest_runtest_setup(item):
    cell = getattr(item, "cell", None)
    if cell is None or "parameters" not in cell.get("metadata", {}).get("tags", []):
        return
    if Path(str(item.fspath)).resolve().parent != Path(__file__).parent.resolve():
        return
    config = item.config
    if _PROJECT not in config.stash:  # one folder per session, shared by the notebooks in order
        # what the tmp_path_factory fixture returns (fixtures do not reach nbval's items)
        config.stash[_PROJECT] = config._tmp_path_factory.mktemp("notebooks-project")
    cell.source = injected_source(cell.source, config.stash[_PROJECT])


def cell_key(notebook: Path, cell) -> str:
    return f"{Path(notebook).stem}/{cell.get('id')}"


def pytest_collection_modifyitems(session, config, items):
    expected = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {}
    here = Path(__file__).parent.resolve()
    for item in items:
        cell = getattr(item, "cell", None)
        options = getattr(item, "options", None)
        if cell is None or options is None or not options.get("check"):
            continue
        notebook = Path(str(item.fspath)).resolve()
        if notebook.parent != here:
            continue
        key = cell_key(notebook, cell)
        if key not in expected:
            raise pytest.UsageError(f"{key} is tagged nbval-check-output but {EXPECTED.name} has no expected "
                                    f"output for it: run python tests/update_notebook_expectations.py")
        cell.outputs = [nbformat.from_dict(output) for output in expected[key]]
        cell.execution_count = 1  # nbval compares only cells whose reference ran
