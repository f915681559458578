"""Command line: ``python -m rloss <command>``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_env(args: argparse.Namespace) -> int:
    """Prints versions and whether the lattice extension builds."""
    import platform

    import torch

    from . import __version__
    from .filtering import extension_status

    print(f"rloss {__version__}, Python {platform.python_version()}, torch {torch.__version__}")
    try:
        import torchvision

        print(f"torchvision {torchvision.__version__}")
    except Exception as exc:  # a broken torchvision install fails here, not deep in a run
        print(f"torchvision: unavailable ({type(exc).__name__}: {exc})")
    print(f"CUDA available: {torch.cuda.is_available()}" + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    print(f"CPU threads: {torch.get_num_threads()}")
    status = extension_status()
    print(f"lattice extension: {status}")
    return 0 if status.startswith("ok") else 1


def _cmd_build(args: argparse.Namespace) -> int:
    """Builds the extension now rather than on first use; or only compiles the CUDA sources."""
    from .filtering import _extension

    if args.nvcc_check:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            for source in _extension.CUDA_SOURCES:
                command = _extension.nvcc_compile_command(_extension.CSRC / source, Path(tmp) / "check.o")
                print(f"nvcc {source} ...", flush=True)
                if subprocess.run(command).returncode != 0:
                    print(f"build: nvcc failed on {source}", file=sys.stderr)
                    return 1
        print("CUDA sources compile (sm_80, sm_90, PTX for compute_90)")
        return 0
    status = _extension.extension_status()
    print(f"lattice extension: {status}")
    return 0 if status.startswith("ok") and "CUDA:" not in status else 1  # a requested CUDA part must build too


RECIPE_HELP = ("the defaults under the config file: default (the recipe validated on small images from scratch) "
               "or paper (SGD, poly decay, 0.5-2 rescaling: the paper's, from ImageNet weights)")


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.config import load_config
    from .engine.train import train

    from .engine.termination import exit_code, reason

    config = load_config(args.config, args.set or (), recipe=args.recipe)
    try:
        final = train(config, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt as exc:
        print(f"rloss train: {reason(exc)}; its last checkpoint is kept: --resume with the same settings continues "
              f"{config.run_dir}", file=sys.stderr)
        return exit_code(exc)
    print(f"{config.run.name}: mIoU {final['miou']:.4f} after {final['iteration']} iterations; results in {config.run_dir}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _parallel_runs(text: str) -> int | str:
    """``--parallel-runs``: ``auto`` or a whole number (checked by ``run_pool.resolve_processes``)."""
    return text if text == "auto" else int(text) if text.isdigit() else text


def _cmd_sweep_weight(args: argparse.Namespace) -> int:
    from .engine.config import load_config
    from .engine.sweep import sweep_crf_weight, sweep_path, two_phase_base

    base = load_config(args.config, args.set or (), recipe=args.recipe)
    if args.finetune_iterations is not None and not args.two_phase:
        raise ValueError("sweep-weight: --finetune-iterations needs --two-phase")
    if args.two_phase:
        base = two_phase_base(base, args.name, args.finetune_iterations, holdout_fraction=args.holdout, rerun=args.rerun)
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    extra = {"weights": weights} if weights else {}
    budget = args.time_budget * 60 if args.time_budget else None
    result = sweep_crf_weight(base, args.name, holdout_fraction=args.holdout, rerun=args.rerun, time_budget_s=budget,
                              parallel_runs=args.parallel_runs, **extra, **({"key": args.key} if args.key else {}))
    try:  # the plot is the study layer's (matplotlib comes with its extra); the result is written already
        from .study.plots import save_sweep_plot

        save_sweep_plot(result, base.run.results_dir)
    except ImportError:
        print(f"sweep {args.name}: no plot (matplotlib is missing: pip install 'rloss[study]'); "
              f"the result is in {sweep_path(base.run.results_dir, args.name)}", file=sys.stderr)
    if result["key"] == "loss.crf_relative_weight":
        absolute = f" (absolute {result['best_absolute']:.3g})" if result["best_absolute"] is not None else ""
        print(f"chosen relative DenseCRF weight: {result['best']:g}{absolute}; "
              f"use loss.crf_relative_weight={result['best']:g}")
    else:
        print(f"chosen {result['key']}: {result['best']:g}; use {result['key']}={result['best']:g}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .study.runner import run_study  # the study layer, imported only for this command

    return run_study(args.params, only=args.only, rerun=args.rerun, overrides=args.set or [], output_dir=args.output,
                     parallel_runs=args.parallel_runs)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .study.reproduce import report_comparison, reproduce  # the study layer, imported only for this command

    if args.compare:
        return report_comparison(args.recorded, args.compare)
    return reproduce(args.recorded, args.params, out=args.out, parallel_runs=args.parallel_runs,
                     overrides=args.set or [], only=args.only)


def _cmd_record_study(args: argparse.Namespace) -> int:
    from .study.reproduce import record_study

    dest = record_study(args.results, args.out)
    print(f"recorded the study of {args.results} in {dest} (runs/<run>/config.yaml and metrics.json, tables, figures)")
    return 0


def _add_infer_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``infer`` options; also sets ``run=_cmd_infer`` as the parser's default."""
    from .engine.infer import INFER_INTERPOLATIONS

    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt written by `rloss train`")
    parser.add_argument("--input", required=True, help="an image, or a folder searched recursively for .jpg/.jpeg/.png")
    parser.add_argument("--output", help="output folder (default: results/inference/<the checkpoint's run name>)")
    parser.add_argument("--interpolation", choices=INFER_INTERPOLATIONS, default="auto",
                        help="input and logit upsampling; auto: bicubic below 128 px on a side, else bilinear")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (same-size images batch)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--save-probs", action="store_true", help="also write <stem>_probs.npy (float16 [K, H, W])")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip those images)")
    parser.set_defaults(run=_cmd_infer)
    return parser


def _cmd_infer(args: argparse.Namespace) -> int:
    from .engine.infer import default_output_dir, infer_path, load_predictor

    predictor = load_predictor(args.checkpoint, args.device)
    output = Path(args.output) if args.output else default_output_dir(predictor)  # the run name checked
    s = infer_path(predictor, args.input, output, interpolation=args.interpolation, batch_size=args.batch_size,
                   save_probs=args.save_probs, overwrite=args.overwrite)
    rate = f"{s['images_per_s']:.1f} images/s" if s["images_per_s"] else "no images processed"
    print(f"infer: {s['written']} of {s['images']} images written ({s['skipped_existing']} already there, "
          f"{s['unreadable']} unreadable), {rate}; results in {output}")
    return 1 if s["unreadable"] and not s["written"] and not s["skipped_existing"] else 0


def _cmd_wandb_login(args: argparse.Namespace) -> int:
    from .engine.credentials import cmd_wandb_login

    return cmd_wandb_login(args)


def _developer_tool(name: str):
    """``tools/<name>.py`` of the checkout this package runs from: the GPU check and the benchmark harness are
    developer tools beside the package, not part of it; ``python -m rloss gpu-check|bench`` reaches them."""
    import importlib

    from .engine.errors import TrainingError

    checkout = Path(__file__).resolve().parents[1]
    if not (checkout / "tools" / f"{name}.py").is_file():
        raise TrainingError(f"tools/{name}.py is not beside this rloss ({checkout}): the GPU check and the benchmarks "
                            "run from a checkout of the repository (pip install -e .)")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    return importlib.import_module(f"tools.{name}")


def _cmd_bench(args: argparse.Namespace) -> int:
    return _developer_tool("bench").run_command(args)


def _cmd_gpu_check(args: argparse.Namespace) -> int:
    return _developer_tool("gpu_check").run_command(args)


def _print_summary(summary: dict) -> None:
    import json

    print(json.dumps(summary, indent=1, default=str))


def _cmd_data_synthetic(args: argparse.Namespace) -> int:
    from .data.synthetic import generate_synthetic

    _print_summary(generate_synthetic(Path(args.out), size=args.size, n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                                      low_contrast=args.low_contrast, overwrite=args.overwrite, channels=args.channels))
    return 0


def _cmd_data_voc(args: argparse.Namespace) -> int:
    from .data.voc import prepare_voc

    summary = prepare_voc(
        Path(args.root), download=not args.no_download, scribbles=args.scribbles,
        stroke_width=args.stroke_width, skip_bad=args.skip_bad,
    )
    _print_summary(summary)
    return 0


def _cmd_data_downscale(args: argparse.Namespace) -> int:
    from .data.downscale import downscale_dataset

    summary = downscale_dataset(
        args.src, args.out, size=args.size, image_filter=args.filter, mask_mode=args.mask, skip_bad=args.skip_bad,
        overwrite=args.overwrite,
    )
    _print_summary(summary)
    return 0


def _cmd_data_scribbles(args: argparse.Namespace) -> int:
    from .data.scribble_sim import simulate_dataset

    _print_summary(simulate_dataset(args.root, seed=args.seed, width=args.width, overwrite=args.overwrite))
    return 0


def _cmd_data_draw(args: argparse.Namespace) -> int:
    from .study.scribble_widget import serve

    return serve(args.root, images=args.images, classes=args.classes, split=args.split, port=args.port,
                 open_browser=not args.no_browser)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data.folder import SegmentationFolder

    data = SegmentationFolder(args.root, args.split, skip_bad=args.skip_bad, channels=args.channels)
    _print_summary({**data.check(), **data.image_facts, "classes": data.class_names})
    return 0


def _add_data_commands(commands) -> None:
    overwrite_help = ("replace the data set in --out (its images, masks, scribbles, lists, classes.txt and "
                      "synthetic.json are removed first; other files are kept); without it a folder that is not "
                      "empty is refused")
    data = commands.add_parser("data", help="prepare data sets (VOC + ScribbleSup, synthetic, low resolution)")
    kinds = data.add_subparsers(dest="data_command", title="data commands")
    kinds.required = True

    synthetic = kinds.add_parser("synthetic", help="write the built-in synthetic scribble data set")
    synthetic.add_argument("--out", required=True, help="output folder (VOC layout)")
    synthetic.add_argument("--size", type=int, default=64, help="image side in pixels (40, 64, ..., 513)")
    synthetic.add_argument("--n-train", type=int, default=200)
    synthetic.add_argument("--n-val", type=int, default=50)
    synthetic.add_argument("--seed", type=int, default=0)
    from .data.synthetic import LOW_CONTRAST_P

    synthetic.add_argument("--low-contrast", type=float, default=LOW_CONTRAST_P, metavar="SHARE",
                           help="share of objects coloured close to their background, 0..1: the higher, the less "
                                f"colour tells the classes apart (default {LOW_CONTRAST_P})")
    synthetic.add_argument("--channels", type=int, choices=(1, 3), default=3,
                           help="3: RGB images (default); 1: 8-bit greyscale, each class its own grey level")
    synthetic.add_argument("--overwrite", action="store_true", help=overwrite_help)
    synthetic.set_defaults(run=_cmd_data_synthetic)

    voc = kinds.add_parser("voc", help="download (or verify) and prepare PASCAL VOC 2012 + SBD + ScribbleSup")
    voc.add_argument("--root", required=True, help="data folder; archives already in ROOT/downloads are only verified")
    voc.add_argument("--no-download", action="store_true", help="only verify and extract archives already there")
    voc.add_argument("--scribbles", choices=("png", "xml"), default="png", help="published PNGs or the original XML files")
    voc.add_argument("--stroke-width", type=int, default=3, help="stroke width when drawing XML scribbles")
    voc.add_argument("--skip-bad", action="store_true", help="skip and count bad files instead of stopping")
    voc.set_defaults(run=_cmd_data_voc)

    downscale = kinds.add_parser("downscale", help="a low-resolution copy of a data set (e.g. 40 px)")
    downscale.add_argument("--src", required=True)
    downscale.add_argument("--out", required=True)
    downscale.add_argument("--size", type=int, default=40, help="shorter side in pixels")
    downscale.add_argument("--filter", choices=("area", "bicubic", "bilinear"), default="area", help="image filter")
    downscale.add_argument("--mask", choices=("nearest", "majority"), default="majority", help="full-mask rule")
    downscale.add_argument("--skip-bad", action="store_true", help="skip and count bad samples instead of stopping")
    downscale.add_argument("--overwrite", action="store_true", help=overwrite_help)
    downscale.set_defaults(run=_cmd_data_downscale)

    scribbles = kinds.add_parser("scribbles", help="simulate scribbles from the full masks of a data set")
    scribbles.add_argument("--root", required=True, help="data set in the VOC layout with SegmentationClassAug/ masks")
    scribbles.add_argument("--from-masks", action="store_true", required=True,
                           help="simulate them from the full masks (the built-in set's protocol: rloss/data/scribble_sim.py)")
    scribbles.add_argument("--width", type=_positive_int, help="stroke width in pixels (default: 1.2%% of the shorter side)")
    scribbles.add_argument("--seed", type=int, default=0, help="each image's strokes follow from the seed and its id")
    scribbles.add_argument("--overwrite", action="store_true", help="replace scribbles already in pascal_2012_scribble/")
    scribbles.set_defaults(run=_cmd_data_scribbles)

    draw = kinds.add_parser("draw", help="draw scribbles on a folder of images in the browser (Voilà; "
                                         "notebooks/draw_scribbles.ipynb), saved as you draw")
    draw.add_argument("--root", required=True, help="the data set that gets the scribbles (VOC layout; created where missing)")
    draw.add_argument("--images", help="a folder of plain images to walk (default: ROOT/JPEGImages); each scribbled "
                                       "image is copied to ROOT/JPEGImages")
    draw.add_argument("--classes", nargs="+", metavar="NAME",
                      help="class names, class 0 (the background) first (default: ROOT/classes.txt, else VOC's 21); "
                           "names beyond those of ROOT/classes.txt are added to it")
    draw.add_argument("--split", default="train", help="the id list each scribbled image joins")
    draw.add_argument("--port", type=_positive_int, help="Voilà's port on localhost (default: Voilà's, 8866)")
    draw.add_argument("--no-browser", action="store_true", help="do not open a browser (e.g. on a remote machine)")
    draw.set_defaults(run=_cmd_data_draw)

    check = kinds.add_parser("check", help="read every sample of a split and report problems")
    check.add_argument("--root", required=True)
    check.add_argument("--split", default="train")
    check.add_argument("--skip-bad", action="store_true", help="count bad samples instead of stopping at the first")
    check.add_argument("--channels", type=_positive_int, default=3,
                       help="the band count every image must have, as data.channels in a training config (default 3: "
                            "any PNG/JPEG read as RGB); the report gives the band counts, bit depths and range found")
    check.set_defaults(run=_cmd_data_check)


def _add_training_commands(commands) -> None:
    """train and sweep-weight."""
    from .engine.config import RECIPES

    train = commands.add_parser("train", help="train a segmenter (pCE, pCE + DenseCRF, normalized cut or KernelCut, or full supervision)")
    train.add_argument("--config", help="YAML file (see rloss/engine/config.py for the keys and defaults)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. loss.type=pce_crf")
    train.add_argument("--resume", action="store_true", help="continue from results/<run.name>/checkpoint.pt "
                                                             "(refused when a setting of the run differs)")
    train.add_argument("--overwrite", action="store_true", help="replace the run already in results/<run.name> "
                                                                "(default: refuse)")
    train.add_argument("--recipe", choices=tuple(RECIPES), default="default", help=RECIPE_HELP)
    train.set_defaults(run=_cmd_train)

    sweep = commands.add_parser("sweep-weight", help="choose a regularizer's weight on a share of train held out (never val)")
    sweep.add_argument("--config", help="YAML training config (the schedule every weight is trained with)")
    sweep.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. data.root=data/mine")
    sweep.add_argument("--recipe", choices=tuple(RECIPES), default="default", help=RECIPE_HELP)
    sweep.add_argument("--name", required=True, help="runs are NAME_sweep_w<weight> (NAME_sweep_nc_w<weight> for "
                                                     "loss.nc_weight); result: RESULTS/NAME_weight_sweep.json")
    sweep.add_argument("--weights", help="weights, comma-separated (default: 0,0.25,1,4,16 for DenseCRF, "
                                         "0,0.0125,0.05,0.2,0.8 for normalized cut; 0 = without the term)")
    sweep.add_argument("--key",
                       help="the weight swept: loss.crf_relative_weight (DenseCRF, relative to the published balance; "
                            "the default) or loss.nc_weight (normalized cut)")
    sweep.add_argument("--holdout", type=float, default=0.2, help="share of the train split held out to score on")
    sweep.add_argument("--time-budget", type=float, metavar="MIN", help="start no run that would end after this")
    sweep.add_argument("--two-phase", action="store_true",
                       help="the paper's schedule: train pCE on the kept share first, then fine-tune it once per weight")
    sweep.add_argument("--finetune-iterations", type=int, metavar="N",
                       help="with --two-phase: iterations of each fine-tuning (default: half the config's length)")
    sweep.add_argument("--rerun", action="store_true", help="train finished runs again")
    sweep.add_argument("--parallel-runs", default="auto", type=_parallel_runs, metavar="N",
                       help="runs trained at once, one process each (default auto: one per CPU core as memory "
                            "allows, one on a GPU)")
    sweep.set_defaults(run=_cmd_sweep_weight)


def _add_study_commands(commands) -> None:
    """study, reproduce and record-study: the study layer, imported only when one of them runs."""
    study = commands.add_parser("study", help="run the study's notebooks in order with papermill")
    study.add_argument("--params", default="params/default.yaml", help="parameter file (sections per notebook)")
    study.add_argument("--only", nargs="+", metavar="NN", help="only these notebooks (by number or name prefix)")
    study.add_argument("--rerun", action="store_true", help="train finished runs again (default: skip them)")
    study.add_argument("--set", action="append", metavar="NOTEBOOK.KEY=VALUE",
                       help="override one parameter (VALUE as YAML; section 'common' too); repeatable")
    study.add_argument("--output", help="folder for the executed notebooks (default: results/notebooks-<parameter "
                                        "file name>, so another parameter file's study keeps its own)")
    study.add_argument("--parallel-runs", type=_parallel_runs, metavar="N",
                       help="runs trained at once in every training notebook (auto or a number; changes the "
                            "time, never a number; default: the parameter file's)")
    study.set_defaults(run=_cmd_study)

    reproduce = commands.add_parser("reproduce", help="run the study into a fresh folder and compare it, run by run, "
                                                      "with a recorded one")
    reproduce.add_argument("--recorded", required=True, metavar="DIR",
                           help="the recorded study (benchmarks/results/study-...: runs/<run>/metrics.json)")
    reproduce.add_argument("--params", default="params/default.yaml", help="the study's parameter file")
    reproduce.add_argument("--out", metavar="DIR", help="the fresh folder for the new study, its data included "
                                                        "(default: results/reproduce-<date>-<time>)")
    reproduce.add_argument("--parallel-runs", type=_parallel_runs, metavar="N",
                           help="runs trained at once (default: the parameter file's)")
    reproduce.add_argument("--set", action="append", metavar="NOTEBOOK.KEY=VALUE", help="as for study; repeatable")
    reproduce.add_argument("--only", nargs="+", metavar="NN", help="only these notebooks, as for study")
    reproduce.add_argument("--compare", metavar="RESULTS",
                           help="only compare this finished study's results folder with the recorded one")
    reproduce.set_defaults(run=_cmd_reproduce)

    record = commands.add_parser("record-study", help="copy a finished study's runs (configs, metrics), tables and "
                                                      "figures into a new folder, for reproduce")
    record.add_argument("--results", default="results", help="the study's results folder")
    record.add_argument("--out", required=True, metavar="DIR", help="the new folder (must not exist)")
    record.set_defaults(run=_cmd_record_study)


def _add_tool_commands(commands) -> None:
    """The developer tools of tools/ (a checkout): the GPU check and the benchmark harness."""
    gpu = commands.add_parser("gpu-check", help="prove the GPU path in minutes: environment, extension, tests, "
                                                "benchmarks, a training step, kill and resume (OUT/gpu_check.json)")
    gpu.add_argument("--out", default="results/gpu_check", help="folder for gpu_check.json and gpu_check.log (new)")
    gpu.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny sizes (no GPU needed)")
    gpu.add_argument("--only", nargs="+", metavar="STEP", help="only these steps (their names: gpu_check.json, tools/gpu_check.py)")
    gpu.set_defaults(run=_cmd_gpu_check)

    bench = commands.add_parser("bench", help="benchmarks (speed and memory)")
    what = bench.add_subparsers(dest="benchmark", title="benchmarks")
    what.required = True
    crf = what.add_parser("crf", help="DenseCRF loss forward+backward per kernel")
    crf.add_argument("--repeats", type=int, default=10, help="timed repeats per case (median reported)")
    crf.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    crf.add_argument("--crossover", action="store_true", help="small sizes: the exact kernel vs the lattice")
    crf.add_argument("--check-cost", action="store_true", help="the cost of the loss's input checks (CPU, side by side)")
    crf.add_argument("--losses", action="store_true",
                     help="normalized cut and KernelCut beside DenseCRF, side by side, as users get them")
    crf.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the GPU set, timed with CUDA events")
    crf.add_argument("--checks", action="store_true",
                     help="with the loss's default input checks, as users get it (default: off, the filter's own speed)")
    crf.add_argument("--channels", type=int, nargs="+", metavar="C",
                     help="the lattice on images of these channel counts side by side (1 = grayscale, 3 = RGB, 4 = bands)")
    crf.add_argument("--json", help="also write the results to this JSON file")
    crf.set_defaults(run=_cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rloss",
        description="Weakly-supervised segmentation from scribbles with regularized losses.",
    )
    commands = parser.add_subparsers(dest="command", title="commands")
    commands.required = True

    env = commands.add_parser("env", help="check the environment and build the lattice extension")
    env.set_defaults(run=_cmd_env)

    build = commands.add_parser("build", help="build the lattice extension now (it also builds on first use)")
    build.add_argument("--nvcc-check", action="store_true", help="only compile the CUDA sources with nvcc (no GPU needed)")
    build.set_defaults(run=_cmd_build)

    _add_data_commands(commands)

    _add_training_commands(commands)
    _add_study_commands(commands)

    _add_infer_arguments(commands.add_parser("infer", help="segment an image or a folder with a trained checkpoint"))

    _add_tool_commands(commands)

    login = commands.add_parser("wandb-login", help="store your W&B API key (asked without echo) in ~/.netrc, mode 0600")
    login.add_argument("--host", default="api.wandb.ai", help="W&B server host (default: the W&B cloud)")
    login.set_defaults(run=_cmd_wandb_login)

    return parser


def main(argv: list[str] | None = None) -> int:
    from .data.io import DataError
    from .engine.errors import TrainingError, one_line
    from .engine.termination import exit_code, reason, stop_like_ctrl_c

    args = build_parser().parse_args(argv)
    try:
        with stop_like_ctrl_c():  # SIGTERM and SIGHUP end the command as Ctrl-C does
            return args.run(args)
    # Bad input or settings, and files or folders that cannot be read or written (a file where
    # a folder should be, no permission): one line, no traceback.
    except (DataError, ValueError, OSError, TrainingError) as exc:
        print(f"rloss {args.command}: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"rloss {args.command}: {reason(exc)}", file=sys.stderr)
        return exit_code(exc)
