"""The command line and the project's promises (notebooks without outputs, CI = make test)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "rloss", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_the_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("env", "build", "data", "train", "bench"):
        assert command in out.stdout


def test_missing_subcommand_is_a_clear_usage_error():
    out = run_cli("bench")
    assert out.returncode == 2 and "usage:" in out.stderr and "crf" in out.stderr


def test_bad_data_is_one_line_naming_the_file_and_a_nonzero_exit(tmp_path):
    out = run_cli("data", "check", "--root", str(tmp_path))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "train.txt: split list not found" in out.stderr


def test_bad_training_config_is_one_line_naming_the_key_and_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("loss:\n  sigma_rbg: 15\n")
    out = run_cli("train", "--config", str(config))
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert "sigma_rbg" in out.stderr and "run.yaml" in out.stderr


def test_env_reports_the_extension(lattice_available):
    out = run_cli("env")
    assert out.returncode == 0, out.stderr
    assert "lattice extension: ok" in out.stdout


def test_bench_case_runs_and_reports_its_fields(lattice_available):
    case = {"kernel": "permutohedral", "n": 2, "k": 3, "size": 16, "sigma_xy": 3.0}
    out = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--case", json.dumps(case), "--repeats", "2"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["label"] == "permutohedral N=2 K=3 16x16" and result["repeats"] == 2
    assert 0 < result["min_ms"] <= result["median_ms"] and result["peak_rss_mib"] > 0


@pytest.mark.parametrize("checks", [False, True])
def test_bench_checks_times_the_loss_with_its_default_input_checks(lattice_available, monkeypatch, checks):
    """bench crf --checks: the loss as users get it, its value checks run on every timed call."""
    from rloss import losses
    from tools import bench

    calls = []
    real = losses._check_values
    monkeypatch.setattr(losses, "_check_values", lambda *a: calls.append(1) or real(*a))
    result = bench.run_case(bench.Case("permutohedral", 2, 3, 16, 3.0, checks=checks), repeats=2, warmup=1)
    assert len(calls) == (3 if checks else 0)  # warm-up and repeats
    assert result["label"] == "permutohedral N=2 K=3 16x16" + (" checks" if checks else "")
    assert [c.checks for c in bench.default_cases(checks=checks)] == [checks] * len(bench.default_cases())


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs_and_with_a_parameters_cell(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code), "clear the outputs"
    assert sum("parameters" in c["metadata"].get("tags", []) for c in code) == 1


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    # The test command, under a time limit that makes a hang fail with pytest's output so far.
    tests = [re.sub(r"^timeout --signal=TERM \d+ ", "", c) for c in commands]
    assert "make test" in tests
    # Besides the test command: only the shell setup (CI=true: a missing browser fails, not skips).
    assert all(c.startswith(("set ", "cd ", "export CI=true", "make test")) for c in tests), commands
    readme = (ROOT / "README.md").read_text()
    assert "make study" in readme and "make test" in readme
