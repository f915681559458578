"""The notebooks under nbval read and write only pytest's temporary folders, never the project's
results/ and data/ (notebooks/conftest.py points their folder parameters there)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _notebooks_conftest():
    spec = importlib.util.spec_from_file_location("notebooks_conftest", ROOT / "notebooks" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parameters_source(notebook: Path) -> str:
    [cell] = [c for c in nbformat.read(notebook, 4).cells if "parameters" in c.metadata.get("tags", [])]
    return cell.source


def test_every_folder_parameter_of_every_notebook_moves_under_the_temporary_folder(tmp_path):
    conftest = _notebooks_conftest()
    moved_any = set()
    for notebook in NOTEBOOKS:
        source = _parameters_source(notebook)
        before, after = {}, {}
        exec(source, {}, before)
        exec(conftest.injected_source(source, tmp_path), {}, after)
        assert after.keys() == before.keys(), notebook.name
        for name, value in before.items():
            if isinstance(value, str) and value.startswith("../"):
                # the same layout, one level down: ../data/x -> <tmp>/data/x
                assert after[name] == str(tmp_path / value[3:]), (notebook.name, name)
                moved_any.add(name)
            else:
                assert after[name] == value, (notebook.name, name)
        assert not [v for v in after.values() if isinstance(v, str) and ".." in v], notebook.name
    assert {"results_dir", "data_root", "low_res_root"} <= moved_any


def _tree(root: Path) -> dict:
    """Every file under root (ignored ones included) with its size and modification time."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ipynb_checkpoints"}
    files = {}
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in names:
            stat = (Path(folder) / name).stat()
            files[str(Path(folder, name).relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def test_nbval_runs_the_notebooks_in_temporary_folders_and_leaves_the_tree_unchanged(tmp_path):
    # 01 writes the data sets and 05 reads the results folder: the two ends of the study's folders.
    before = _tree(ROOT)
    base = tmp_path / "pytest"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--basetemp={base}",
         "notebooks/01_data_prep.ipynb", "notebooks/05_miou_table.ipynb"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert _tree(ROOT) == before

    [project] = [p for p in base.glob("notebooks-project*") if not p.is_symlink()]
    for name in ("smoke_64px", "smoke_40px"):  # 01's defaults: ../data/smoke_64px, ../data/smoke_40px
        data = project / "data" / name
        assert (data / "ImageSets" / "Segmentation" / "train.txt").read_text().split() and \
            len(list((data / "JPEGImages").iterdir())) == 12  # 8 train + 4 val
