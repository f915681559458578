"""Notebook 00's parameters: the defaults pass, each bad value is one line naming it."""

import json
from pathlib import Path

import pytest

from rloss.filtering import KERNELS
from rloss.study.loss_demo import PHOTOS, check_demo_parameters

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "00_environment_and_loss.ipynb"


def notebook_defaults() -> dict:
    """The notebook's own parameters cell, executed."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace = {}
    exec(source, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def demo(**changes) -> dict:
    defaults = notebook_defaults()
    names = ("photo", "photo_size", "sigma_rgb", "sigma_xy", "kernel", "num_classes", "descent_steps")
    return {**{k: defaults[k] for k in names}, **changes}


def test_the_notebook_defaults_and_every_photo_and_kernel_pass():
    check_demo_parameters(**demo())
    for photo in PHOTOS:
        check_demo_parameters(**demo(photo=photo))
    for kernel in KERNELS:
        check_demo_parameters(**demo(kernel=kernel))
    check_demo_parameters(**demo(photo_size=8, num_classes=2, descent_steps=1, sigma_xy=0.5))
    check_demo_parameters(**demo(photo_size=1024))


@pytest.mark.parametrize("changes, message", [
    ({"photo": "moon"}, "photo must be one of astronaut, coffee, chelsea, rocket, immunohistochemistry; got 'moon'"),
    ({"photo_size": 7}, "photo_size must be an integer in 8..1024; got 7"),
    ({"photo_size": 1025}, "photo_size must be an integer in 8..1024; got 1025"),
    ({"photo_size": 64.5}, "photo_size must be an integer in 8..1024; got 64.5"),
    ({"photo_size": "64"}, "photo_size must be an integer in 8..1024; got '64'"),
    ({"sigma_rgb": 0}, "sigma_rgb must be a number > 0; got 0"),
    ({"sigma_xy": -1.0}, "sigma_xy must be a number > 0; got -1.0"),
    ({"sigma_xy": float("nan")}, "sigma_xy must be a number > 0; got nan"),
    ({"kernel": "lattice"}, "kernel must be one of ('auto', 'exact', 'permutohedral'), got 'lattice'"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2; got 1"),
    ({"num_classes": True}, "num_classes must be an integer >= 2; got True"),
    ({"descent_steps": 0}, "descent_steps must be an integer >= 1; got 0"),
])
def test_each_bad_value_is_one_line_naming_it(changes, message):
    with pytest.raises(ValueError) as info:
        check_demo_parameters(**demo(**changes))
    assert str(info.value) == message
