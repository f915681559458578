"""Fixtures for the tests (shared inputs are in inputs.py)."""

import pytest


@pytest.fixture(scope="session")
def lattice_available():
    from rloss.filtering import load_extension

    load_extension()  # the extension must build here; a failure is a test failure
    return True
