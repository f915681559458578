"""SIGTERM and SIGHUP (a scheduler, `timeout`, `docker stop`, a closed terminal) end `train`,
`sweep-weight`, `infer` and `study` as Ctrl-C does: one line, the shell's exit code, no child left
running, no lock or partial file left, the run resumable. Each command runs as a process of its own
in a new session, so the signal reaches it alone, as `kill` or `timeout` would send it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from inputs import config_file, last_line, tiny_config
from rloss import cli
from rloss.engine.runs import lock_run_folder

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def long_run_file(data_root, results, name, *extra) -> Path:
    """A pCE run of the tiny network long enough to be stopped (a checkpoint every 2 iterations), as a config file."""
    return config_file(tiny_config(data_root, results, name, "loss.type=pce", "optim.iterations=400",
                                   "run.checkpoint_every_iters=2", "run.eval_every_iters=100", *extra), results)


def start(args, cwd, code=None):
    command = [sys.executable, "-c", code, *map(str, args)] if code else [sys.executable, "-m", "rloss", *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(process, condition, what, timeout=180):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"ended before {what}: {process.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.1)


def stop(process, signum, timeout=90) -> str:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return stderr


def command_line(process) -> str:
    """The process's command line; empty once it has exited (a zombie or gone: a compiler or probe
    that lived a moment, between listing the children and reading them)."""
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess included
        return ""


def all_ended(processes, timeout=15) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


def test_sigterm_ends_train_with_one_line_and_the_run_resumes(data_root, tmp_path):
    path = long_run_file(data_root, tmp_path, "run", "optim.iterations=60")
    run_dir = tmp_path / "run"
    train = start(["train", "--config", path], tmp_path)
    wait_for(train, (run_dir / "checkpoint.pt").is_file, "a checkpoint was saved")
    stderr = stop(train, signal.SIGTERM)
    assert last_line(stderr) == (f"rloss train: stopped by SIGTERM; its last checkpoint is kept: --resume with the "
                                 f"same settings continues {run_dir}")
    assert not (run_dir / ".lock").exists() and not list(run_dir.glob(".*.part"))  # ended as by Ctrl-C
    assert cli.main(["train", "--config", str(path), "--resume"]) == 0
    metrics = __import__("json").loads((run_dir / "metrics.json").read_text())
    assert metrics["final"]["iteration"] == 60


def test_sighup_ends_a_sweep_and_its_training_processes(data_root, tmp_path):
    path = long_run_file(data_root, tmp_path, "base")
    sweep = start(["sweep-weight", "--config", path, "--name", "s", "--weights", "0,1", "--holdout", "0.25",
                   "--parallel-runs", "2"], tmp_path)
    workers = []

    def both_training():
        workers[:] = psutil.Process(sweep.pid).children(recursive=True)
        return len(workers) >= 2 and all((tmp_path / f"s_sweep_w{w}" / "checkpoint.pt").is_file() for w in (0, 1))

    wait_for(sweep, both_training, "both runs trained")
    stderr = stop(sweep, signal.SIGHUP)
    assert last_line(stderr) == "rloss sweep-weight: stopped by SIGHUP"
    assert all_ended(workers), [command_line(p) for p in workers if p.is_running()]
    for w in (0, 1):  # no process holds a run: the next start may go on with it
        with lock_run_folder(tmp_path / f"s_sweep_w{w}"):
            pass


# infer with each batch slowed down and a mark when the first has started, so the signal comes mid-way
_SLOW_INFER = """
import sys, time
import rloss.engine.infer as I
from rloss.cli import main
predict = I.Predictor.predict
def slow(self, *args, **kwargs):
    open(sys.argv[1], "w").write("started")
    time.sleep(0.3)
    return predict(self, *args, **kwargs)
I.Predictor.predict = slow
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_ends_infer_with_one_line_and_no_partial_file(data_root, tmp_path):
    path = long_run_file(data_root, tmp_path, "model", "optim.iterations=2")
    assert cli.main(["train", "--config", str(path)]) == 0
    images = tmp_path / "images"
    images.mkdir()
    source = next((data_root / "JPEGImages").iterdir())
    for i in range(200):
        (images / f"im{i:03d}{source.suffix}").write_bytes(source.read_bytes())
    marker, out = tmp_path / "started", tmp_path / "out"
    infer = start([marker, "infer", "--checkpoint", tmp_path / "model" / "checkpoint.pt", "--input", images,
                   "--output", out, "--batch-size", "1", "--device", "cpu"], tmp_path, code=_SLOW_INFER)
    wait_for(infer, marker.exists, "the first batch started")
    time.sleep(1.0)
    stderr = stop(infer, signal.SIGTERM)
    assert last_line(stderr) == "rloss infer: stopped by SIGTERM"
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


@pytest.mark.slow
def test_sigterm_ends_a_study_its_kernel_and_its_training_processes(data_root, tmp_path):
    """`rloss study` trains in a Jupyter kernel, two runs at once in processes of the kernel's: SIGTERM
    to the study alone ends all of them (before, they trained on as orphans)."""
    study = start(["study", "--params", ROOT / "params" / "smoke.yaml", "--only", "02",
                   "--set", f"02_train_40px.data_root={data_root}", "--set", f"02_train_40px.results_dir={tmp_path}",
                   "--set", "02_train_40px.iterations=3000", "--set", "02_train_40px.parallel_runs=2",
                   "--output", tmp_path / "executed"], ROOT)
    below = []

    def training():
        below[:] = psutil.Process(study.pid).children(recursive=True)
        spawned = [p for p in below if "multiprocessing" in command_line(p)]
        return len(spawned) >= 2 and any(tmp_path.glob("*/checkpoint.pt"))

    wait_for(study, training, "two runs trained in the kernel", timeout=300)
    stderr = stop(study, signal.SIGTERM)
    assert "study: stopped by SIGTERM during notebooks/02_train_40px.ipynb" in stderr, stderr[-3000:]
    assert all_ended(below), [command_line(p) for p in below if p.is_running()]
    for run_dir in tmp_path.glob("smoke40_*"):  # no process holds a run: the next start may go on with it
        with lock_run_folder(run_dir):
            pass
