"""Training configuration: dataclasses loaded from YAML, with dotted ``--set key=value`` overrides.

    cfg = load_config("params/train.yaml", overrides=["loss.type=pce_crf", "optim.epochs=5"])

Every key is checked: an unknown key is one ValueError naming the key and the
file (or ``--set``) it came from; a value of the wrong type or outside its
choices is a ValueError naming the key. Override values are parsed with
``yaml.safe_load``, so ``optim.lr=1e-3``, ``model.pretrained=true`` and
``data.scale_range=[0.5,2]`` work.

The defaults are the study's validated recipe (README, "The training recipe"): the micro
DeepLabV3+ trained for 4000 iterations of batch 8 with AdamW and a cosine decay, mild
rescaling, evaluated every 125 iterations and saved as its weights averaged over the last 125.
The run's length is counted in iterations, not epochs, so that a small data set is not stopped
after a few hundred steps: 4000 steps level off on 300 images (107 epochs) as on 1000 (32). A
large data set needs passes over it as well: at 3000 images 4000 steps are 10.7 epochs, and a
run still rose by 1.2 pp over its last quarter; so the recipe trains at least ``optim.min_epochs``
(16) passes, raising the iterations where needed (benchmarks/README.md "The recipe on data sets
of other sizes"). The paper's VOC recipe (SGD, poly decay, 0.5-2 rescaling) is ``recipe: paper``.

Three settings can be given in iterations or in epochs: ``optim.iterations`` / ``optim.epochs``,
``optim.weight_average_iters`` / ``optim.weight_average_epochs``, ``run.eval_every_iters`` /
``run.eval_every_epochs``. A file or ``--set`` that gives one of a pair leaves the other null
(``--set optim.epochs=5`` trains 5 epochs); where both are set, the iterations count. A source
that gives the length (``optim.iterations`` or ``optim.epochs``) without ``optim.min_epochs``
means that length exactly: the floor is then 0.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..crf_weight import absolute_crf_weight
from ..data.transforms import INTERPOLATIONS
from ..filtering import BACKENDS, KERNELS
from ..models import MODEL_NAMES

LOSS_TYPES = ("pce", "pce_crf", "pce_nc", "pce_kernelcut", "full")
# The loss types with each regularizer: KernelCut is normalized cut plus the DenseCRF term.
CRF_LOSS_TYPES = ("pce_crf", "pce_kernelcut")
NC_LOSS_TYPES = ("pce_nc", "pce_kernelcut")
AMP_MODES = ("off", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("poly", "cosine")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("offline", "online")
AUTO = "auto"  # data.batch_size: the largest global batch that fits the device
# Settings given in iterations or in epochs, as (section, key in iterations, key in epochs): the
# iterations count when both are set; a source that sets one leaves the other null (config_from_dict).
IN_ITERATIONS_OR_EPOCHS = (("optim", "iterations", "epochs"),
                           ("optim", "weight_average_iters", "weight_average_epochs"),
                           ("run", "eval_every_iters", "eval_every_epochs"))


@dataclass
class DataConfig:
    root: str = "data/synthetic_64px"
    train_split: str = "train"
    val_split: str = "val"
    # > 0: train on the train split minus this share of it and evaluate on that share; the
    # val split is then never read (choosing settings without looking at val: rloss sweep-weight).
    holdout_fraction: float = 0.0
    crop_size: int = 64
    # The images' band count, given (not guessed from the first image, so the config alone fixes the
    # network's input): 3 reads every PNG/JPEG as RGB, as always; 1 greyscale (8- or 16-bit); 2 or
    # more bands from TIFF or .npy. Each image must have it: a file that differs is one error naming it
    # (`rloss data check --channels N` reports what the files hold). README "Grayscale, 16-bit and multi-band".
    channels: int = 3
    # Random rescaling of training images. The paper's 0.5-2 suits 513 px crops of VOC photos; on
    # small images it costs 3-4 pp at this budget (benchmarks/README.md), so the recipe keeps it mild.
    scale_range: list[float] = field(default_factory=lambda: [0.9, 1.2])
    interpolation: str = "auto"  # auto | bilinear | bicubic
    # The global batch, or "auto": the largest that fits the GPU, found by trial steps before
    # training (the chosen value is in metrics.json); on the CPU auto is 8 (see memory.auto_batch_size).
    batch_size: int | str = 8
    num_workers: int = 0


@dataclass
class ModelConfig:
    name: str = "deeplabv3plus_micro"
    pretrained: bool = False
    output_stride: int = 16
    weights_path: str | None = None
    checkpoint_backbone: bool = False
    channels_last: bool = False


@dataclass
class LossConfig:
    type: str = "pce_crf"  # pce | pce_crf | pce_nc | pce_kernelcut (nc + crf) | full
    # DenseCRF weight as a multiple of the paper's balance with pCE (2e-9 at 513 px crops, scale
    # 0.5, sigma_xy 100), which means the same at every crop size, scale factor and sigma_xy
    # (rloss/crf_weight.py derives it). 1.0 = the published setting; `rloss sweep-weight` chooses
    # one on a split held out from training.
    crf_relative_weight: float = 1.0
    crf_weight: float | None = None  # the absolute DenseCRFLoss weight; when set, it replaces the relative one
    # In the images' 0..255 units: one for every channel, or a list of one per channel (data.channels).
    sigma_rgb: float | list[float] = 15.0
    sigma_xy: float = 12.5
    scale_factor: float = 1.0
    # The normalized cut term (pce_nc, pce_kernelcut; rloss.losses.NormalizedCutLoss). NC is a ratio, so
    # its weight needs no normalisation across crop sizes or kernels (unlike DenseCRF's). 0.05 is a
    # starting point, not a published setting: at 64 px with 3 classes present, NC at weight 1 pushes
    # the logits 17-18x harder than DenseCRF at relative weight 1 (x K: 31-34x with 6, 93-109x with
    # 21), so 0.05 is about DenseCRF's strength. `rloss sweep-weight --key loss.nc_weight` chooses one.
    # Its bandwidths default to the DenseCRF's (then KernelCut filters once for both terms).
    nc_weight: float = 0.05
    nc_sigma_rgb: float | list[float] = 15.0
    nc_sigma_xy: float = 12.5  # pixels of the crop, like sigma_xy
    kernel: str = "auto"  # auto | exact | permutohedral (every regularizer's)
    backend: str = "auto"  # the lattice's: auto | extension | torch (portable)
    init_from: str | None = None  # checkpoint to start from (the paper's pCE-then-pCE+CRF schedule)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw (from scratch: the recipe) | sgd (the paper's, with momentum, from ImageNet weights)
    lr: float = 0.002
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0  # the decoder and ASPP learn this many times faster than the backbone (the paper: 10)
    # poly: (1 - t)^poly_power, the paper's; cosine: (1 + cos(pi t)) / 2, which spends more of the run at
    # a high rate and anneals within it, so a run of the same length ends closer to its plateau.
    lr_schedule: str = "cosine"
    poly_power: float = 0.9
    # The run's length: ``iterations`` (optimizer steps of one global batch), but at least
    # ``min_epochs`` passes over the training set; or ``epochs`` when iterations is null.
    iterations: int | None = 4000
    epochs: int | None = None
    min_epochs: float = 16.0
    # > 0: the run is evaluated and saved as the average of its weights over about this many
    # iterations (or epochs; rloss.engine.weight_average: steadier validation curves); 0 or null: the last iterate, as the paper.
    weight_average_iters: int | None = 125
    weight_average_epochs: float | None = None


@dataclass
class RunConfig:
    name: str = "default"
    results_dir: str = "results"
    seed: int = 0
    # Evaluate every this many iterations (or epochs when eval_every_iters is null), and at the end.
    eval_every_iters: int | None = 125
    eval_every_epochs: int | None = None
    checkpoint_every_iters: int = 100
    amp: str = "off"  # off | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch/OpenMP threads per process; null: torch's default, or the cores shared under torchrun
    compile: bool = False  # torch.compile the model (a GPU speed-up; slow to start)


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "rloss"
    mode: str = "offline"  # offline (nothing leaves the machine) | online
    # Also the training loop's read-back interval on a GPU: the losses (progress bar, the non-finite
    # check) and the step timings are read from the device every this many iterations.
    log_every_iters: int = 10
    num_images: int = 4  # validation examples logged per evaluation


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.results_dir) / self.run.name

    def absolute_crf_weight(self) -> float:
        """The absolute DenseCRF weight for this run's crops: ``loss.crf_weight`` when set,
        else ``loss.crf_relative_weight`` times the published balance at ``data.crop_size`` (and ``data.channels``)."""
        if self.loss.crf_weight is not None:
            return self.loss.crf_weight
        crop = self.data.crop_size
        return absolute_crf_weight(self.loss.crf_relative_weight, crop, crop, self.loss.sigma_xy, self.loss.scale_factor,
                                   channels=self.data.channels)

    def settings_used(self) -> dict:
        """The config as sections of key: value, without the settings this run never reads: a
        regularizer's settings when its loss has no such term, SGD's momentum under AdamW, the poly
        power under another decay. Two runs with the same settings used train the same."""
        unused = set()
        if self.loss.type not in CRF_LOSS_TYPES:
            unused |= {"crf_relative_weight", "crf_weight", "sigma_rgb", "sigma_xy"}
        if self.loss.type not in NC_LOSS_TYPES:
            unused |= {"nc_weight", "nc_sigma_rgb", "nc_sigma_xy"}
        if self.loss.type not in CRF_LOSS_TYPES + NC_LOSS_TYPES:
            unused |= {"scale_factor", "kernel", "backend"}
        out = self.to_dict()
        out["loss"] = {k: v for k, v in out["loss"].items() if k not in unused}
        if self.optim.name != "sgd":
            out["optim"].pop("momentum")
        if self.optim.lr_schedule != "poly":
            out["optim"].pop("poly_power")
        for section, by_iters, by_epochs in IN_ITERATIONS_OR_EPOCHS:  # the unit not in use
            if out[section][by_iters] is not None:
                out[section].pop(by_epochs)
        if self.optim.iterations is None:  # a length in epochs has no floor
            out["optim"].pop("min_epochs")
        return out

    def total_iterations(self, iters_per_epoch: int) -> int:
        """The run's length in optimizer steps, given the steps of one pass over its training set."""
        o = self.optim
        if o.iterations is None:
            return o.epochs * iters_per_epoch
        return max(o.iterations, math.ceil(o.min_epochs * iters_per_epoch))

    @property
    def averages_weights(self) -> bool:
        o = self.optim
        return bool(o.weight_average_iters if o.weight_average_iters is not None else o.weight_average_epochs)

    def validate(self) -> "TrainConfig":
        for section, values in self.to_dict().items():  # nan passes every comparison below: refused first
            for key, value in values.items():
                if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
                    raise ValueError(f"config: {section}.{key} must be a finite number, got {value}")
        _choice("loss.type", self.loss.type, LOSS_TYPES)
        _choice("run.amp", self.run.amp, AMP_MODES)
        _choice("optim.name", self.optim.name, OPTIMIZERS)
        _choice("optim.lr_schedule", self.optim.lr_schedule, LR_SCHEDULES)
        _choice("run.device", self.run.device, DEVICES)
        _choice("model.name", self.model.name, MODEL_NAMES)
        _choice("model.output_stride", self.model.output_stride, (8, 16))
        _choice("data.interpolation", self.data.interpolation, INTERPOLATIONS)
        _choice("loss.kernel", self.loss.kernel, KERNELS)
        _choice("loss.backend", self.loss.backend, BACKENDS)
        _choice("wandb.mode", self.wandb.mode, WANDB_MODES)
        if isinstance(self.data.batch_size, str) and self.data.batch_size != AUTO:
            raise ValueError(f"config: data.batch_size must be an integer or {AUTO!r}, got {self.data.batch_size!r}")
        for key, value in (
            ("data.crop_size", self.data.crop_size),
            ("data.channels", self.data.channels),
            *((("data.batch_size", self.data.batch_size),) if self.data.batch_size != AUTO else ()),
            ("run.checkpoint_every_iters", self.run.checkpoint_every_iters),
            ("wandb.log_every_iters", self.wandb.log_every_iters),
        ):
            if value < 1:
                raise ValueError(f"config: {key} must be >= 1, got {value}")
        for (section, by_iters, by_epochs), minimum in zip(IN_ITERATIONS_OR_EPOCHS, (1, 0, 1)):
            values = {key: getattr(getattr(self, section), key) for key in (by_iters, by_epochs)}
            for key, value in values.items():
                if value is not None and value < minimum:
                    raise ValueError(f"config: {section}.{key} must be >= {minimum} (or null), got {value}")
            if minimum and all(value is None for value in values.values()):
                raise ValueError(f"config: set {section}.{by_iters} or {section}.{by_epochs} (both are null)")
        if self.run.threads is not None and self.run.threads < 1:
            raise ValueError(f"config: run.threads must be >= 1 (or null), got {self.run.threads}")
        if self.wandb.num_images < 0:
            raise ValueError(f"config: wandb.num_images must be >= 0, got {self.wandb.num_images}")
        if self.data.num_workers < 0:
            raise ValueError(f"config: data.num_workers must be >= 0, got {self.data.num_workers}")
        if not 0 <= self.data.holdout_fraction < 1:
            raise ValueError(f"config: data.holdout_fraction must be in [0, 1), got {self.data.holdout_fraction}")
        lo_hi = self.data.scale_range
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"config: data.scale_range must be [lo, hi] with 0 < lo <= hi, got {lo_hi}")
        for key, value in (("loss.sigma_rgb", self.loss.sigma_rgb), ("loss.nc_sigma_rgb", self.loss.nc_sigma_rgb)):
            if isinstance(value, list) and len(value) != self.data.channels:
                raise ValueError(f"config: {key} must be one number or {self.data.channels} (one per channel, "
                                 f"data.channels), got {value}")
        for key, value in (
            ("optim.lr", self.optim.lr), ("optim.head_lr_mult", self.optim.head_lr_mult),
            *_each("loss.sigma_rgb", self.loss.sigma_rgb),
            ("loss.sigma_xy", self.loss.sigma_xy), ("loss.scale_factor", self.loss.scale_factor),
            *_each("loss.nc_sigma_rgb", self.loss.nc_sigma_rgb),
            ("loss.nc_sigma_xy", self.loss.nc_sigma_xy),
        ):
            if not value > 0:
                raise ValueError(f"config: {key} must be > 0, got {value}")
        for key, value in (
            ("optim.momentum", self.optim.momentum), ("optim.weight_decay", self.optim.weight_decay),
            ("optim.poly_power", self.optim.poly_power), ("optim.min_epochs", self.optim.min_epochs),
            ("loss.crf_relative_weight", self.loss.crf_relative_weight),
            ("loss.nc_weight", self.loss.nc_weight),
        ):
            if value < 0:
                raise ValueError(f"config: {key} must be >= 0, got {value}")
        if self.loss.scale_factor > 1:  # the losses run on a copy scaled by it: smaller, never larger
            raise ValueError(f"config: loss.scale_factor must be <= 1, got {self.loss.scale_factor}")
        if self.loss.crf_weight is not None and self.loss.crf_weight < 0:
            raise ValueError(f"config: loss.crf_weight must be >= 0 (or null), got {self.loss.crf_weight}")
        if not is_plain_name(self.run.name):
            raise ValueError(f"config: run.name must be a plain folder name, got {self.run.name!r}")
        return self


def is_plain_name(name) -> bool:
    """Whether ``name`` is one plain path component, a folder name that stays inside the folder it is
    joined to: a non-empty string without '/' or '\\', not '.' or '..' (so never absolute either).
    Run names become folders (``<results_dir>/<run.name>``, ``results/inference/<run name>``)."""
    return isinstance(name, str) and bool(name) and not any(sep in name for sep in "/\\") and name not in (".", "..")


def _choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"config: {key} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _each(key: str, value) -> list[tuple[str, object]]:
    """``(key, value)``, or for a list ``(key[i], item)`` per item: each named in its own error."""
    return [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]


def _coerce(key: str, hint, value):
    """``value`` checked against the type ``hint``; numbers in strings ("1e-3") become numbers."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # int | str: an integer if it is one, else the string
            try:
                return _coerce(key, option, value)
            except ValueError:
                pass
        return _coerce(key, inner[-1], value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config: {key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted off/on (run.amp) as a bool
            return "on" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    raise ValueError(f"config: {key} must be {getattr(hint, '__name__', hint)}, got {value!r}")


_SECTIONS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _section_hints(name: str) -> dict:
    cls = typing.get_type_hints(TrainConfig)[name]
    return typing.get_type_hints(cls)


def config_from_dict(values: dict | None, source: str = "<dict>", base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) updated with the nested ``values``; unknown keys raise."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if values is None:
        return cfg
    if not isinstance(values, dict):
        raise ValueError(f"config: {source} must hold a mapping of sections, got {type(values).__name__}")
    for section, entries in values.items():
        if section not in _SECTIONS:
            raise ValueError(f"config: unknown key {section!r} in {source} (sections: {', '.join(_SECTIONS)})")
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise ValueError(f"config: {section!r} in {source} must be a mapping, got {entries!r}")
        hints = _section_hints(section)
        target = getattr(cfg, section)
        for key, value in entries.items():
            if key not in hints:
                raise ValueError(
                    f"config: unknown key '{section}.{key}' in {source} (known: {', '.join(hints)})"
                )
            setattr(target, key, _coerce(f"{section}.{key}", hints[key], value))
        for pair_section, *pair in IN_ITERATIONS_OR_EPOCHS:  # the unit this source chose
            given = [key for key in pair if key in entries]
            if pair_section == section and len(given) == 1 and entries[given[0]] is not None:
                setattr(target, pair[1 - pair.index(given[0])], None)
        if section == "optim" and "min_epochs" not in entries and \
                any(entries.get(key) is not None for key in ("iterations", "epochs")):
            target.min_epochs = 0.0  # a length given without a floor is meant exactly
    return cfg


def parse_overrides(overrides) -> dict:
    """``["a.b=value", ...]`` as a nested dict; values parsed with ``yaml.safe_load``."""
    nested: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"config: --set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"config: --set key must be section.name, got {key!r}")
        section = nested.setdefault(parts[0], {})
        for pair_section, *pair in IN_ITERATIONS_OR_EPOCHS:  # a later --set of a pair's other unit replaces it
            if pair_section == parts[0] and parts[1] in pair:
                section.pop(pair[1 - pair.index(parts[1])], None)
        section[parts[1]] = yaml.safe_load(text) if text.strip() else None
    return nested


# The paper's recipe for DeepLabV3+ from ImageNet weights on VOC at 513 px (SGD with momentum, poly
# decay, the decoder at 10x the backbone's rate, 0.5-2 rescaling, the last iterate): what `recipe:
# paper` (params files) or `rloss train --recipe paper` sets over the defaults, which are the recipe
# validated on small images from scratch ("default").
RECIPES = {
    "default": {},
    "paper": {"data": {"scale_range": [0.5, 2.0]},
              "optim": {"name": "sgd", "lr": 0.007, "weight_decay": 5e-4, "head_lr_mult": 10.0,
                        "lr_schedule": "poly", "weight_average_iters": 0}},
}
# The two-phase schedule's fine-tuning (a regularized run starting from a finished pCE run) is this
# share of the pCE run's length: the built-in study's 2000 of 4000 iterations, where it levels off.
FINETUNE_SHARE = 0.5


def recipe_config(recipe: str = "default") -> TrainConfig:
    if recipe not in RECIPES:
        raise ValueError(f"config: unknown recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    return config_from_dict(RECIPES[recipe], f"the {recipe} recipe")


def fine_tuning(cfg: TrainConfig, iterations: int | None = None) -> TrainConfig:
    """``cfg`` with the two-phase fine-tuning's length: ``iterations`` exactly, else :data:`FINETUNE_SHARE`
    of ``cfg``'s own length (in its unit; in iterations, of its floor of epochs too)."""
    out = copy.deepcopy(cfg)
    o = out.optim
    if iterations:
        o.iterations, o.epochs, o.min_epochs = int(iterations), None, 0.0
    elif o.iterations:
        o.iterations = max(1, round(o.iterations * FINETUNE_SHARE))
        o.min_epochs = o.min_epochs * FINETUNE_SHARE
    else:
        o.epochs = max(1, round(o.epochs * FINETUNE_SHARE))
    return out


def load_config(path: str | os.PathLike | None = None, overrides=(), recipe: str = "default") -> TrainConfig:
    """The ``recipe``'s defaults, then the YAML file at ``path`` (if any), then the ``--set``
    overrides; validated."""
    cfg = recipe_config(recipe)
    if path is not None:
        text = Path(path).read_text()
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"config: {path}: not valid YAML ({exc})") from None
        cfg = config_from_dict(values, str(path), cfg)
    cfg = config_from_dict(parse_overrides(overrides), "--set", cfg)
    try:
        return cfg.validate()
    except ValueError as exc:
        where = f" (from {path} and --set)" if path is not None else ""
        raise ValueError(f"{exc}{where}") from None
