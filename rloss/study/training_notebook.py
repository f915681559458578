"""The training notebooks' (02, 03) one call: their parameters, checked, to a grid of runs, trained and shown.

    grid = train_notebook(globals())   # the notebook's parameters: configs over the recipe, trained
    grid.print_runs()                  # one line per run (deterministic: nbval checks it)
    grid.print_summary()               # each loss's mIoU over seeds, time per iteration
    grid.show_curves()                 # the learning curves

Each training setting (:data:`NOTEBOOK_SETTINGS`) left None takes the recipe's value: the config
dataclasses' default (``rloss/engine/config.py``), or the overlay ``recipe`` names; :func:`notebook_config`
maps the flat parameters to their config keys, and the config checks them. The weights
``crf_relative_weight`` and ``nc_weight`` are settings like the others, or :data:`SWEEP`: the weight is then
chosen by a sweep on a held-out share of train before the runs (:func:`rloss.study.grid.plan_grid`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..engine.config import TrainConfig
from .grid import base_config, check_grid, grid_summary, plan_grid, plot_grid_curves, train_grid

# The training notebooks' parameters (02, 03) and the config keys they set.
NOTEBOOK_SETTINGS = {
    "model": "model_name", "pretrained": "model_pretrained", "output_stride": "model_output_stride",
    "crop_size": "data_crop_size", "batch_size": "data_batch_size", "interpolation": "data_interpolation",
    "scale_range": "data_scale_range", "num_workers": "data_num_workers",
    "iterations": "optim_iterations", "epochs": "optim_epochs", "optimizer": "optim_name", "lr": "optim_lr",
    "lr_schedule": "optim_lr_schedule", "weight_decay": "optim_weight_decay", "head_lr_mult": "optim_head_lr_mult",
    "weight_average_iters": "optim_weight_average_iters",
    "crf_relative_weight": "loss_crf_relative_weight", "nc_weight": "loss_nc_weight",
    "sigma_rgb": "loss_sigma_rgb", "sigma_xy": "loss_sigma_xy", "scale_factor": "loss_scale_factor",
    "kernel": "loss_kernel", "eval_every_iters": "run_eval_every_iters", "eval_every_epochs": "run_eval_every_epochs",
    "device": "run_device", "amp": "run_amp", "wandb": "wandb_enabled", "wandb_mode": "wandb_mode",
}
# Their other parameters: the grid's, the recipe it starts from, how it trains.
GRID_PARAMETERS = ("data_root", "results_dir", "study_name", "losses", "seeds", "two_phase", "finetune_iterations",
                   "recipe", "rerun", "parallel_runs")
TRAINING_PARAMETERS = GRID_PARAMETERS + tuple(NOTEBOOK_SETTINGS)
# A weight parameter with this value is chosen by a sweep on a held-out share of train (rloss.engine.sweep).
SWEEP = "sweep"
SWEPT_WEIGHTS = ("crf_relative_weight", "nc_weight")


def check_weights(crf_relative_weight=None, nc_weight=None) -> None:
    """The weight parameters: None (the recipe's), :data:`SWEEP`, or a finite number >= 0."""
    for key, weight in zip(SWEPT_WEIGHTS, (crf_relative_weight, nc_weight)):
        if weight is None or weight == SWEEP:
            continue
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ValueError(f"{key} must be \"{SWEEP}\" or a finite number >= 0; got {weight!r}")


def notebook_config(data_root: str, results_dir: str, recipe: str | None = None, **parameters) -> TrainConfig:
    """The training notebooks' base config: each parameter of :data:`NOTEBOOK_SETTINGS` into its config
    key, over the ``recipe``'s defaults (None: ``"default"``); a parameter left None keeps the recipe's, as
    does a weight left to the sweep (:data:`SWEEP`) until the sweep chooses it."""
    unknown = sorted(set(parameters) - set(NOTEBOOK_SETTINGS))
    if unknown:
        raise ValueError(f"study: unknown training parameter {unknown[0]!r} (known: {', '.join(NOTEBOOK_SETTINGS)})")
    settings = {NOTEBOOK_SETTINGS[name]: value for name, value in parameters.items()
                if value is not None and not (name in SWEPT_WEIGHTS and value == SWEEP)}
    return base_config(data_root, results_dir, recipe=recipe or "default", **settings)


def check_training_parameters(values: Mapping) -> TrainConfig:
    """The parameters of a notebook of runs (02 and 03 train them, 04 evaluates them), each failure one line
    naming the parameter: the grid's, then the settings' through the base config they make, which is
    returned (validated there, once). ``values``: the notebook's parameters, with ``losses``, ``seeds``,
    ``data_root`` and ``results_dir``; a setting it does not hold is the recipe's."""
    check_grid(values["losses"], values["seeds"])
    check_weights(values.get("crf_relative_weight"), values.get("nc_weight"))
    return notebook_config(values["data_root"], values["results_dir"], values.get("recipe"),
                           **{name: values[name] for name in NOTEBOOK_SETTINGS if name in values})


@dataclass
class TrainingGrid:
    """A training notebook's grid: one config per run (:func:`rloss.study.grid.study_grid`'s order), and
    after :meth:`train` its runs as :func:`rloss.study.grid.load_runs` reads them back."""

    name: str
    configs: list[TrainConfig]
    rerun: bool = False
    parallel_runs: int | str = 1
    runs: list[dict] = field(default_factory=list)

    def train(self) -> None:
        """Trains the grid: finished runs skipped (unless ``rerun``), interrupted ones resumed."""
        self.runs = train_grid(self.configs, rerun=self.rerun, parallel_runs=self.parallel_runs)

    def print_runs(self) -> None:
        """One line per run: its name, loss and seed, and "two-phase" when it fine-tunes its seed's pCE run."""
        for cfg in self.configs:
            print(cfg.run.name, cfg.loss.type, "seed", cfg.run.seed, "two-phase" if cfg.loss.init_from else "")

    def print_summary(self) -> None:
        """Each loss's final mIoU over seeds and time per iteration (:func:`rloss.study.grid.grid_summary`)."""
        print(grid_summary(self.runs))

    def show_curves(self) -> None:
        """Validation mIoU along training, one line per run (:func:`rloss.study.grid.plot_grid_curves`)."""
        import matplotlib.pyplot as plt

        plot_grid_curves(self.runs, self.name)
        plt.show()


def plan_training(parameters: Mapping) -> TrainingGrid:
    """The grid a training notebook's ``parameters`` ask for (the notebook passes its ``globals()``: the
    names of :data:`TRAINING_PARAMETERS` are read from it), checked; a weight set to :data:`SWEEP` is
    chosen by its sweep first (which trains the sweep's runs)."""
    missing = [name for name in TRAINING_PARAMETERS if name not in parameters]
    if missing:
        raise ValueError(f"study: training parameter {missing[0]!r} is not set (a training notebook declares "
                         f"{', '.join(TRAINING_PARAMETERS)})")
    p = {name: parameters[name] for name in TRAINING_PARAMETERS}
    base = check_training_parameters(p)
    configs = plan_grid(base, p["study_name"], p["losses"], p["seeds"], p["two_phase"], p["finetune_iterations"],
                        rerun=p["rerun"], sweep_crf=p["crf_relative_weight"] == SWEEP,
                        sweep_nc=p["nc_weight"] == SWEEP)
    return TrainingGrid(p["study_name"], configs, rerun=p["rerun"], parallel_runs=p["parallel_runs"])


def train_notebook(parameters: Mapping) -> TrainingGrid:
    """:func:`plan_training`, then its grid trained: a training notebook's one call."""
    grid = plan_training(parameters)
    grid.train()
    return grid
