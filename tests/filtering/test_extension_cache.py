"""A cached lattice extension that cannot be loaded is built again (issue: a corrupt .so in the
build cache was never rebuilt, and `python -m rloss build` could not repair it).

The corrupt cache is a copy of the real one under tmp_path (TORCH_EXTENSIONS_DIR): the real
cache, which the other tests use, is only read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rloss.filtering import _extension

ROOT = Path(__file__).resolve().parents[2]


def _cpu_build_name() -> str:
    return _extension._build_name("cpu", _extension.CPU_SOURCES, _extension.CPU_FLAGS)


def _wrapped(cause: OSError, library: Path) -> OSError:
    """An OSError as torch.ops.load_library raises it: its own message, the loader's as cause."""
    try:
        try:
            raise cause
        except OSError as exc:
            raise OSError(f"Could not load this library: {library}") from exc
    except OSError as exc:
        return exc


@pytest.mark.parametrize("loader_message, rebuild", [
    ("{so}: invalid ELF header", True),
    ("{so}: file too short", True),
    ("{so}: ELF load command past end of file", True),
    ("libcudart.so.13: cannot open shared object file: No such file or directory", False),
    ("{so}: undefined symbol: _ZN3c104impl8GPUTrace", False),  # a build problem: a rebuild gives it again
    ("/elsewhere/other.so: invalid ELF header", False),
])
def test_only_a_broken_library_file_is_built_again(tmp_path, loader_message, rebuild):
    so = tmp_path / "rloss_lattice_cpu_0123456789ab" / "rloss_lattice_cpu_0123456789ab.so"
    reason = _extension._unloadable_library(_wrapped(OSError(loader_message.format(so=so)), so), so)
    assert (reason is not None) == rebuild
    if rebuild:
        assert reason == loader_message.split(": ", 1)[1]


def test_library_defects_are_read_from_the_elf_headers(tmp_path):
    intact = Path(torch.__file__).parent / "lib" / "libc10.so"  # any real shared library
    assert _extension._library_defect(intact) is None
    assert _extension._library_defect(tmp_path / "missing.so") is None  # nothing built yet: not a defect
    broken = tmp_path / "broken.so"
    for content, expected in [(intact.read_bytes()[:4096], "truncated: 4096 bytes"),
                              (intact.read_bytes()[:len(intact.read_bytes()) // 2], "truncated"),
                              (b"\0" * 5000, "not a 64-bit ELF library (5000 bytes)"),
                              (b"", "not a 64-bit ELF library (0 bytes)")]:
        broken.write_bytes(content)
        assert expected in _extension._library_defect(broken)


class FakeCppExtension:
    """torch.utils.cpp_extension as _build_and_load uses it: load() records what the build
    folder held, or raises ``error``."""

    def __init__(self, error: BaseException | None = None):
        self.error = error
        self.calls = []
        self.JIT_EXTENSION_VERSIONER = SimpleNamespace(entries={})

    def load(self, name, build_directory, **kwargs):
        self.calls.append((sorted(p.name for p in Path(build_directory).iterdir()), dict(self.JIT_EXTENSION_VERSIONER.entries)))
        self.JIT_EXTENSION_VERSIONER.entries[name] = "seen"
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _cached_build(root: Path, name: str, library: bytes) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file in ("build.ninja", ".ninja_log", "ops.o", "lock"):
        (folder / file).write_text("x")
    (folder / f"{name}.so").write_bytes(library)
    return folder


def test_a_truncated_library_is_never_loaded_but_built_again(tmp_path, monkeypatch, capsys):
    # Loading a truncated library kills the process (SIGBUS): it is found before loading.
    name = "rloss_lattice_cpu_0123456789ab"
    intact = (Path(torch.__file__).parent / "lib" / "libc10.so").read_bytes()
    folder = _cached_build(tmp_path, name, intact[:4096])
    fake = FakeCppExtension()
    fake.JIT_EXTENSION_VERSIONER.entries[name] = "seen"  # as after an earlier load in this process
    monkeypatch.setattr(_extension, "_cpp_extension", lambda: fake)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    _extension._build_and_load(name, _extension.CPU_SOURCES)
    assert fake.calls == [(["lock"], {})]  # one load, into an emptied folder, which torch builds again
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"rloss: the cached lattice extension {folder} cannot be loaded (truncated: 4096 bytes, ")
    assert lines[0].endswith("); removing it and building again (about a minute)...")


def test_a_load_error_that_is_not_the_librarys_leaves_the_cache_alone(tmp_path, monkeypatch, capsys):
    name = "rloss_lattice_cuda_0123456789ab"
    folder = _cached_build(tmp_path, name, (Path(torch.__file__).parent / "lib" / "libc10.so").read_bytes())
    library = folder / f"{name}.so"
    error = _wrapped(OSError("libcudart.so.13: cannot open shared object file: No such file or directory"), library)
    fake = FakeCppExtension(error)
    monkeypatch.setattr(_extension, "_cpp_extension", lambda: fake)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with pytest.raises(OSError, match="Could not load this library"):
        _extension._build_and_load(name, _extension.CUDA_SOURCES)
    assert len(fake.calls) == 1 and library.exists() and (folder / "ops.o").exists()
    assert "cannot be loaded" not in capsys.readouterr().err


def test_clearing_refuses_folders_that_are_not_rloss_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    other = tmp_path / "someone_elses_extension"
    other.mkdir()
    (other / "keep.so").write_bytes(b"x")
    with pytest.raises(_extension.ExtensionUnavailable, match="not an rloss build folder"):
        _extension._clear_build_dir(other)
    assert (other / "keep.so").exists()


@pytest.mark.slow
def test_a_corrupt_cached_build_is_built_again_by_rloss_build(lattice_available, tmp_path):
    # lattice_available has just loaded (and, if needed, built) the real cache for this checkout.
    name = _cpu_build_name()
    cache = tmp_path / "torch_extensions"
    shutil.copytree(_extension._extensions_root() / name, cache / name, ignore=shutil.ignore_patterns("lock"))
    library = cache / name / f"{name}.so"
    # Overwritten with a file the ELF headers do not give away (an executable, not a library): the
    # loader refuses it. Newer than its objects, so ninja sees nothing to do.
    data = bytearray(library.read_bytes())
    data[16] = 2  # e_type = ET_EXEC
    library.write_bytes(bytes(data))

    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(cache), CUDA_VISIBLE_DEVICES="")  # the CPU part only: one build
    for variable in ("RLOSS_EXTENSION", "RLOSS_FORCE_CUDA", "RLOSS_VERBOSE_BUILD"):
        env.pop(variable, None)
    build = subprocess.run([sys.executable, "-m", "rloss", "build"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=1200)
    assert build.returncode == 0 and "lattice extension: ok (cpu)" in build.stdout, build.stdout + build.stderr[-3000:]
    lines = [line for line in build.stderr.splitlines() if "cannot be loaded" in line]
    assert lines == [f"rloss: the cached lattice extension {cache / name} cannot be loaded (cannot dynamically load "
                     f"executable); removing it and building again (about a minute)..."], build.stderr[-3000:]
    assert "building the lattice extension" not in build.stderr  # one line says it all
    assert library.read_bytes()[16] == 3  # ET_DYN: built again

    # A fresh process loads the repaired build as it is, and its lattice gives the portable lattice's values.
    script = (
        "import torch\n"
        "from rloss.filtering import load_extension, permutohedral_filter\n"
        "load_extension()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "features, values = torch.randn(2, 300, 5, generator=g), torch.rand(2, 3, 300, generator=g)\n"
        "torch.testing.assert_close(permutohedral_filter(features, values, 'extension'),\n"
        "                           permutohedral_filter(features, values, 'torch'), rtol=1e-4, atol=1e-5)\n"
        "print('lattice ok')\n"
    )
    check = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
    assert check.returncode == 0 and "lattice ok" in check.stdout, check.stderr[-3000:]
    assert "cannot be loaded" not in check.stderr and "building" not in check.stderr
