"""Fixtures for the tests (shared inputs are in inputs.py)."""

import sys
from pathlib import Path

import pytest

# The developer tools (tools/) are not part of the package: their tests import them from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# tests/ mirrors the package in folders; the shared inputs (inputs.py) are imported by name from any of them.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def lattice_available():
    from rloss.filtering import load_extension

    load_extension()  # the extension must build here; a failure is a test failure
    return True


@pytest.fixture(scope="session")
def chromium():
    """The headless Chromium of the browser tests (`make browser` installs one). Where there is none
    the tests are skipped with one line; under CI=true that is a failure."""
    import os

    from tools.browser_check import browser_starts, find_chromium

    path = find_chromium()
    problem = "no Chromium" if path is None else browser_starts(path)
    if problem is not None:
        reason = f"{problem}: the browser tests need one (`make browser`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The training tests' data set (``inputs.tiny_synthetic``), written once per test module."""
    from inputs import tiny_synthetic

    return tiny_synthetic(tmp_path_factory.mktemp("synthetic"))
