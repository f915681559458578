"""Builds the C++ (and, where CUDA is present, CUDA) lattice extension on first use.

The build is cached by torch in ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) under a name that hashes the sources and flags,
so a changed source never loads a stale binary. Torch before 2.14 guarded
builds with a lock *file* (FileBaton): a build killed midway left it behind and
every later build waited on it forever. With such a torch we serialise builds
with our own ``flock`` and remove a lock file nobody can hold; torch 2.14 uses
an advisory lock the kernel releases, so nothing is needed there.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sys
import sysconfig
import threading
from pathlib import Path

import torch

CSRC = Path(__file__).resolve().parent / "csrc"
CPU_SOURCES = ("ops.cpp", "permutohedral_cpu.cpp")
CUDA_SOURCES = ("permutohedral_cuda.cu",)
HEADERS = ("op_checks.h", "permutohedral_math.h")

# -fopenmp must reach the linker too: the original rloss build failed without it.
CPU_FLAGS = ["-O3", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]


class ExtensionUnavailable(RuntimeError):
    """The lattice extension could not be built or loaded; the message says why."""


_lock = threading.Lock()
_loaded: bool | None = None
_error: str | None = None


def cuda_toolkit_home() -> str | None:
    """The CUDA toolkit used for builds (CUDA_HOME, else /usr/local/cuda if it has nvcc)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home is None and Path("/usr/local/cuda/bin/nvcc").exists():
        home = "/usr/local/cuda"
    return home


def cuda_include_paths() -> list[str]:
    """Extra include folders ATen's CUDA headers need with pip-installed CUDA (cusparse.h)."""
    site = Path(sysconfig.get_paths()["purelib"])
    return [str(p) for p in sorted(site.glob("nvidia/cu*/include")) if p.is_dir()]


def cuda_flags() -> list[str]:
    return ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]


def build_with_cuda() -> bool:
    """CUDA sources are compiled where a toolkit and a GPU are present, or where
    RLOSS_FORCE_CUDA=1 asks for it (a Docker build has no GPU; set
    TORCH_CUDA_ARCH_LIST then, e.g. "8.0;9.0")."""
    wanted = torch.cuda.is_available() or os.environ.get("RLOSS_FORCE_CUDA") == "1"
    return wanted and cuda_toolkit_home() is not None and all((CSRC / s).exists() for s in CUDA_SOURCES)


def nvcc_compile_command(source: Path, output: Path, archs: tuple[str, ...] = ("80", "90")) -> list[str]:
    """An nvcc command that compiles one CUDA source of the extension to an object
    file, with torch's flags: a check that needs no GPU (used by the tests)."""
    cpp_extension = _cpp_extension()
    toolkit = cuda_toolkit_home()
    if toolkit is None:
        raise ExtensionUnavailable("no CUDA toolkit: set CUDA_HOME or install nvcc in /usr/local/cuda")
    includes = [*cpp_extension.include_paths(device_type="cuda"), *cuda_include_paths(), str(CSRC)]
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    command = [str(Path(toolkit) / "bin" / "nvcc"), "-c", str(source), "-o", str(output), *cuda_flags(), "-DWITH_CUDA"]
    command += ["-Xcompiler", "-fPIC", "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=rloss_nvcc_check"]
    command += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Werror", "all-warnings"]
    for arch in archs:
        command += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    return command + [f"-I{path}" for path in includes]


def _cpp_extension():
    """torch.utils.cpp_extension, imported with CUDA_HOME set to our toolkit (else
    torch guesses from PATH) and without its warning that a toolkit but no GPU
    was found: the normal case for CPU builds and nvcc checks."""
    toolkit = cuda_toolkit_home()
    if toolkit is not None:
        os.environ.setdefault("CUDA_HOME", toolkit)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def _build_name(with_cuda: bool) -> str:
    digest = hashlib.sha256()
    for name in CPU_SOURCES + HEADERS + (CUDA_SOURCES if with_cuda else ()):
        digest.update((CSRC / name).read_bytes())
    digest.update(repr((CPU_FLAGS, LINK_FLAGS, cuda_flags() if with_cuda else None, torch.__version__)).encode())
    return f"rloss_lattice_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:12]}"


def _extensions_root() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root) if root else Path.home() / ".cache" / "torch_extensions"


def _build_and_load() -> None:
    cpp_extension = _cpp_extension()
    with_cuda = build_with_cuda()
    name = _build_name(with_cuda)
    build_dir = _extensions_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    sources = [str(CSRC / s) for s in CPU_SOURCES]
    kwargs = dict(with_cuda=False)
    if with_cuda:
        sources += [str(CSRC / s) for s in CUDA_SOURCES]
        kwargs = dict(
            with_cuda=True, extra_cuda_cflags=cuda_flags() + ["-DWITH_CUDA"], extra_include_paths=cuda_include_paths()
        )

    with open(build_dir.parent / f"{name}.rloss-build-lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder at a time, across processes
        stale = build_dir / "lock"
        if "FileBaton" in vars(cpp_extension) and stale.exists():  # nobody can hold it now
            print(f"rloss: removing stale build lock {stale}", file=sys.stderr)
            stale.unlink()
        if not any(build_dir.glob(f"{name}*.so")):
            print(f"rloss: building the lattice extension {name} (first use, about a minute)...", file=sys.stderr)
        cpp_extension.load(
            name=name,
            sources=sources,
            extra_cflags=CPU_FLAGS + (["-DWITH_CUDA"] if with_cuda else []),
            extra_ldflags=LINK_FLAGS,
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=os.environ.get("RLOSS_VERBOSE_BUILD") == "1",
            **kwargs,
        )


def _one_line(exc: BaseException) -> str:
    """The compiler's first error line (or the exception's first line), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    compiler_errors = [line for line in lines if "error:" in line.lower()]
    text = compiler_errors[0] if compiler_errors else lines[0] if lines else type(exc).__name__
    text = re.sub(r"\S*/", "", text)[:300]  # drop folders: the file name is enough
    return f"{type(exc).__name__}: {text} (set RLOSS_VERBOSE_BUILD=1 for the full build log)"


def load_extension() -> None:
    """Builds (once per process, cached on disk) and loads the extension.

    Raises ExtensionUnavailable with a one-line reason when it cannot be built.
    """
    global _loaded, _error
    with _lock:
        if _loaded is None:
            try:
                _build_and_load()
                _loaded = True
            except Exception as exc:  # compiler missing, build error, bad toolchain...
                _loaded, _error = False, _one_line(exc)
    if not _loaded:
        raise ExtensionUnavailable(f"the permutohedral lattice extension is unavailable: {_error}")


def require_lattice(device: torch.device | str) -> None:
    """Raises ExtensionUnavailable unless the lattice runs on ``device``."""
    load_extension()
    if torch.device(device).type == "cuda" and not build_with_cuda():
        raise ExtensionUnavailable(
            "the lattice extension was built without CUDA (no CUDA toolkit found: set CUDA_HOME)"
        )


def extension_status() -> str:
    """'ok (cpu)' / 'ok (cpu+cuda)' or the reason the extension cannot be used."""
    try:
        load_extension()
    except ExtensionUnavailable as exc:
        return str(exc)
    return "ok (cpu+cuda)" if build_with_cuda() else "ok (cpu)"
