"""The GPU-friendly training step, checked on the CPU: losses read back at intervals, the
non-finite check there, and data.batch_size: auto."""

import json
import math

import pytest
import torch

import rloss.engine.datasets as DS
import rloss.engine.memory as M
import rloss.engine.objective as O
import rloss.engine.train as T
from inputs import tiny_config
from rloss.engine.config import load_config
from rloss.engine.memory import largest_fitting
from rloss.engine.timing import PendingSteps
from rloss.engine.train import TrainingError, train


def read_like_a_gpu(monkeypatch):
    """The GPU's read interval (the log interval) on the CPU."""
    monkeypatch.setattr(T, "read_interval", lambda cfg, device: cfg.wandb.log_every_iters)


# --------------------------------------------------------------------------------------------
# Reading back at intervals
# --------------------------------------------------------------------------------------------


def test_losses_are_read_back_once_per_interval_and_every_step_is_timed(data_root, tmp_path, monkeypatch):
    read_like_a_gpu(monkeypatch)
    reads = []
    real_read = PendingSteps.read

    def counted(self):
        steps = real_read(self)
        if steps:
            reads.append([s["iteration"] for s in steps])
        return steps

    monkeypatch.setattr(PendingSteps, "read", counted)
    # 2 iterations per epoch, 5 epochs: reads at every 3rd iteration and at each epoch's end.
    cfg = tiny_config(data_root, tmp_path, "intervals", "loss.type=pce_crf", "optim.epochs=5", "wandb.log_every_iters=3",
               "run.checkpoint_every_iters=1000", "run.eval_every_epochs=100")
    train(cfg)
    assert [i for r in reads for i in r] == list(range(1, 11))  # every step read once, in order
    assert reads == [[1, 2], [3], [4], [5, 6], [7, 8], [9], [10]]
    timings = json.loads((tmp_path / "intervals" / "metrics.json").read_text())["timings"]
    assert timings["timed_iterations"] == 9  # all 10 steps timed, the first left out
    assert 0.0 < timings["crf_share"] < 1.0


def test_pending_steps_return_the_losses_and_timings_of_each_step():
    pending = PendingSteps(torch.device("cpu"))
    assert pending.read() == []
    for i, (pce, crf) in enumerate([(1.5, 0.25), (2.0, float("nan"))], start=1):
        start = pending.mark()
        crf_start, crf_end = pending.mark(), pending.mark()
        terms = {"pce": torch.tensor(pce, requires_grad=True), "crf": torch.tensor(crf)}
        pending.add(i, terms, terms["pce"] + terms["crf"], (start, pending.mark(), crf_start, crf_end))
    first, second = pending.read()
    assert first["iteration"] == 1 and first["terms"] == {"pce": 1.5, "crf": 0.25} and first["loss"] == 1.75
    assert second["iteration"] == 2 and math.isnan(second["loss"]) and second["terms"]["pce"] == 2.0
    assert 0.0 <= first["crf_seconds"] <= first["seconds"]
    assert pending.read() == []  # read once


def test_non_finite_loss_found_at_the_next_read_keeps_the_last_good_checkpoint(data_root, tmp_path, monkeypatch):
    read_like_a_gpu(monkeypatch)
    real_loss, steps = O.scribble_loss, []

    def nan_at_step_7(*args):
        steps.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(steps) == 7 else loss  # NaN weights from here on

    monkeypatch.setattr(O, "scribble_loss", nan_at_step_7)
    # Reads every 5 steps and before each checkpoint (every 2 steps): reads after steps 2, 4, 5, 6, 8.
    # Step 7's loss is found at the read after step 8, before the checkpoint of step 8 is written.
    cfg = tiny_config(data_root, tmp_path, "diverge", "loss.type=pce", "optim.epochs=20", "wandb.log_every_iters=5",
               "run.checkpoint_every_iters=2")
    with pytest.raises(TrainingError, match=r"not finite at iteration 7 \(pce nan\); stopped, the last checkpoint "
                                            r"\(.*checkpoint\.pt, iteration 6\) is intact"):
        train(cfg)
    assert len(steps) == 8  # one step late: at most one log interval
    ckpt = torch.load(tmp_path / "diverge" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


# --------------------------------------------------------------------------------------------
# data.batch_size: auto
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [2, 3, 7, 64, 1000])
def test_largest_fitting_finds_the_boundary_in_logarithmic_trials(limit):
    for threshold in range(0, min(limit, 70) + 3):
        calls = []

        def fits(n):
            calls.append(n)
            return n <= threshold

        expected = max([n for n in range(2, limit + 1) if n <= threshold], default=0)
        assert largest_fitting(fits, limit) == expected, (limit, threshold)
        assert all(2 <= n <= limit for n in calls)
        assert len(calls) <= 2 * math.ceil(math.log2(limit)) + 2


def test_auto_batch_on_the_cpu_is_the_documented_default_recorded_in_metrics(data_root, tmp_path):
    train(tiny_config(data_root, tmp_path, "auto", "data.batch_size=auto", "optim.epochs=1", "loss.type=pce"))
    metrics = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert metrics["data"]["batch_size"] == M.CPU_AUTO_BATCH == 8
    assert torch.load(tmp_path / "auto" / "checkpoint.pt", weights_only=True)["batch_size"] == 8
    assert "batch_size: auto" in (tmp_path / "auto" / "config.yaml").read_text()


def test_auto_batch_on_the_cpu_is_capped_by_the_training_set():
    cfg = load_config(None, ["data.batch_size=auto"])
    cpu = torch.device("cpu")
    assert M.auto_batch_size(cfg, M.D.DistContext(), cpu, 3, 5) == 5
    assert M.auto_batch_size(cfg, M.D.DistContext(), cpu, 3, 50) == 8
    assert M.auto_batch_size(cfg, M.D.DistContext(rank=0, world_size=2), cpu, 3, 5) == 4  # a multiple of 2


def test_probe_finds_the_largest_batch_whose_trial_step_fits(data_root, monkeypatch):
    # A model that runs out of memory above 5 images: the trial steps go through preflight's
    # real out-of-memory handling; the search lands on 5.
    real_build = M.build_model
    seen = []

    class RunsOutAbove5(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append(x.shape[0])
            if x.shape[0] > 5:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return self.net(x)

    monkeypatch.setattr(M, "build_model", lambda *a, **k: RunsOutAbove5(real_build(*a, **k)))
    cfg = load_config(None, ["data.batch_size=auto", "data.crop_size=32", "model.name=deeplabv3plus_tiny",
                             "loss.type=pce_crf", "loss.kernel=exact"])
    rng = torch.get_rng_state()
    assert M.probe_batch_size(cfg, M.D.DistContext(), torch.device("cpu"), 3, 100) == 5
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random draws are unchanged
    assert 5 in seen and 6 in seen and max(seen) <= 8
    with pytest.raises(TrainingError, match=r"batch_size auto: not even 2 images"):
        M.probe_batch_size(cfg, M.D.DistContext(), torch.device("cpu"), 3, 1)


def test_resumed_auto_run_keeps_the_batch_it_started_with(data_root, tmp_path, monkeypatch):
    cfg = tiny_config(data_root, tmp_path, "keep", "data.batch_size=auto", "optim.epochs=1", "loss.type=pce")
    train(cfg)
    path = tmp_path / "keep" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["batch_size"] = 4  # as if another device had chosen 4
    torch.save(ckpt, path)
    monkeypatch.setattr(DS, "auto_batch_size", lambda *a: pytest.fail("a resumed run must not probe again"))
    train(cfg, resume=True)  # the same run: the batch comes from its checkpoint
    assert json.loads((tmp_path / "keep" / "metrics.json").read_text())["data"]["batch_size"] == 4


def test_batch_size_config_accepts_auto_and_names_a_bad_value():
    assert load_config(None, ["data.batch_size=auto"]).data.batch_size == "auto"
    assert load_config(None, ["data.batch_size=12"]).data.batch_size == 12
    with pytest.raises(ValueError, match=r"data\.batch_size must be an integer or 'auto', got 'big'"):
        load_config(None, ["data.batch_size=big"])
    with pytest.raises(ValueError, match=r"data\.batch_size must be >= 1, got 0"):
        load_config(None, ["data.batch_size=0"])
