"""What a run's numbers depend on (rloss.engine.provenance): the commit and whether the checkout differs
from it, read from git; nothing where there is no git checkout."""

import subprocess

import torch

from rloss.engine.provenance import provenance, source_commit


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_commit_and_whether_tracked_files_changed(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert source_commit(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "notes.txt").write_text("untracked: not the code\n")
    assert source_commit(tmp_path) == {"commit": head, "dirty": False}
    (tmp_path / "code.py").write_text("x = 2\n")
    assert source_commit(tmp_path) == {"commit": head, "dirty": True}


def test_outside_a_checkout_nothing_is_claimed(tmp_path):
    assert source_commit(tmp_path) == {"commit": None, "dirty": None}


def test_the_threads_versions_and_device_of_this_process():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        facts = provenance(torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    assert facts["threads"] == 1 and facts["torch"] == torch.__version__ and facts["device"] == "cpu"
    assert facts["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and facts["cpu"]
