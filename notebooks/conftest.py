"""nbval: the expected outputs of the cells tagged ``nbval-check-output``.

The notebooks are committed without outputs (the study writes executed copies to
results/notebooks/), so nbval would have no reference to compare those cells with
and would pass them unchecked. Their expected outputs live in
``expected_outputs.json`` (keyed ``<notebook stem>/<cell id>``), and this hook hands
them to nbval as the reference. A tagged cell without an entry stops the run.

After a deliberate change to such an output:
``python tests/update_notebook_expectations.py`` (runs the notebooks with their own
defaults, the smoke parameters, and rewrites the file).
"""

import json
from pathlib import Path

import nbformat
import pytest

EXPECTED = Path(__file__).with_name("expected_outputs.json")


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
