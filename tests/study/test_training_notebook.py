"""The training notebooks' one call (rloss.study.training_notebook): their parameters, checked, to a grid
of configs over the recipe; a weight is a setting like the others, or "sweep"; the grid trained and shown."""

import json
from pathlib import Path

import pytest

from rloss.engine.config import TrainConfig
from rloss.study import training_notebook
from rloss.study.grid import grid_summary, load_runs
from rloss.study.training_notebook import NOTEBOOK_SETTINGS, TRAINING_PARAMETERS, check_weights, plan_training

from test_report import SETTING_A, write_run

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
TRAINING_NOTEBOOKS = ("02_train_40px", "03_train_513px")


@pytest.fixture
def smoke40(notebook_parameters, tmp_path):
    """Notebook 02's own parameters (the smoke run), its folders in ``tmp_path``, with ``changes``."""
    defaults = notebook_parameters("02_train_40px", TRAINING_PARAMETERS)
    return lambda **changes: {**defaults, "data_root": str(tmp_path / "data"),
                              "results_dir": str(tmp_path / "results"), **changes}


@pytest.mark.parametrize("stem", TRAINING_NOTEBOOKS)
def test_a_training_notebook_declares_the_training_parameters_and_makes_one_call(stem):
    cells = [c for c in json.loads((NOTEBOOKS / f"{stem}.ipynb").read_text())["cells"] if c["cell_type"] == "code"]
    [parameters] = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    declared = {}
    exec("".join(parameters["source"]), declared)
    assert set(declared) - {"__builtins__"} == set(TRAINING_PARAMETERS)
    assert sum("train_notebook(globals())" in "".join(c["source"]) for c in cells) == 1


def test_the_notebook_defaults_plan_the_smoke_grid_over_the_recipe(smoke40, capsys):
    grid = plan_training(smoke40())
    assert [c.run.name for c in grid.configs] == ["smoke40_pce_seed0", "smoke40_pce_crf_seed0", "smoke40_full_seed0"]
    assert capsys.readouterr().out == "3 runs: smoke40_pce_seed0, smoke40_pce_crf_seed0, smoke40_full_seed0\n"
    recipe = TrainConfig()
    pce = grid.configs[0]
    assert (pce.optim.iterations, pce.run.eval_every_iters) == (4, 2)  # the smoke run's overrides
    assert (pce.data.crop_size, pce.loss.sigma_xy, pce.loss.crf_relative_weight, pce.loss.nc_weight) == \
        (recipe.data.crop_size, recipe.loss.sigma_xy, recipe.loss.crf_relative_weight, recipe.loss.nc_weight)
    assert grid.configs[1].loss.init_from.endswith("smoke40_pce_seed0/checkpoint.pt")  # two-phase: the recipe's
    assert (grid.name, grid.rerun, grid.parallel_runs, grid.runs) == ("smoke40", False, "auto", [])


def test_a_weight_is_a_setting_or_chosen_by_a_sweep(smoke40, monkeypatch, capsys):
    configs = plan_training(smoke40(crf_relative_weight=4, nc_weight=0.2, losses=["pce", "pce_crf", "pce_nc"])).configs
    assert {(c.loss.crf_relative_weight, c.loss.nc_weight) for c in configs} == {(4.0, 0.2)}

    calls = []

    def fake_sweep(cfg, name, rerun=False, key="loss.crf_relative_weight", runs_prefix=None):
        calls.append((name, key, cfg.loss.crf_relative_weight, cfg.loss.init_from))
        return {"best": 16.0, "reason": "the fake's"}

    monkeypatch.setattr("rloss.engine.sweep.sweep_crf_weight", fake_sweep)
    monkeypatch.setattr("rloss.engine.sweep.two_phase_base", lambda base, name, *args, **kwargs: base)
    monkeypatch.setattr("rloss.study.plots.save_sweep_plot", lambda result, results_dir: None)
    configs = plan_training(smoke40(crf_relative_weight="sweep")).configs
    assert calls == [("smoke40", "loss.crf_relative_weight", TrainConfig().loss.crf_relative_weight, None)]
    assert {c.loss.crf_relative_weight for c in configs} == {16.0}
    assert "DenseCRF weight chosen by the sweep: 16x the published balance (the fake's)" in capsys.readouterr().out


def test_each_config_is_validated_once_where_it_is_made(smoke40, monkeypatch):
    validated = []
    validate = TrainConfig.validate
    monkeypatch.setattr(TrainConfig, "validate", lambda self: validated.append(self) or validate(self))
    grid = plan_training(smoke40())
    assert len(validated) == 1 + len(grid.configs)  # the base config, then each run's (study_grid)
    assert len({id(cfg) for cfg in validated}) == len(validated) and validated[1:] == grid.configs


@pytest.mark.parametrize("weights, message", [
    ({"crf_relative_weight": float("nan")}, 'crf_relative_weight must be "sweep" or a finite number >= 0; got nan'),
    ({"crf_relative_weight": -1.0}, 'crf_relative_weight must be "sweep" or a finite number >= 0; got -1.0'),
    ({"nc_weight": "swept"}, "nc_weight must be \"sweep\" or a finite number >= 0; got 'swept'"),
    ({"nc_weight": True}, 'nc_weight must be "sweep" or a finite number >= 0; got True'),
])
def test_each_bad_weight_is_one_line_naming_it(weights, message, smoke40):
    with pytest.raises(ValueError) as info:
        check_weights(**weights)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        plan_training(smoke40(**weights))
    assert str(info.value) == message
    check_weights("sweep", "sweep")
    check_weights(None, 0)


def test_a_missing_parameter_or_a_bad_setting_is_one_line(smoke40):
    parameters = smoke40()
    del parameters["nc_weight"]
    with pytest.raises(ValueError, match=r"^study: training parameter 'nc_weight' is not set \(a training notebook "
                                         r"declares data_root, "):
        plan_training(parameters)
    with pytest.raises(ValueError, match=r"^config: optim.iterations must be >= 1 \(or null\), got 0$"):
        plan_training(smoke40(iterations=0))
    with pytest.raises(ValueError, match=r"^config: loss.sigma_xy must be float, got 'sweep'$"):
        plan_training(smoke40(sigma_xy="sweep"))  # only the weights can be swept
    assert set(NOTEBOOK_SETTINGS) < set(TRAINING_PARAMETERS)


def test_the_grid_trains_and_shows_its_runs(smoke40, tmp_path, monkeypatch, capsys):
    for (loss, seed), values in SETTING_A.items():
        write_run(tmp_path / "runs", "alpha", "/data/fake40", 40, loss, seed, *values)
    trained = []
    monkeypatch.setattr(training_notebook, "train_grid", lambda configs, rerun, parallel_runs:
                        trained.append((len(configs), rerun, parallel_runs)) or load_runs(tmp_path / "runs"))
    shown = []
    monkeypatch.setattr("matplotlib.pyplot.show", lambda: shown.append(True))
    grid = training_notebook.train_notebook(smoke40(rerun=True, parallel_runs=2))
    assert trained == [(3, True, 2)] and grid.runs == load_runs(tmp_path / "runs")
    capsys.readouterr()
    grid.print_runs()
    assert capsys.readouterr().out == ("smoke40_pce_seed0 pce seed 0 \nsmoke40_pce_crf_seed0 pce_crf seed 0 two-phase\n"
                                       "smoke40_full_seed0 full seed 0 \n")
    grid.print_summary()
    assert capsys.readouterr().out == grid_summary(grid.runs) + "\n"
    grid.show_curves()
    assert shown == [True]

