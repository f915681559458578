"""What a run's numbers depend on besides its config: the code, the thread count, the versions and
the machine. ``train`` records it in each run's metrics.json; ``rloss reproduce`` prints it beside
any difference it finds.

A CPU run's arithmetic is fixed by its config, the code, torch's version, its thread count (the
order of a reduction's partial sums follows the threads that share it) and the CPU's vector unit
(torch and oneDNN pick their kernels by it: AVX2 and AVX-512 round differently). Anything else —
the load, the core count, how many runs share the machine — must not change a number.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def source_commit(root: Path = _SOURCE_ROOT) -> dict:
    """The git commit of the checkout the package runs from and whether its tracked files differ
    from it (``dirty``); both None where the package is not in a git checkout (an installed wheel)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if changed is None else bool(changed)}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device) -> dict:
    """The facts a run's numbers depend on, for its metrics.json (see the module's docstring)."""
    return {
        **source_commit(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
    }
