"""The training notebooks' calls: parameters reach the config as values, the grid and its printed summary."""

import pytest

from rloss.study.grid import base_config, grid_summary, load_runs, plan_grid

from test_report import SETTING_A, write_run


def test_parameters_reach_the_config_as_values(tmp_path):
    # "#" starts a YAML comment: a text round trip would cut the folder name at it.
    cfg = base_config("../data/odd #1", tmp_path, loss_sigma_xy=12.5, data_scale_range=[0.9, 1.2], optim_epochs=3)
    assert cfg.data.root == "../data/odd #1" and cfg.run.results_dir == str(tmp_path)
    assert (cfg.loss.sigma_xy, list(cfg.data.scale_range), cfg.optim.epochs) == (12.5, [0.9, 1.2], 3)
    with pytest.raises(ValueError, match="loss.sigma_xy"):
        base_config("d", tmp_path, loss_sigma_xy=-1.0)
    with pytest.raises(ValueError, match="unknown key 'loss.sigma'"):
        base_config("d", tmp_path, loss_sigma=1.0)
    with pytest.raises(ValueError, match="must be <section>_<key>"):
        base_config("d", tmp_path, epochs=1)


def test_plan_grid_sets_the_weight_on_every_run(tmp_path, capsys):
    base = base_config("d", tmp_path)
    configs = plan_grid(base, "s", ["pce", "pce_crf"], [0, 1], crf_relative_weight=4)
    assert [c.run.name for c in configs] == ["s_pce_seed0", "s_pce_crf_seed0", "s_pce_seed1", "s_pce_crf_seed1"]
    assert {c.loss.crf_relative_weight for c in configs} == {4.0} and base.loss.crf_relative_weight == 1.0
    assert capsys.readouterr().out.startswith("4 runs: s_pce_seed0, ")
    with pytest.raises(ValueError, match="crf_relative_weight"):
        plan_grid(base, "s", ["pce_crf"], [0], crf_relative_weight=-2.0)
    with pytest.raises(ValueError, match="at least one seed"):
        plan_grid(base, "s", ["pce"], [])


def test_a_densecrf_weight_of_0_is_pce_and_trains_no_duplicate(tmp_path, capsys):
    base = base_config("d", tmp_path)
    configs = plan_grid(base, "s", ["pce", "pce_crf", "full"], [0], crf_relative_weight=0.0)
    assert [c.run.name for c in configs] == ["s_pce_seed0", "s_full_seed0"]
    assert "pCE + DenseCRF: weight 0 is pCE; no such runs are trained" in capsys.readouterr().out
    absolute = base_config("d", tmp_path, loss_crf_weight=5e-7)  # an absolute weight decides, not the relative 0
    names = [c.run.name for c in plan_grid(absolute, "s", ["pce", "pce_crf"], [0], crf_relative_weight=0.0)]
    assert names == ["s_pce_seed0", "s_pce_crf_seed0"]


def test_grid_summary_prints_each_loss_over_seeds(tmp_path):
    for (loss, seed), values in SETTING_A.items():
        write_run(tmp_path, "alpha", "/data/fake40", 40, loss, seed, *values)
    lines = grid_summary(load_runs(tmp_path)).splitlines()
    assert lines[0] == "deeplabv3plus_micro on fake40 (40 px images, crop 32):"
    # pCE: 0.50 and 0.54 -> mean 0.52, sample standard deviation 0.0283; median 0.2 s/iteration
    assert lines[1] == f"  {'pCE':>17}: mIoU 0.5200 ± 0.0283 over 2 seed(s), 200 ms/iteration"
    assert lines[-1] == "  DenseCRF loss share of an iteration: 45.0%"
