"""Rewrites notebooks/expected_outputs.json: runs the study's notebooks with their own
defaults (the smoke parameters, their folders in a temporary folder, as nbval does) and keeps the
outputs of the cells tagged ``nbval-check-output``. Run it after a deliberate change to one of those outputs, and
review the diff:

    .venv/bin/python tests/update_notebook_expectations.py
"""

import json
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))
from conftest import EXPECTED, cell_key, temporary_paths  # noqa: E402  (the notebooks' conftest: one key format)

from rloss.study.runner import plan, run_study, study_notebooks  # noqa: E402

KEEP = ("output_type", "name", "text", "data")


def checked_outputs(executed: Path, stem: str) -> dict:
    nb = nbformat.read(executed, as_version=4)
    out = {}
    for cell in nb.cells:
        if cell.cell_type == "code" and "nbval-check-output" in cell.metadata.get("tags", []):
            out[cell_key(Path(stem), cell)] = [{k: v for k, v in o.items() if k in KEEP} for o in cell.outputs]
    return out


def main() -> int:
    smoke = ROOT / "params" / "smoke.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        moved = [f"{notebook.stem}.{name}={path}" for notebook, values in plan(smoke, study_notebooks(ROOT / "notebooks"))
                 for name, path in temporary_paths(values, Path(tmp) / "project").items()]
        if run_study(smoke, overrides=moved, output_dir=tmp, notebooks_dir=ROOT / "notebooks") != 0:
            return 1
        expected = {}
        for notebook in study_notebooks(ROOT / "notebooks"):
            expected.update(checked_outputs(Path(tmp) / notebook.name, notebook.stem))
    EXPECTED.write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(expected)} expected outputs to {EXPECTED}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
