"""The nbval expectations: every checked cell has one, and nbval really compares with them."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def checked_cells() -> set[str]:
    keys = set()
    for notebook in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code" and "nbval-check-output" in cell["metadata"].get("tags", []):
                keys.add(f"{notebook.stem}/{cell['id']}")
    return keys


def test_every_checked_cell_has_an_expected_output_and_no_entry_is_stale():
    expected = json.loads((NOTEBOOKS / "expected_outputs.json").read_text())
    assert set(expected) == checked_cells()
    assert all(outputs for outputs in expected.values()), "a checked cell that prints nothing checks nothing"


def _run_nbval(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "--rootdir", str(folder), str(folder / "05_miou_table.ipynb")],
                          cwd=folder, capture_output=True, text=True, timeout=300)


def test_nbval_fails_when_a_checked_output_changes(tmp_path):
    # Notebook 05 with no results folder: it runs in seconds and prints the table's columns in a checked cell.
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("05_miou_table.ipynb", "conftest.py", "expected_outputs.json"):
        shutil.copy(NOTEBOOKS / name, folder / name)
    assert _run_nbval(folder).returncode == 0

    expected = json.loads((folder / "expected_outputs.json").read_text())
    [key] = [k for k in expected if k.startswith("05_miou_table/")]
    expected[key][0]["text"] = "network, data, a column that is not there\n"
    (folder / "expected_outputs.json").write_text(json.dumps(expected))
    out = _run_nbval(folder)
    assert out.returncode != 0 and "Cell outputs differ" in out.stdout, out.stdout[-2000:]

    del expected[key]
    (folder / "expected_outputs.json").write_text(json.dumps(expected))
    out = _run_nbval(folder)
    assert out.returncode != 0 and "has no expected output" in out.stdout + out.stderr
