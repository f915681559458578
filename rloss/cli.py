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
        print("CUDA sources compile (sm_80, sm_90)")
        return 0
    print(f"lattice extension: {_extension.extension_status()}")
    return 0 if _extension.extension_status().startswith("ok") else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_crf

    bench_crf(repeats=args.repeats, threads=args.threads, crossover=args.crossover, json_path=args.json, device=args.device)
    return 0


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

    bench = commands.add_parser("bench", help="benchmarks (speed and memory)")
    what = bench.add_subparsers(dest="benchmark", title="benchmarks")
    what.required = True
    crf = what.add_parser("crf", help="DenseCRF loss forward+backward per kernel")
    crf.add_argument("--repeats", type=int, default=10, help="timed repeats per case (median reported)")
    crf.add_argument("--threads", type=int, help="torch/OpenMP threads (default: torch's)")
    crf.add_argument("--crossover", action="store_true", help="small sizes, to place auto's exact/lattice switch")
    crf.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the GPU set, timed with CUDA events")
    crf.add_argument("--json", help="also write the results to this JSON file")
    crf.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
