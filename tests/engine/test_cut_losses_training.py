"""The normalized cut and KernelCut loss types in training: the CLI, the config keys, the sweep."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rloss.engine.config import load_config
from rloss.engine.sweep import swept_loss_type

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def tiny_settings(data_root, results):
    return [f"data.root={data_root}", "data.crop_size=32", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
            "loss.kernel=exact", f"run.results_dir={results}", "run.device=cpu", "run.eval_every_epochs=1"]


def rloss_cli(*args):
    return subprocess.run([sys.executable, "-m", "rloss", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=ENV)


@pytest.mark.parametrize("loss", ["pce_nc", "pce_kernelcut"])
def test_cli_trains_a_few_iterations_of_each_new_loss_type(data_root, tmp_path, loss):
    sets = [*tiny_settings(data_root, tmp_path), f"run.name={loss}", f"loss.type={loss}", "optim.iterations=3",
            "loss.nc_weight=0.5", "loss.nc_sigma_xy=6"]
    out = rloss_cli("train", *(x for s in sets for x in ("--set", s)))
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / loss / "metrics.json").read_text())
    assert metrics["nc_weight"] == 0.5
    cfg = load_config(tmp_path / loss / "config.yaml")
    assert cfg.loss.type == loss and cfg.loss.nc_sigma_xy == 6
    if loss == "pce_kernelcut":  # the DenseCRF term's weight, from crf_relative_weight as for pce_crf
        assert metrics["crf_weight"] == pytest.approx(cfg.absolute_crf_weight())
    else:
        assert metrics["crf_weight"] is None
    assert metrics["timings"]["crf_share"] > 0  # the regularizer's share of a step


def test_config_names_a_bad_normalized_cut_setting():
    with pytest.raises(ValueError, match=r"^config: loss.nc_weight must be >= 0, got -1.0$"):
        load_config(None, ["loss.nc_weight=-1"])
    with pytest.raises(ValueError, match=r"^config: loss.nc_sigma_xy must be > 0, got 0.0$"):
        load_config(None, ["loss.nc_sigma_xy=0"])
    with pytest.raises(ValueError, match="loss.type must be one of pce, pce_crf, pce_nc, pce_kernelcut, full"):
        load_config(None, ["loss.type=pce_ncut"])


def test_sweep_drops_only_the_swept_term_at_weight_zero():
    crf, nc = "loss.crf_relative_weight", "loss.nc_weight"
    assert [swept_loss_type("pce_crf", crf, w) for w in (0, 1)] == ["pce", "pce_crf"]
    assert [swept_loss_type("pce_nc", nc, w) for w in (0, 1)] == ["pce", "pce_nc"]
    assert [swept_loss_type("pce_crf", nc, w) for w in (0, 1)] == ["pce", "pce_nc"]
    assert [swept_loss_type("pce_kernelcut", nc, w) for w in (0, 1)] == ["pce_crf", "pce_kernelcut"]
    assert [swept_loss_type("pce_kernelcut", crf, w) for w in (0, 1)] == ["pce_nc", "pce_kernelcut"]


def test_sweep_weight_cli_sweeps_the_normalized_cut_weight_on_held_out_train(data_root, tmp_path):
    sets = [*tiny_settings(data_root, tmp_path), "loss.type=pce_nc", "optim.iterations=2"]
    out = rloss_cli("sweep-weight", "--name", "t", "--key", "loss.nc_weight", "--weights", "0,0.5", "--holdout", "0.25",
                    *(x for s in sets for x in ("--set", s)))
    assert out.returncode == 0, out.stderr
    assert "use loss.nc_weight=" in out.stdout
    result = json.loads((tmp_path / "t_weight_sweep.json").read_text())
    assert result["key"] == "loss.nc_weight" and result["complete"]
    assert [(p["weight"], p["loss_type"], p["run"]) for p in result["points"]] == [
        (0.0, "pce", "t_sweep_w0"), (0.5, "pce_nc", "t_sweep_nc_w0.5")]  # weight 0 is pCE, named as such
    # 0.5 if it beats pCE beyond the held-out noise, else the default (published-like) weight 0.05
    assert result["best"] == (0.5 if result["points"][1]["gain_low"] > 0 else 0.05)
    run = json.loads((tmp_path / "t_sweep_nc_w0.5" / "metrics.json").read_text())
    assert run["nc_weight"] == 0.5 and run["data"]["evaluated_on"] == "held-out share of train"
    bad = rloss_cli("sweep-weight", "--name", "t", "--key", "loss.sigma_xy", *(x for s in sets for x in ("--set", s)))
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "rloss sweep-weight: sweep: the swept key must be one of loss.crf_relative_weight, loss.nc_weight; got 'loss.sigma_xy'"]


def test_bench_losses_times_the_three_regularizers_side_by_side(capsys):
    from tools.bench import bench_losses, regularized_losses

    losses = regularized_losses(16)
    assert [type(v).__name__ for v in losses.values()] == ["DenseCRFLoss", "NormalizedCutLoss", "KernelCutLoss"]
    assert all(v.validate is None and v.kernel == "auto" for v in losses.values())  # as users get them
    result = bench_losses(repeats=2, n=1, k=3, size=16)
    assert list(result) == list(losses) and result["DenseCRF"]["ratio_to_densecrf"] == 1.0
    for name, r in result.items():
        assert 0 < r["min_ms"] <= r["median_ms"]
        assert r["ratio_to_densecrf"] == pytest.approx(r["median_ms"] / result["DenseCRF"]["median_ms"])
    assert "| KernelCut |" in capsys.readouterr().out
