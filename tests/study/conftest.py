import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture
def notebook_parameters():
    """``notebook_parameters("00_environment_and_loss", names)``: those names' values in the
    notebook's own parameters cell (its defaults, executed)."""
    def read(stem: str, names) -> dict:
        cells = json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())["cells"]
        source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
        namespace = {}
        exec(source, namespace)
        return {name: namespace[name] for name in names}
    return read
