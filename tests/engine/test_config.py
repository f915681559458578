"""The training config's recipe and its settings in iterations or epochs (rloss/engine/config.py)."""

import pytest
import yaml

from rloss.engine.config import (FINETUNE_SHARE, IN_ITERATIONS_OR_EPOCHS, RECIPES, TrainConfig, config_from_dict,
                                fine_tuning, load_config)


def test_the_defaults_are_the_recipe_validated_by_the_built_in_study():
    """The values params/default.yaml spelt out before they moved into the config (benchmarks/README.md
    "Converged runs in the built-in study"): 32 epochs of 1000 images at batch 8 = 4000 iterations,
    an evaluation and a weight average of one such epoch = 125 iterations."""
    cfg = TrainConfig().validate()
    assert (cfg.model.name, cfg.data.crop_size, cfg.data.batch_size, cfg.data.scale_range) == \
        ("deeplabv3plus_micro", 64, 8, [0.9, 1.2])
    o = cfg.optim
    assert (o.name, o.lr, o.lr_schedule, o.weight_decay, o.head_lr_mult) == ("adamw", 0.002, "cosine", 1e-4, 1.0)
    assert (o.iterations, o.epochs, o.min_epochs) == (32 * 1000 // 8, None, 16)
    assert (o.weight_average_iters, cfg.run.eval_every_iters) == (1000 // 8, 1000 // 8)
    assert fine_tuning(cfg).optim.iterations == 2000 == o.iterations * FINETUNE_SHARE


def test_the_paper_recipe_sets_the_papers_optimizer_over_the_defaults():
    paper = load_config(None, recipe="paper")
    assert (paper.optim.name, paper.optim.lr_schedule, paper.optim.head_lr_mult, paper.data.scale_range) == \
        ("sgd", "poly", 10.0, [0.5, 2.0])
    assert not paper.averages_weights and TrainConfig().averages_weights
    assert load_config(None, ["optim.lr=0.01"], recipe="paper").optim.lr == 0.01  # --set wins over the recipe
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        load_config(None, recipe="fast")
    assert set(RECIPES) == {"default", "paper"}


@pytest.mark.parametrize("section, by_iters, by_epochs", IN_ITERATIONS_OR_EPOCHS)
def test_a_source_that_gives_one_unit_clears_the_other(tmp_path, section, by_iters, by_epochs):
    default_iters = getattr(getattr(TrainConfig(), section), by_iters)
    assert default_iters  # the defaults count in iterations
    cfg = load_config(None, [f"{section}.{by_epochs}=3"])
    assert (getattr(getattr(cfg, section), by_iters), getattr(getattr(cfg, section), by_epochs)) == (None, 3)
    # In a file, as a run's config.yaml written before the iterations existed.
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({section: {by_epochs: 2}}))
    assert getattr(getattr(load_config(path), section), by_iters) is None
    # Then --set in iterations: the last unit given counts, in one list of --set too.
    cfg = load_config(path, [f"{section}.{by_iters}=7"])
    assert (getattr(getattr(cfg, section), by_iters), getattr(getattr(cfg, section), by_epochs)) == (7, None)
    cfg = load_config(None, [f"{section}.{by_iters}=7", f"{section}.{by_epochs}=2"])
    assert (getattr(getattr(cfg, section), by_iters), getattr(getattr(cfg, section), by_epochs)) == (None, 2)
    # Both in one file (a run's config.yaml holds both keys): the iterations count, as the training reads it.
    both = config_from_dict({section: {by_iters: 5, by_epochs: 2}})
    assert (getattr(getattr(both, section), by_iters), getattr(getattr(both, section), by_epochs)) == (5, 2)


def test_a_length_must_be_given_in_one_unit():
    with pytest.raises(ValueError, match="set optim.iterations or optim.epochs"):
        load_config(None, ["optim.iterations=null"])
    with pytest.raises(ValueError, match="run.eval_every_iters must be >= 1"):
        load_config(None, ["run.eval_every_iters=0"])
    assert not load_config(None, ["optim.weight_average_iters=0"]).averages_weights  # 0: the last iterate
    assert load_config(None, ["optim.weight_average_epochs=0.5"]).averages_weights


def test_settings_used_hold_the_unit_in_use_only():
    by_iters = TrainConfig().settings_used()["optim"]
    assert by_iters["iterations"] == 4000 and "epochs" not in by_iters and "weight_average_epochs" not in by_iters
    by_epochs = load_config(None, ["optim.epochs=3"]).settings_used()["optim"]
    assert by_epochs["epochs"] == 3 and by_epochs["iterations"] is None


def test_the_length_is_the_iterations_or_the_floor_of_passes_over_the_data():
    cfg = TrainConfig()  # 4000 steps, but at least 16 passes
    assert cfg.total_iterations(1000 // 8) == 4000  # the built-in 1000 images: 32 epochs
    assert cfg.total_iterations(300 // 8) == 4000  # 300 images: 108 epochs
    assert cfg.total_iterations(3000 // 8) == 16 * 375  # 3000 images: 4000 steps are only 10.7 epochs
    tuned = fine_tuning(cfg)  # half of each: 2000 steps, 8 passes
    assert (tuned.total_iterations(125), tuned.total_iterations(375)) == (2000, 8 * 375)
    assert load_config(None, ["optim.epochs=3"]).total_iterations(7) == 21
    # A length given without a floor means it exactly (a smoke test's 4 steps, a run's config.yaml written
    # before the floor existed); given with one, the floor stays.
    assert load_config(None, ["optim.iterations=4"]).total_iterations(375) == 4
    assert load_config(None, ["optim.iterations=4", "optim.min_epochs=2"]).total_iterations(375) == 750
    assert fine_tuning(cfg, iterations=40).total_iterations(375) == 40
    assert "min_epochs" not in load_config(None, ["optim.epochs=3"]).settings_used()["optim"]
    with pytest.raises(ValueError, match="optim.min_epochs must be >= 0"):
        load_config(None, ["optim.min_epochs=-1"])


def test_fine_tuning_is_a_share_of_the_length_in_its_unit():
    assert fine_tuning(load_config(None, ["optim.iterations=301"])).optim.iterations == round(301 * FINETUNE_SHARE)
    tuned = fine_tuning(load_config(None, ["optim.epochs=9"]))
    assert (tuned.optim.iterations, tuned.optim.epochs) == (None, round(9 * FINETUNE_SHARE))
    tuned = fine_tuning(load_config(None, ["optim.epochs=9"]), iterations=40)
    assert (tuned.optim.iterations, tuned.optim.epochs) == (40, None)
    assert fine_tuning(load_config(None, ["optim.iterations=1"])).optim.iterations == 1  # never 0


def test_a_bandwidth_per_channel_is_a_list_as_long_as_the_channels():
    cfg = load_config(None, ["data.channels=2", "loss.sigma_rgb=[10, 20]"])
    assert cfg.loss.sigma_rgb == [10.0, 20.0] and load_config(None, ["loss.sigma_rgb=12"]).loss.sigma_rgb == 12.0
    with pytest.raises(ValueError, match=r"^config: loss.sigma_rgb must be one number or 3 \(one per channel"):
        load_config(None, ["loss.sigma_rgb=[10, 20]"])
    with pytest.raises(ValueError, match=r"^config: loss.nc_sigma_rgb\[1\] must be > 0, got -1.0$"):
        load_config(None, ["data.channels=2", "loss.nc_sigma_rgb=[10, -1]"])
