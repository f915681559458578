"""Several runs at once (rloss.engine.run_pool, study.train_runs(parallel_runs=...)): the same runs as
one at a time, failures raised, the number of processes chosen sensibly."""

import json
import multiprocessing
import os

import pytest
import torch

from inputs import tiny_config, tiny_synthetic
from rloss.engine import run_pool
from rloss.data.io import DataError
from rloss.engine.runs import CHECKPOINT, METRICS
from rloss.engine.run_pool import train_runs


def _configs(data_root, results, names):
    # One thread each, as a worker on this 2-core machine gets it: the same arithmetic both ways.
    return [tiny_config(data_root, results, name, "run.threads=1", f"run.seed={seed}", "loss.type=pce_crf")
            for seed, name in enumerate(names)]


def test_parallel_runs_equal_the_runs_trained_one_at_a_time(tmp_path):
    data_root = tiny_synthetic(tmp_path / "data")
    serial = train_runs(_configs(data_root, tmp_path / "serial", ["a", "b", "c"]), parallel_runs=1)
    parallel = train_runs(_configs(data_root, tmp_path / "parallel", ["a", "b", "c"]), parallel_runs=2)
    assert [f["miou"] for f in parallel] == [f["miou"] for f in serial]
    for name in "abc":
        one = torch.load(tmp_path / "serial" / name / CHECKPOINT, weights_only=True)["model"]
        other = torch.load(tmp_path / "parallel" / name / CHECKPOINT, weights_only=True)["model"]
        assert all(torch.equal(one[k], other[k]) for k in one)
        metrics = json.loads((tmp_path / "parallel" / name / METRICS).read_text())
        assert metrics["final"]["miou"] == parallel["abc".index(name)]["miou"]
    # Finished runs are skipped, in either mode: nothing is trained again.
    again = train_runs(_configs(data_root, tmp_path / "parallel", ["a", "b", "c"]), parallel_runs=2)
    assert [f["miou"] for f in again] == [f["miou"] for f in parallel]


def _two_phase(data_root, results):
    # pCE, then pCE + DenseCRF fine-tuning its finished weights (the paper's schedule), listed after an
    # independent run so that two processes would otherwise start the fine-tuning at once.
    pce = tiny_config(data_root, results, "pce", "run.threads=1", "loss.type=pce")
    other = tiny_config(data_root, results, "other", "run.threads=1", "loss.type=pce", "run.seed=1")
    finetune = tiny_config(data_root, results, "finetune", "run.threads=1", "loss.type=pce_crf",
                           f"loss.init_from={results / 'pce' / CHECKPOINT}")
    return [pce, finetune, other]


def test_a_two_phase_run_waits_for_the_run_it_starts_from(tmp_path):
    data_root = tiny_synthetic(tmp_path / "data")
    serial = train_runs(_two_phase(data_root, tmp_path / "serial"), parallel_runs=1)
    parallel = train_runs(_two_phase(data_root, tmp_path / "parallel"), parallel_runs=2)
    assert [f["miou"] for f in parallel] == [f["miou"] for f in serial]
    one = torch.load(tmp_path / "serial" / "finetune" / CHECKPOINT, weights_only=True)["model"]
    other = torch.load(tmp_path / "parallel" / "finetune" / CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(one[k], other[k]) for k in one)


def test_a_run_that_waits_for_itself_is_one_line(tmp_path):
    data_root = tiny_synthetic(tmp_path / "data")
    pce, finetune, other = _two_phase(data_root, tmp_path / "results")
    finetune.loss.init_from = str(tmp_path / "results" / "finetune" / CHECKPOINT)
    with pytest.raises(ValueError, match="finetune: waits for a run that never starts"):
        train_runs([finetune, other], parallel_runs=2)


def test_a_failing_run_is_raised_with_its_own_message(tmp_path):
    data_root = tiny_synthetic(tmp_path / "data")
    good, bad = _configs(data_root, tmp_path / "results", ["good", "bad"])
    bad.data.root = str(tmp_path / "missing")
    with pytest.raises(DataError, match="missing"):
        train_runs([good, bad], parallel_runs=2)


def test_a_run_whose_process_dies_is_one_line_not_a_wait(tmp_path):
    # A run's process killed from outside (the kernel's out-of-memory killer) sends no result: the
    # caller must hear of it at once. The stand-in process exits with code 3 without a word.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=os._exit, args=(3,))
    process.start()
    sender.close()
    with pytest.raises(RuntimeError, match=r"^big: its process ended without finishing \(exit code 3;"):
        run_pool._next_outcome({0: (process, receiver)}, lambda i: "big")
    assert not process.is_alive()


def test_auto_takes_one_run_per_core_as_memory_allows(monkeypatch):
    monkeypatch.setattr(run_pool.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run_pool, "usable_cores", lambda: 4)
    monkeypatch.setattr(run_pool, "available_memory", lambda: 64 * run_pool.MEMORY_PER_RUN)
    assert run_pool.resolve_processes("auto", "cpu", pending=9) == 4
    assert run_pool.resolve_processes("auto", "auto", pending=3) == 3
    assert run_pool.resolve_processes("auto", "cpu", pending=1) == 1
    monkeypatch.setattr(run_pool, "available_memory", lambda: 2 * run_pool.MEMORY_PER_RUN + 1)
    assert run_pool.resolve_processes("auto", "cpu", pending=9) == 2
    monkeypatch.setattr(run_pool, "available_memory", lambda: run_pool.MEMORY_PER_RUN // 2)
    assert run_pool.resolve_processes("auto", "cpu", pending=9) == 1
    # A GPU is one device: its runs go one at a time.
    assert run_pool.resolve_processes("auto", "cuda", pending=9) == 1
    assert run_pool.resolve_processes(3, "cpu", pending=9) == 3
    assert run_pool.resolve_processes(3, "cpu", pending=2) == 2


@pytest.mark.parametrize("setting", [0, -1, 1.5, "two", True, None])
def test_bad_parallel_runs_setting_is_one_line(setting):
    with pytest.raises(ValueError, match="parallel_runs must be a whole number >= 1 or 'auto'"):
        run_pool.resolve_processes(setting, "cpu", pending=3)


def test_a_runs_numbers_do_not_depend_on_how_many_train_at_once(tmp_path, capfd):
    # The study's configs name no thread count. Trained one at a time in this process (which has
    # two threads here) or two at once in worker processes, each run must do the same arithmetic:
    # bit-identical weights, and metrics.json records the fixed thread count it trained with.
    data_root = tiny_synthetic(tmp_path / "data")

    def configs(results):
        return [tiny_config(data_root, results, name, f"run.seed={seed}", "loss.type=pce_crf")
                for seed, name in enumerate(["a", "b"])]

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = train_runs(configs(tmp_path / "alone"), parallel_runs=1)
        capfd.readouterr()
        together = train_runs(configs(tmp_path / "together"), parallel_runs=2)
    finally:
        torch.set_num_threads(before)
    assert "training a, b" in capfd.readouterr().err  # the bar names the runs in flight
    assert [f["miou"] for f in together] == [f["miou"] for f in alone]
    for name in "ab":
        one = torch.load(tmp_path / "alone" / name / CHECKPOINT, weights_only=True)["model"]
        other = torch.load(tmp_path / "together" / name / CHECKPOINT, weights_only=True)["model"]
        assert all(torch.equal(one[k], other[k]) for k in one), name
        for results in ("alone", "together"):
            recorded = json.loads((tmp_path / results / name / METRICS).read_text())["provenance"]
            assert recorded["threads"] == run_pool.THREADS_PER_RUN
            assert recorded["torch"] == torch.__version__ and recorded["device"] == "cpu"


def test_the_scheduler_fixes_only_a_cpu_runs_unset_thread_count(tmp_path, monkeypatch):
    monkeypatch.setattr(run_pool.torch.cuda, "is_available", lambda: False)
    unset = tiny_config(tmp_path, tmp_path, "a")
    assert unset.run.threads is None and run_pool.with_fixed_threads(unset).run.threads == run_pool.THREADS_PER_RUN
    assert unset.run.threads is None  # the caller's config is left as it was
    assert run_pool.with_fixed_threads(tiny_config(tmp_path, tmp_path, "b", "run.threads=3")).run.threads == 3
    on_gpu = tiny_config(tmp_path, tmp_path, "c", "run.device=cuda")
    assert run_pool.with_fixed_threads(on_gpu).run.threads is None  # a GPU run's arithmetic is not the CPU's
    monkeypatch.setattr(run_pool.torch.cuda, "is_available", lambda: True)
    assert run_pool.with_fixed_threads(tiny_config(tmp_path, tmp_path, "d", "run.device=auto")).run.threads is None


def test_auto_counts_each_runs_threads(monkeypatch):
    monkeypatch.setattr(run_pool.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(run_pool, "usable_cores", lambda: 8)
    monkeypatch.setattr(run_pool, "available_memory", lambda: 64 * run_pool.MEMORY_PER_RUN)
    assert run_pool.resolve_processes("auto", "cpu", pending=9, threads_per_run=2) == 4
    assert run_pool.resolve_processes("auto", "cpu", pending=9, threads_per_run=16) == 1
