"""The training engine on a tiny synthetic set: runs, outputs, exact resume, config errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inputs import tiny_config
from rloss.engine.config import TrainConfig, load_config
from rloss.engine.train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("loss", ["pce", "pce_crf"])
def test_run_writes_results(data_root, tmp_path, loss):
    cfg = tiny_config(data_root, tmp_path, loss, f"loss.type={loss}")
    final = train(cfg)
    run_dir = tmp_path / loss
    for name in ("config.yaml", "metrics.json", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.part")), "a temporary file was left behind"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.json", "checkpoint.pt"):  # ordinary files, not the owner-only mode of a temp file
        assert (run_dir / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["evals"]] == [1, 2]
    assert metrics["final"] == final
    assert 0.0 <= final["miou"] <= 1.0 and 0.0 <= final["pixel_accuracy"] <= 1.0
    assert set(final["per_class_iou"]) == set((data_root / "classes.txt").read_text().split())
    timings = metrics["timings"]
    assert timings["median_iteration_s"] > 0
    if loss == "pce_crf":
        assert 0.0 < timings["crf_share"] < 1.0
    else:
        assert timings["crf_share"] is None
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["epoch"] == 2
    assert load_config(run_dir / "config.yaml").to_dict() == cfg.to_dict()


_CHILD = """
import sys, time, torch
torch.use_deterministic_algorithms(True)
import rloss.engine.checkpoint as C
from rloss.engine.config import TrainConfig, load_config
from rloss.engine.train import train
save = C.write_checkpoint
def save_and_wait(path, state):
    save(path, state)
    if state["iteration"] == 3:
        open(sys.argv[2], "w").write("3")
        time.sleep(600)  # killed here
C.write_checkpoint = save_and_wait
train(load_config(sys.argv[1]))
"""


# epochs=1: the weight average is saved and restored too; eval_every_iters=3: an evaluation at the
# iteration of the checkpoint the run is killed after (it must be in that checkpoint)
@pytest.mark.parametrize("setting", ["optim.weight_average_epochs=0", "optim.weight_average_epochs=1",
                                     "run.eval_every_iters=3"])
def test_resume_after_sigkill_matches_uninterrupted(data_root, tmp_path, setting):
    averaged = setting == "optim.weight_average_epochs=1"
    torch.use_deterministic_algorithms(True)
    try:
        extra = ("loss.type=pce_crf", "run.checkpoint_every_iters=1", setting)
        final_a = train(tiny_config(data_root, tmp_path, "a", *extra))

        cfg_b = tiny_config(data_root, tmp_path, "b", *extra)
        config_path = tmp_path / "b.yaml"
        config_path.write_text(cfg_b.to_yaml())
        marker = tmp_path / "b.marker"
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(config_path), str(marker)], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child ended before iteration 3: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the child never reached iteration 3"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
        assert child.returncode == -signal.SIGKILL
        assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 3

        final_b = train(cfg_b, resume=True)
    finally:
        torch.use_deterministic_algorithms(False)

    assert final_b == final_a
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics_b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics_b["evals"] == metrics_a["evals"]
    ckpt_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ckpt_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    weights = ("model", "trained_model") if averaged else ("model",)
    assert ("trained_model" in ckpt_a) == averaged
    for weight in weights:
        assert ckpt_a[weight].keys() == ckpt_b[weight].keys()
        for key, value in ckpt_a[weight].items():
            assert torch.equal(value, ckpt_b[weight][key]), (weight, key)
    for key in ("iteration", "epoch", "position"):
        assert ckpt_a[key] == ckpt_b[key]


def test_resume_without_checkpoint_is_a_clear_error(data_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(data_root, tmp_path, "none"), resume=True)


def test_config_errors_and_overrides(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  type: pce\n  sigma_rbg: 15\n")
    with pytest.raises(ValueError, match=r"loss\.sigma_rbg.*bad\.yaml"):
        load_config(path)
    path.write_text("loss:\n  type: crf_only\n")
    with pytest.raises(ValueError, match=r"loss\.type.*crf_only"):
        load_config(path)
    with pytest.raises(ValueError, match=r"run\.amp.*fp8"):
        load_config(None, ["run.amp=fp8"])
    with pytest.raises(ValueError, match=r"model\.name.*resnet18"):
        load_config(None, ["model.name=resnet18"])
    with pytest.raises(ValueError, match=r"unknown key 'optim\.lr_head'.*--set"):
        load_config(None, ["optim.lr_head=1"])

    path.write_text("loss:\n  type: pce\noptim:\n  lr: 1e-3\nrun:\n  amp: off\n")
    cfg = load_config(path, ["loss.type=pce_crf", "optim.epochs=3", "data.scale_range=[0.75, 1.5]"])
    assert cfg.loss.type == "pce_crf" and cfg.optim.epochs == 3 and cfg.optim.lr == 1e-3
    assert cfg.data.scale_range == [0.75, 1.5] and cfg.run.amp == "off"
    defaults = TrainConfig().optim  # what neither the file nor --set names keeps its default
    assert (cfg.optim.head_lr_mult, cfg.optim.poly_power) == (defaults.head_lr_mult, defaults.poly_power)


# --------------------------------------------------------------------------------------------
# Faults: each stops with one clear message and leaves the last good checkpoint as it was
# --------------------------------------------------------------------------------------------


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(data_root, tmp_path):
    from rloss.engine.train import TrainingError

    # A learning rate this large makes the weights, then the loss, overflow within a few steps.
    cfg = tiny_config(data_root, tmp_path, "diverge", "loss.type=pce", "optim.lr=1e30", "optim.epochs=20",
               "run.checkpoint_every_iters=1")
    with pytest.raises(TrainingError, match=r"not finite at iteration (\d+).*last checkpoint.*intact") as info:
        train(cfg)
    stopped_at = int(info.value.args[0].split("iteration ")[1].split()[0])
    ckpt = torch.load(tmp_path / "diverge" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == stopped_at - 1  # the checkpoint of the last finite step
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_full_disk_keeps_the_previous_checkpoint(data_root, tmp_path, monkeypatch):
    import errno

    import rloss.engine.train as T

    saves = []
    real_save = torch.save

    def save_until_disk_full(obj, path):
        saves.append(obj["iteration"])
        if len(saves) == 2:
            Path(path).write_bytes(b"half a checkpoint")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(T.torch, "save", save_until_disk_full)
    with pytest.raises(T.TrainingError, match=r"cannot write .*checkpoint\.pt: No space left on device \(the previous one is intact\)"):
        train(tiny_config(data_root, tmp_path, "full", "loss.type=pce", "run.checkpoint_every_iters=1"))
    monkeypatch.undo()
    run_dir = tmp_path / "full"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["iteration"] == saves[0]
    assert not list(run_dir.glob("*.part")) and not list(run_dir.glob(".*.part"))


def test_unwritable_results_folder_is_one_clear_error(data_root, tmp_path):
    from rloss.engine.train import TrainingError

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(TrainingError, match=r"cannot write .*not_a_folder.*: Not a directory"):
        train(tiny_config(data_root, blocker, "run"))


def test_crop_too_large_for_memory_fails_before_training(data_root, tmp_path):
    from rloss.engine.train import TrainingError

    # 10^6 px crops: terabytes per image, refused by the allocator at once.
    cfg = tiny_config(data_root, tmp_path, "huge", "data.crop_size=1000000", "data.batch_size=1", "loss.type=pce")
    with pytest.raises(TrainingError, match=r"out of memory.*data\.crop_size 1000000.*lower data\.batch_size"):
        train(cfg)
    assert not (tmp_path / "huge" / "checkpoint.pt").exists()


class _RunsCode:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_untrusted_checkpoint_is_refused_without_running_its_code(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "evil", "loss.type=pce")
    run_dir = tmp_path / "evil"
    run_dir.mkdir()
    marker = tmp_path / "code_ran"
    torch.save({"model": {}, "payload": _RunsCode(marker)}, run_dir / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a checkpoint written by rloss train"):
        train(cfg, resume=True)
    assert not marker.exists()
    # and the same pickle does run code when loaded the unsafe way: the test would notice
    torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_compiled_training_matches_eager(data_root, tmp_path, monkeypatch):
    # torch.compile draws dropout masks from its own generator, so dropout is switched off in both
    # runs; then the compiled model must follow the same trajectory up to float rounding.
    import torch.nn.functional as F

    monkeypatch.setattr(F, "dropout", lambda x, p=0.5, training=True, inplace=False: x)
    finals, weights = {}, {}
    runs = {"eager": ("false", 4), "compiled": ("true", 4), "eager_3_steps": ("false", 3)}
    for name, (compiled, steps) in runs.items():
        # SGD: its step is linear in the gradient, so float rounding stays rounding (AdamW's normalised
        # step turns a rounding difference in a near-zero gradient into a full-size one)
        cfg = tiny_config(data_root, tmp_path, name, "loss.type=pce_crf", f"optim.iterations={steps}", f"run.compile={compiled}",
                   "optim.name=sgd")
        finals[name] = train(cfg)
        weights[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]

    def distance(a, b):
        keys = [k for k, v in weights[a].items() if v.is_floating_point()]
        diff = sum(((weights[a][k] - weights[b][k]) ** 2).sum() for k in keys).sqrt()
        return float(diff / sum((weights[b][k] ** 2).sum() for k in keys).sqrt())

    assert distance("compiled", "eager") < 1e-5
    assert distance("eager_3_steps", "eager") > 1e-3  # one step fewer is far outside that tolerance
    assert finals["compiled"]["miou"] == pytest.approx(finals["eager"]["miou"], abs=1e-6)


def test_adamw_is_a_choice_of_optimizer(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "adamw", "loss.type=pce", "optim.name=adamw", "optim.lr=0.002", "optim.epochs=1")
    train(cfg)
    state = torch.load(tmp_path / "adamw" / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert state and all({"exp_avg", "exp_avg_sq"} <= set(s) and "momentum_buffer" not in s for s in state.values())
    with pytest.raises(ValueError, match="optim.name must be one of sgd, adamw"):
        load_config(None, ["optim.name=adam"])


@pytest.mark.parametrize("schedule, last_step_share", [("cosine", 0.25), ("poly", (1 / 3) ** 0.9)])
def test_learning_rate_schedule(data_root, tmp_path, schedule, last_step_share):
    # Three steps: the last one runs at iteration 2 of 3, where cosine gives (1 + cos(2 pi / 3)) / 2 = 1/4
    # of the base rate and poly (1 - 2/3)^0.9.
    cfg = tiny_config(data_root, tmp_path, schedule, "loss.type=pce", "optim.name=adamw", "optim.lr=0.002",
               "optim.iterations=3", f"optim.lr_schedule={schedule}")
    train(cfg)
    groups = torch.load(tmp_path / schedule / "checkpoint.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["lr"] == pytest.approx(g["initial_lr"] * last_step_share) for g in groups)
    with pytest.raises(ValueError, match="optim.lr_schedule must be one of poly, cosine"):
        load_config(None, ["optim.lr_schedule=step"])


def test_evaluations_every_n_iterations_fall_mid_epoch_and_change_nothing_trained(data_root, tmp_path):
    """8 images at batch 4 are 2 iterations per epoch: every 3 iterations of 7 is mid-epoch (3, 6) and
    the end (7); the epochs are counted in passes over the data. Evaluating more often trains the same."""
    length = ("loss.type=pce", "optim.iterations=7", "optim.weight_average_iters=2")
    train(tiny_config(data_root, tmp_path, "every3", *length, "run.eval_every_iters=3"))
    train(tiny_config(data_root, tmp_path, "every1", *length, "run.eval_every_iters=1"))
    evals = json.loads((tmp_path / "every3" / "metrics.json").read_text())["evals"]
    assert [(e["iteration"], e["epoch"]) for e in evals] == [(3, 1.5), (6, 3), (7, 3.5)]
    assert len(json.loads((tmp_path / "every1" / "metrics.json").read_text())["evals"]) == 7
    a, b = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True) for name in ("every3", "every1"))
    assert a["average_updates"] == 7
    for weights in ("model", "trained_model"):
        assert all(torch.equal(value, b[weights][key]) for key, value in a[weights].items()), weights
