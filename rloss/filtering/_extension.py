"""Builds the C++ (and, where CUDA is present, CUDA) lattice extension on first use.

Two shared libraries, built and loaded separately: the CPU part (it declares the
ops) and the CUDA part. A failed nvcc step, a missing libcudart or a GPU the
build has no code for (found by a tiny launch at load) makes only the CUDA part
unavailable, with a one-line reason; the C++ lattice keeps working.
``RLOSS_EXTENSION=off`` means: never build or load either part.

The build is cached by torch in ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) under a name that hashes the sources and flags,
so a changed source never loads a stale binary. Torch before 2.14 guarded
builds with a lock *file* (FileBaton): a build killed midway left it behind and
every later build waited on it forever. With such a torch we serialise builds
with our own ``flock`` and remove a lock file nobody can hold; torch 2.14 uses
an advisory lock the kernel releases, so nothing is needed there.

A cached library that cannot be loaded (truncated or overwritten: ninja sees it
as up to date and never relinks it) is removed with its build folder and built
again, once per process and part, with one line on stderr; ``python -m rloss
build`` does the same. A truncated library is found by reading its ELF headers
before loading it: loading it would kill the process with SIGBUS.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import struct
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
# Per part ("cpu", "cuda"): True once loaded, else the one-line reason it is unavailable.
_state: dict[str, bool | str] = {}

# Architectures of a CUDA build when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible
# (A100, H100/H200); PTX for the newest is added so that newer GPUs can JIT-compile it.
DEFAULT_CUDA_ARCHS = ("8.0", "9.0")


def extension_disabled() -> bool:
    """RLOSS_EXTENSION=off: never build or load the extension (no compiler; tests)."""
    return os.environ.get("RLOSS_EXTENSION", "").strip().lower() in ("off", "0", "false", "no")


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


def cuda_archs() -> list[str]:
    """Compute capabilities to build for: TORCH_CUDA_ARCH_LIST (e.g. "8.0;9.0"), else the
    visible GPUs', else DEFAULT_CUDA_ARCHS."""
    listed = os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(",", ";").replace(" ", ";")
    tokens = [t.replace("+PTX", "") for t in listed.split(";") if t and t != "native"]
    if tokens:
        bad = [t for t in tokens if not re.fullmatch(r"\d+\.\d+a?", t)]
        if bad:
            raise ExtensionUnavailable(f"TORCH_CUDA_ARCH_LIST: use compute capabilities like 8.0;9.0, got {bad[0]!r}")
        return sorted(set(tokens), key=lambda t: float(t.rstrip("a")))
    if torch.cuda.is_available():
        found = {"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}
        return sorted(found, key=float)
    return list(DEFAULT_CUDA_ARCHS)


def cuda_arch_flags(archs: list[str]) -> list[str]:
    """Machine code for each architecture, plus PTX for the newest (run on newer GPUs by the
    driver's JIT). Passing these keeps torch from adding its own."""
    numbers = [a.replace(".", "") for a in archs]
    flags = [f"-gencode=arch=compute_{n},code=sm_{n}" for n in numbers]
    return flags + [f"-gencode=arch=compute_{numbers[-1]},code=compute_{numbers[-1]}"]


def cuda_flags() -> list[str]:
    return ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]


def build_with_cuda() -> bool:
    """CUDA sources are compiled where a toolkit and a GPU are present, or where
    RLOSS_FORCE_CUDA=1 asks for it (a Docker build has no GPU; set
    TORCH_CUDA_ARCH_LIST then, e.g. "8.0;9.0")."""
    wanted = torch.cuda.is_available() or os.environ.get("RLOSS_FORCE_CUDA") == "1"
    return wanted and cuda_toolkit_home() is not None and all((CSRC / s).exists() for s in CUDA_SOURCES)


def nvcc_compile_command(source: Path, output: Path, archs: tuple[str, ...] = DEFAULT_CUDA_ARCHS) -> list[str]:
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
    command += [f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-Werror", "all-warnings", *cuda_arch_flags(list(archs))]
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


def _build_name(part: str, sources: tuple[str, ...], flags: list[str]) -> str:
    digest = hashlib.sha256()
    for name in sources + HEADERS:
        digest.update((CSRC / name).read_bytes())
    digest.update(repr((flags, torch.__version__)).encode())
    return f"rloss_lattice_{part}_{digest.hexdigest()[:12]}"


def _extensions_root() -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root) if root else Path.home() / ".cache" / "torch_extensions"


def _library_defect(library: Path) -> str | None:
    """Why the shared library ``library`` cannot be loaded, from its ELF headers, or None
    (also when it does not exist). Catches garbage and truncated files; the loader maps a
    truncated file's segments and dies with SIGBUS instead of raising an error."""
    try:
        with open(library, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            header = file.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2 or header[5] not in (1, 2):
                return f"not a 64-bit ELF library ({size} bytes)"
            order = "<" if header[5] == 1 else ">"
            phoff, shoff = struct.unpack_from(order + "QQ", header, 32)
            phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 54)
            needed = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
            if phentsize < 56 or phnum == 0 or needed > size:
                return f"truncated: {size} bytes, its headers need {needed}"
            file.seek(phoff)
            table = file.read(phentsize * phnum)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    for i in range(phnum):
        kind, _, offset, _, _, filesz = struct.unpack_from(order + "IIQQQQ", table, i * phentsize)
        if kind == 1 and offset + filesz > size:  # PT_LOAD
            return f"truncated: {size} bytes, its segments need {offset + filesz}"
    return None


def _unloadable_library(exc: BaseException, library: Path) -> str | None:
    """The loader's reason when ``exc`` says that ``library`` itself is broken (truncated,
    not an ELF file...), else None: a compiler error, a missing dependency such as
    libcudart or an undefined symbol is not cured by building again."""
    while exc is not None:
        if isinstance(exc, OSError):
            text = " ".join(str(exc).split())
            path, _, reason = text.partition(": ")
            # dlopen names the file at fault first; torch's wrapper ("Could not load this
            # library: <path>") carries the loader's message as its cause.
            if reason and path.startswith("/") and os.path.realpath(path) == os.path.realpath(library):
                return None if "undefined symbol" in reason else reason[:200]
        exc = exc.__cause__ or exc.__context__
    return None


def _clear_build_dir(build_dir: Path) -> None:
    """Removes everything a build left in ``build_dir`` (ninja files, objects, the library),
    keeping torch's lock file. Only ever one of our own folders: ``rloss_lattice_*``."""
    if not build_dir.name.startswith("rloss_lattice_") or build_dir.parent != _extensions_root():
        raise ExtensionUnavailable(f"refusing to clear {build_dir}: not an rloss build folder")
    for entry in build_dir.iterdir():
        if entry.name == "lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _forget_build(cpp_extension, name: str) -> None:
    """Makes the next ``cpp_extension.load(name=...)`` of this process run ninja again:
    torch skips the build step for a name it has already seen in this process. Without
    that torch internal the next process builds instead."""
    entries = getattr(getattr(cpp_extension, "JIT_EXTENSION_VERSIONER", None), "entries", None)
    if isinstance(entries, dict):
        entries.pop(name, None)


def _build_and_load(name: str, sources: tuple[str, ...], **kwargs) -> None:
    """Builds (cached on disk under ``name``) and loads one shared library of the extension;
    a cached library that cannot be loaded is built again, once."""
    cpp_extension = _cpp_extension()
    build_dir = _extensions_root() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{name}.rloss-build-lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder at a time, across processes
        stale = build_dir / "lock"
        if "FileBaton" in vars(cpp_extension) and stale.exists():  # nobody can hold it now
            print(f"rloss: removing stale build lock {stale}", file=sys.stderr)
            stale.unlink()
        if not any(build_dir.glob(f"{name}*.so")):
            print(f"rloss: building the lattice extension {name} (first use, about a minute)...", file=sys.stderr)

        def load() -> None:
            cpp_extension.load(
                name=name,
                sources=[str(CSRC / s) for s in sources],
                extra_ldflags=LINK_FLAGS,
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=os.environ.get("RLOSS_VERBOSE_BUILD") == "1",
                **kwargs,
            )

        library = build_dir / f"{name}.so"
        reason = _library_defect(library)  # checked before loading: a truncated library kills the process
        if reason is None:
            try:
                return load()
            except OSError as exc:  # a defect the headers do not show: the loader's reason
                reason = _unloadable_library(exc, library)
                if reason is None:
                    raise
        print(f"rloss: the cached lattice extension {build_dir} cannot be loaded ({reason}); "
              f"removing it and building again (about a minute)...", file=sys.stderr, flush=True)
        _clear_build_dir(build_dir)
        _forget_build(cpp_extension, name)
        load()


def _build_cpu() -> None:
    """The CPU library: it declares the ops and holds the C++ lattice."""
    _build_and_load(_build_name("cpu", CPU_SOURCES, CPU_FLAGS), CPU_SOURCES, extra_cflags=CPU_FLAGS, with_cuda=False)


def _build_cuda() -> None:
    """The CUDA library, separate from the CPU one, so that a failed nvcc step or a
    missing libcudart leaves the C++ lattice working."""
    flags = cuda_flags() + cuda_arch_flags(cuda_archs())
    _build_and_load(
        _build_name("cuda", CUDA_SOURCES, flags),
        CUDA_SOURCES,
        extra_cuda_cflags=flags,
        extra_include_paths=cuda_include_paths(),
        with_cuda=True,
    )


def _launch_two_pixels(device: torch.device) -> torch.Tensor:
    features = torch.zeros(1, 2, 5, device=device)
    values = torch.ones(1, 1, 2, device=device)
    return torch.ops.rloss.permutohedral_filter(features, values).cpu()


def _check_cuda_launch() -> None:
    """Runs the CUDA lattice on two pixels of the current GPU: a build without code for
    this GPU fails here, once, rather than in the first training step."""
    device = torch.device("cuda", torch.cuda.current_device())
    try:
        filtered = _launch_two_pixels(device)
    except RuntimeError as exc:
        capability = "{}.{}".format(*torch.cuda.get_device_capability(device))
        reason = _one_line(exc).replace(" (set RLOSS_VERBOSE_BUILD=1 for the full build log)", "")
        raise ExtensionUnavailable(
            f"the CUDA lattice does not run on this GPU (compute capability {capability}; built for "
            f"{';'.join(cuda_archs())}): {reason}; rebuild with TORCH_CUDA_ARCH_LIST={capability}"
        ) from None
    if not torch.isfinite(filtered).all():
        raise ExtensionUnavailable("the CUDA lattice gave a non-finite result on a two-pixel check")


def _one_line(exc: BaseException) -> str:
    """The compiler's first error line (or the exception's first line), shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    compiler_errors = [line for line in lines if "error:" in line.lower()]
    text = compiler_errors[0] if compiler_errors else lines[0] if lines else type(exc).__name__
    text = re.sub(r"\S*/", "", text)[:300]  # drop folders: the file name is enough
    return f"{type(exc).__name__}: {text} (set RLOSS_VERBOSE_BUILD=1 for the full build log)"


def _load_part(part: str, build) -> None:
    """Builds and loads one part once per process; raises ExtensionUnavailable with the reason."""
    with _lock:
        if part not in _state:
            try:
                build()
                _state[part] = True
            except ExtensionUnavailable as exc:
                _state[part] = str(exc)
            except Exception as exc:  # compiler missing, build error, bad toolchain, missing libcudart...
                _state[part] = _one_line(exc)
    if _state[part] is not True:
        where = " for CUDA" if part == "cuda" else ""
        raise ExtensionUnavailable(f"the permutohedral lattice extension is unavailable{where}: {_state[part]}")


def load_extension() -> None:
    """Builds (once per process, cached on disk) and loads the extension's CPU part.

    Raises ExtensionUnavailable with a one-line reason when it cannot be used.
    """
    if extension_disabled():
        raise ExtensionUnavailable("the permutohedral lattice extension is off (RLOSS_EXTENSION=off)")
    _load_part("cpu", _build_cpu)


def load_cuda_extension() -> None:
    """Loads the CPU part (it declares the ops), then builds, loads and (on a GPU)
    launch-checks the CUDA part, once per process. Raises ExtensionUnavailable with a
    one-line reason."""
    load_extension()
    _load_part("cuda", _build_and_check_cuda)


def _build_and_check_cuda() -> None:
    if not build_with_cuda():
        raise ExtensionUnavailable(
            "the lattice extension was built without CUDA (no CUDA toolkit found: set CUDA_HOME)"
        )
    _build_cuda()
    if torch.cuda.is_available():
        _check_cuda_launch()


def require_lattice(device: torch.device | str) -> None:
    """Raises ExtensionUnavailable unless the extension's lattice runs on ``device``."""
    if torch.device(device).type == "cuda":
        load_cuda_extension()
    elif torch.device(device).type == "cpu":
        load_extension()
    else:
        raise ExtensionUnavailable(f"the lattice extension has no {torch.device(device).type} kernels")


def extension_status() -> str:
    """'ok (cpu)' / 'ok (cpu+cuda)' or the reason the extension cannot be used."""
    try:
        load_extension()
    except ExtensionUnavailable as exc:
        return str(exc)
    if not build_with_cuda():
        return "ok (cpu)"
    try:
        load_cuda_extension()
    except ExtensionUnavailable as exc:
        return f"ok (cpu); CUDA: {exc}"
    return "ok (cpu+cuda)"
