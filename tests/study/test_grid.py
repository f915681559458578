"""The training notebooks' calls: parameters reach the config as values, the grid and its printed summary."""

import pytest

from rloss.engine.config import TrainConfig
from rloss.study.grid import base_config, grid_summary, load_runs, plan_grid, study_grid
from rloss.study.training_notebook import NOTEBOOK_SETTINGS, notebook_config
from rloss.engine.sweep import sweep_configs

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


def test_notebook_parameters_left_none_take_the_recipe(tmp_path):
    every_none = notebook_config("d", tmp_path, None, **dict.fromkeys(NOTEBOOK_SETTINGS))
    recipe = TrainConfig()
    recipe.data.root, recipe.run.results_dir = "d", str(tmp_path)
    assert every_none.to_dict() == recipe.to_dict()
    cfg = notebook_config("d", tmp_path, "paper", model="deeplabv3plus_tiny", epochs=60, eval_every_epochs=5, lr=None)
    assert (cfg.model.name, cfg.optim.name, cfg.optim.lr, cfg.optim.epochs, cfg.optim.iterations) == \
        ("deeplabv3plus_tiny", "sgd", 0.007, 60, None)
    assert (cfg.run.eval_every_epochs, cfg.run.eval_every_iters) == (5, None)
    # Every parameter names a real config key (a typo in the table would only fail when that parameter is set).
    assert all(base_config("d", tmp_path, **{key: value}) for key, value in
               zip(NOTEBOOK_SETTINGS.values(), [getattr(getattr(recipe, k.split("_", 1)[0]), k.split("_", 1)[1])
                                                for k in NOTEBOOK_SETTINGS.values()]))
    with pytest.raises(ValueError, match="unknown training parameter 'epoch'"):
        notebook_config("d", tmp_path, None, epoch=3)


def test_two_phase_runs_fine_tune_for_half_the_length_unless_told(tmp_path):
    base = base_config("d", tmp_path, optim_iterations=300)
    pce, crf = study_grid(base, "s", ["pce", "pce_crf"], [0], two_phase=True)
    assert (pce.optim.iterations, crf.optim.iterations) == (300, 150)
    pce, crf = study_grid(base, "s", ["pce", "pce_crf"], [0], two_phase=True, finetune_iterations=40)
    assert (pce.optim.iterations, crf.optim.iterations, crf.optim.epochs) == (300, 40, None)
    pce, crf = study_grid(base, "s", ["pce", "pce_crf"], [0], two_phase=False)
    assert crf.optim.iterations == 300 and crf.loss.init_from is None


def test_the_pce_run_of_a_sweep_has_one_name_whatever_the_swept_weight(tmp_path):
    base = base_config("d", tmp_path, loss_type="pce_crf")
    crf = sweep_configs(base, "s", [0, 1])
    nc = sweep_configs(base, "s_nc", [0, 0.05], key="loss.nc_weight", runs_prefix="s")
    assert [(c.run.name, c.loss.type) for c in crf] == [("s_sweep_w0", "pce"), ("s_sweep_w1", "pce_crf")]
    assert [(c.run.name, c.loss.type) for c in nc] == [("s_sweep_w0", "pce"), ("s_sweep_nc_w0.05", "pce_nc")]
    assert crf[0].settings_used() == nc[0].settings_used()  # so the second sweep reuses the first's run


def test_plan_grid_sets_the_weight_on_every_run(tmp_path, capsys):
    base = notebook_config("d", tmp_path, crf_relative_weight=4)  # the weight is a setting like the others
    planned = base.to_dict()
    configs = plan_grid(base, "s", ["pce", "pce_crf"], [0, 1])
    assert [c.run.name for c in configs] == ["s_pce_seed0", "s_pce_crf_seed0", "s_pce_seed1", "s_pce_crf_seed1"]
    assert {c.loss.crf_relative_weight for c in configs} == {4.0} and base.to_dict() == planned
    assert capsys.readouterr().out.startswith("4 runs: s_pce_seed0, ")
    with pytest.raises(ValueError, match="crf_relative_weight"):
        notebook_config("d", tmp_path, crf_relative_weight=-2.0)
    with pytest.raises(ValueError, match=r"seeds must be a non-empty list of distinct integers >= 0; got \[\]"):
        plan_grid(base, "s", ["pce"], [])


def test_a_densecrf_weight_of_0_is_pce_and_trains_no_duplicate(tmp_path, capsys):
    base = base_config("d", tmp_path, loss_crf_relative_weight=0.0)
    configs = plan_grid(base, "s", ["pce", "pce_crf", "full"], [0])
    assert [c.run.name for c in configs] == ["s_pce_seed0", "s_full_seed0"]
    assert "pCE + DenseCRF: weight 0 is pCE; no such runs are trained" in capsys.readouterr().err
    # an absolute weight decides, not the relative 0
    absolute = base_config("d", tmp_path, loss_crf_weight=5e-7, loss_crf_relative_weight=0.0)
    names = [c.run.name for c in plan_grid(absolute, "s", ["pce", "pce_crf"], [0])]
    assert names == ["s_pce_seed0", "s_pce_crf_seed0"]


def test_grid_summary_prints_each_loss_over_seeds(tmp_path):
    for (loss, seed), values in SETTING_A.items():
        write_run(tmp_path, "alpha", "/data/fake40", 40, loss, seed, *values)
    lines = grid_summary(load_runs(tmp_path)).splitlines()
    assert lines[0] == "deeplabv3plus_micro on fake40 (40 px images, crop 32):"
    # pCE: 0.50 and 0.54 -> mean 0.52, sample standard deviation 0.0283; median 0.2 s/iteration
    assert lines[1] == f"  {'pCE':>17}: mIoU 0.5200 ± 0.0283 over 2 seed(s), 200 ms/iteration"
    assert lines[-1] == "  DenseCRF loss share of an iteration: 45.0%"
