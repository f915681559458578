"""Bad input never escapes, corrupts or mixes (issue 16): each test first builds the input that
used to write outside the named folder, read garbage, mix two runs or end in a traceback."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inputs import tiny_pce_config
from rloss import cli
from rloss.data.folder import SegmentationFolder, read_id_list
from rloss.data.io import DataError, read_rgb
from rloss.engine.train import train

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    train(tiny_pce_config(data_root, results, "trained"))
    return results / "trained" / "checkpoint.pt"


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rloss", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=ENV)


def run_browser_check(*args):
    """The developer tool tools/browser_check.py (make browser-check), as its command line runs it."""
    return subprocess.run([sys.executable, str(ROOT / "tools" / "browser_check.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, env=ENV)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def error_line_after_progress(stderr: str) -> str:
    """The one error line of a command that failed while its progress bar was showing."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and all("%|" in line for line in lines[:-1]), stderr
    return lines[-1]


def copy_dataset(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


# --------------------------------------------------------------------------------------------
# 1. Nothing is written outside the folder the user named
# --------------------------------------------------------------------------------------------


def test_downscale_refuses_an_id_that_leaves_the_folder(data_root, tmp_path):
    from rloss.data.downscale import downscale_dataset

    src = copy_dataset(data_root, tmp_path / "src")
    # What the hostile id reads as its image, scribble and mask: <src>/<folder>/../../outside/victim.png,
    # i.e. <tmp>/outside/victim.png (a scribble PNG reads as all three); it would write <tmp>/dest/outside/.
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.png").write_bytes((src / "pascal_2012_scribble" / "train_00000.png").read_bytes())
    (src / "ImageSets" / "Segmentation" / "train.txt").write_text("train_00001\n../../outside/victim\n")
    out = tmp_path / "dest" / "out"
    with pytest.raises(DataError, match=r"train\.txt, line 2: id '\.\./\.\./outside/victim' refused: it contains a path"):
        downscale_dataset(src, out, size=20, progress=False)
    assert not (tmp_path / "dest" / "outside").exists()


@pytest.mark.parametrize("entry, reason", [
    ("..\\..\\x", "a path separator"), ("/etc/passwd", "a path separator"), ("a/../b", "a path separator"),
    ("..", "'..'"), ("C:x", "':'"), ("bad\x1bid", r"a control character \(U\+001B\)"),
])
def test_ids_that_are_not_plain_file_names_are_refused(tmp_path, entry, reason):
    path = tmp_path / "train.txt"
    path.write_text(f"good\n{entry}\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"train\.txt, line 2: id .* refused: it contains {reason}"):
        read_id_list(path)


def test_id_list_bom_is_ignored_and_duplicates_are_an_error(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes("\ufeffa1\n\na2 extra column\n".encode("utf-8"))
    assert read_id_list(path) == ["a1", "a2"]  # not '\ufeffa1', which names no file
    path.write_text("a1\na2\na1\n")
    with pytest.raises(DataError, match=r"train\.txt, line 3: id 'a1' is listed twice \(first on line 1\)"):
        read_id_list(path)


# --------------------------------------------------------------------------------------------
# 2. Images are read faithfully or refused
# --------------------------------------------------------------------------------------------


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535], [128, 257 * 200, 30000]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert (np.asarray(image.convert("RGB")) == 255).sum() > 3 * 3  # PIL's own conversion: clipped white
    rgb = read_rgb(path)
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_data_check_and_training_input_see_the_scaled_sixteen_bit_image(data_root, tmp_path):
    root = copy_dataset(data_root, tmp_path / "data")
    original = read_rgb(root / "JPEGImages" / "train_00000.png")
    grey = original.astype(np.float64).mean(axis=2)
    sixteen = np.rint(grey * 257).astype(np.uint16)  # the same picture at 16 bits
    Image.fromarray(sixteen).save(root / "JPEGImages" / "train_00000.png")
    sample = SegmentationFolder(root, "train").load("train_00000")
    np.testing.assert_array_equal(sample.image[..., 0], np.rint(grey).astype(np.uint8))
    assert sample.image.std() > 10  # a picture, not a white page


@pytest.mark.parametrize("mode, pixel, expected", [
    ("LA", (77, 0), (77, 77, 77)),  # alpha dropped, grey kept
    ("1", 1, (255, 255, 255)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("L", 200, (200, 200, 200)),
])
def test_other_modes_are_read_as_their_colours(tmp_path, mode, pixel, expected):
    path = tmp_path / "image.tif"
    Image.new(mode, (3, 2), pixel).save(path)
    np.testing.assert_array_equal(read_rgb(path), np.full((2, 3, 3), expected, dtype=np.uint8))


def test_palette_image_is_read_as_its_palette_colours(tmp_path):
    image = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (3 * 254))
    image.save(tmp_path / "p.png")
    rgb = read_rgb(tmp_path / "p.png")
    assert tuple(rgb[0, 0]) == (10, 20, 30) and tuple(rgb[0, 1]) == (200, 100, 50)


@pytest.mark.parametrize("mode, values", [
    ("I", np.array([[0, 70000]], dtype=np.int32)),
    ("F", np.array([[0.0, 0.5]], dtype=np.float32)),
])
def test_modes_without_a_known_range_are_refused_in_one_line(tmp_path, mode, values):
    path = tmp_path / "odd.tif"
    Image.fromarray(values, mode=mode).save(path)
    with pytest.raises(DataError, match=rf"odd\.tif: image mode {mode} refused"):
        read_rgb(path)


# --------------------------------------------------------------------------------------------
# 3. A run folder belongs to one run
# --------------------------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from rloss.engine.runs import lock_run_folder
with lock_run_folder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_of_the_same_name_stops_and_a_dead_holder_is_recognised(data_root, tmp_path, capsys):
    from rloss.engine.runs import RunFolderInUse

    cfg = tiny_pce_config(data_root, tmp_path, "same")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(cfg.run_dir)], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse, match=rf"same: run folder in use by pid {holder.pid} on .*choose another run\.name"):
            train(cfg)
        assert sorted(p.name for p in cfg.run_dir.iterdir()) == [".lock"]  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # Killed: its lock file remains, but the lock went with the process.
    assert f"pid {holder.pid}" in (cfg.run_dir / ".lock").read_text()
    capsys.readouterr()
    final = train(cfg)
    assert f"stale lock of a run that did not end (pid {holder.pid}" in capsys.readouterr().err
    assert json.loads((cfg.run_dir / "metrics.json").read_text())["final"] == final
    assert not (cfg.run_dir / ".lock").exists()  # released at the end


# `rloss train` whose first checkpoint save waits for a file: the run holds its folder until then.
_FIRST_TRAIN = """
import os, sys, time
import rloss.engine.checkpoint as C
from rloss import cli
save = C.write_checkpoint
def save_when_released(path, state):
    open(sys.argv[2], "w").close()
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.02)
    save(path, state)
C.write_checkpoint = save_when_released
sys.exit(cli.main(["train", "--config", sys.argv[1]]))
"""


def test_two_concurrent_train_commands_one_stops_with_one_line(data_root, tmp_path):
    from rloss.engine.runs import check_run_folder

    config = tmp_path / "c.yaml"
    config.write_text(tiny_pce_config(data_root, tmp_path / "results", "race", "run.checkpoint_every_iters=1").to_yaml())
    saving, release = tmp_path / "saving", tmp_path / "release"
    first = subprocess.Popen([sys.executable, "-c", _FIRST_TRAIN, str(config), str(saving), str(release)], env=ENV,
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not saving.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.02)
        second = run_cli("train", "--config", config, cwd=tmp_path)
    finally:
        release.touch()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    first.stderr.close()
    assert second.returncode == 1
    run_dir = tmp_path / "results" / "race"
    assert one_error_line(second.stderr).startswith(f"rloss train: {run_dir}: run folder in use by pid {first.pid}")
    assert check_run_folder(run_dir) is not None  # config, metrics and checkpoint all of the first run


def test_a_folder_holding_two_runs_files_is_detected_when_read(data_root, tmp_path, capsys):
    from rloss.study.interpolation import checkpoint_paths
    from rloss.engine.runs import MixedRunFolder, check_run_folder
    from rloss.study.grid import finished_metrics, load_runs
    from rloss.study.browser import find_runs

    # Run A (seed 0) finishes; run B (seed 1) of the same name replaces it; then A's metrics.json
    # comes back, as when two trainings of one name wrote the folder at once.
    cfg_a = tiny_pce_config(data_root, tmp_path, "s_pce_seed0", "run.seed=0")
    train(cfg_a)
    metrics_a = (cfg_a.run_dir / "metrics.json").read_text()
    cfg_b = tiny_pce_config(data_root, tmp_path, "s_pce_seed0", "run.seed=1")
    train(cfg_b, overwrite=True)
    assert load_runs(tmp_path)[0]["seed"] == 1 and finished_metrics(cfg_b) is not None
    (cfg_b.run_dir / "metrics.json").write_text(metrics_a)

    with pytest.raises(MixedRunFolder, match=r"s_pce_seed0: mixed run folder \(config\.yaml of run \w+, metrics\.json of run \w+"):
        check_run_folder(cfg_b.run_dir)
    capsys.readouterr()
    assert load_runs(tmp_path) == []  # not A's mIoU under B's settings
    assert "load_runs: skipped" in capsys.readouterr().err
    assert finished_metrics(cfg_b) is None  # the study trains it again rather than skipping it
    assert find_runs(tmp_path) == []
    with pytest.raises(DataError, match="mixed run folder"):
        checkpoint_paths(tmp_path, "s", losses=["pce"], seeds=[0])


def test_debris_of_a_killed_save_is_removed_on_the_next_start(data_root, tmp_path):
    cfg = tiny_pce_config(data_root, tmp_path, "debris")
    train(cfg)
    debris = [cfg.run_dir / ".checkpoint.pt.k3j2l1.part", cfg.run_dir / ".metrics.json.x9.part"]
    for path in debris:
        path.write_bytes(b"\0" * 1000)  # what a SIGKILL during torch.save leaves
    keep = cfg.run_dir / "notes.txt"
    keep.write_text("mine")
    train(cfg, resume=True)
    assert not any(p.exists() for p in debris) and keep.read_text() == "mine"


# --------------------------------------------------------------------------------------------
# 4. One line, never a traceback
# --------------------------------------------------------------------------------------------


def _blocked(tmp_path) -> Path:
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder should be")
    return blocker


def test_every_command_with_an_unusable_output_folder_is_one_line(data_root, checkpoint, tmp_path):
    blocker = _blocked(tmp_path)
    params = tmp_path / "p.yaml"
    params.write_text("common:\n  seed: 0\n")
    image = data_root / "JPEGImages" / "val_00000.png"
    commands = {
        "data synthetic": ["data", "synthetic", "--out", blocker / "sub", "--n-train", 2, "--n-val", 1],
        "data synthetic (a file)": ["data", "synthetic", "--out", blocker, "--n-train", 2, "--n-val", 1],
        "data downscale": ["data", "downscale", "--src", data_root, "--out", blocker / "low", "--size", 20],
        "data voc": ["data", "voc", "--root", blocker / "voc", "--no-download"],
        "train": ["train", "--set", f"data.root={data_root}", "--set", f"run.results_dir={blocker}"],
        "infer": ["infer", "--checkpoint", checkpoint, "--input", image, "--output", blocker / "pred"],
        "study": ["study", "--params", params, "--only", "00", "--output", blocker / "notebooks"],
        "bench": ["bench", "crf", "--json", blocker / "bench.json"],
        "browser-check": ["check", "--results", checkpoint.parent.parent, "--out", blocker / "shot.png"],
    }
    for what, args in commands.items():
        result = run_browser_check(*args) if what == "browser-check" else run_cli(*args)
        assert result.returncode == 1, (what, result.stderr)
        line = one_error_line(result.stderr)
        assert str(blocker) in line and ("Not a directory" in line or "not a folder" in line), (what, line)
    assert blocker.read_text() == "a file where a folder should be"


def test_permission_denied_while_writing_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    import tempfile

    def no_permission(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", no_permission)
    out = tmp_path / "low"
    assert cli.main(["data", "downscale", "--src", str(data_root), "--out", str(out), "--size", "20"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"rloss data: {out / 'JPEGImages'}: Permission denied" and "Traceback" not in err

    import getpass

    monkeypatch.setattr(getpass, "getpass", lambda prompt="": "a" * 40)
    netrc = _blocked(tmp_path) / ".netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert cli.main(["wandb-login"]) == 1
    assert one_error_line(capsys.readouterr().err).startswith(f"rloss wandb-login: {netrc}: ")


def decompression_bomb_png(path: Path, side: int = 13400) -> Path:
    """A tiny PNG whose header claims side x side pixels (179 Mpx for 13400)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_reported_and_skipped(data_root, checkpoint, tmp_path):
    root = copy_dataset(data_root, tmp_path / "data")
    bomb = decompression_bomb_png(root / "JPEGImages" / "train_00003.png")
    assert bomb.stat().st_size < 80 and Image.MAX_IMAGE_PIXELS * 2 < 13400 ** 2

    result = run_cli("data", "check", "--root", root, "--split", "train")
    assert result.returncode == 1
    assert "train_00003.png: refused" in error_line_after_progress(result.stderr)
    result = run_cli("data", "check", "--root", root, "--split", "train", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 7 and json.loads(result.stdout)["skipped"] == 1
    assert "train_00003.png: refused" in result.stderr

    images = tmp_path / "photos"
    images.mkdir()
    for name in ("train_00000.png", "train_00001.png"):
        (images / name).write_bytes((root / "JPEGImages" / name).read_bytes())
    decompression_bomb_png(images / "bomb.png")
    result = run_cli("infer", "--checkpoint", checkpoint, "--input", images, "--output", tmp_path / "pred", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "bomb.png: refused" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == ["train_00000.png", "train_00001.png"]


def test_config_naming_a_folder_is_one_line(tmp_path):
    result = run_cli("train", "--config", tmp_path)
    assert result.returncode == 1
    assert one_error_line(result.stderr) == f"rloss train: {tmp_path}: Is a directory"


def _other_class_count(data_root, tmp_path) -> Path:
    root = copy_dataset(data_root, tmp_path / "more_classes")
    names = (root / "classes.txt").read_text().split()
    (root / "classes.txt").write_text("\n".join(names + ["extra"]) + "\n")
    return root


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_init_from_a_bad_checkpoint_is_one_line(data_root, checkpoint, tmp_path, capsys):
    other = _other_class_count(data_root, tmp_path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode(tmp_path / "code_ran")}, evil)
    state_dict = tmp_path / "weights.pt"  # a bare state dict of the 5-class model
    torch.save(torch.load(checkpoint, weights_only=True)["model"], state_dict)
    cases = {
        checkpoint: (other, r"the checkpoint has \d+ classes, the data set \d+"),
        state_dict: (other, r"the weights do not fit this model with \d+ classes \(size mismatch"),
        truncated: (data_root, r"not a checkpoint \("),
        evil: (data_root, r"not a checkpoint \(.*Weights only load failed"),
    }
    for path, (root, message) in cases.items():
        args = ["train", "--set", f"data.root={root}", "--set", f"run.results_dir={tmp_path / 'r'}",
                "--set", f"loss.init_from={path}", "--set", "optim.epochs=1", "--set", "data.crop_size=32",
                "--overwrite"]  # each case starts the run anew in the same folder
        assert cli.main(args) == 1, path
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"rloss train: loss.init_from {path}: "), line
        assert __import__("re").search(message, line), line
    assert not (tmp_path / "code_ran").exists()


def test_resume_with_another_class_count_is_one_line(data_root, checkpoint, tmp_path, capsys):
    other = _other_class_count(data_root, tmp_path)
    classes = len((data_root / "classes.txt").read_text().split())
    run_dir = tmp_path / "r" / "trained"
    run_dir.mkdir(parents=True)
    for name in ("checkpoint.pt", "config.yaml"):  # the run moved to another results folder: it may resume there
        (run_dir / name).write_bytes((checkpoint.parent / name).read_bytes())
    args = ["train", "--config", str(run_dir / "config.yaml"), "--set", f"data.root={other}",
            "--set", f"run.results_dir={tmp_path / 'r'}", "--resume"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "Traceback" not in err
    assert lines[-1] == (f"rloss train: resume: {run_dir / 'checkpoint.pt'} has {classes} classes, the data set "
                         f"{other} has {classes + 1}; resume with its own data, or start a new run (another "
                         "run.name, or --overwrite)")


def test_bad_sample_in_a_dataloader_worker_is_its_cause_line(data_root, tmp_path, capsys):
    root = copy_dataset(data_root, tmp_path / "data")
    broken = root / "JPEGImages" / "train_00002.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    args = ["train", "--set", f"data.root={root}", "--set", f"run.results_dir={tmp_path / 'r'}",
            "--set", "data.num_workers=2", "--set", "data.crop_size=32", "--set", "optim.epochs=1",
            "--set", "loss.type=pce", "--set", "run.device=cpu"]
    assert cli.main(args) == 1
    line = error_line_after_progress(capsys.readouterr().err)
    assert line.startswith(f"rloss train: {broken}: unreadable image"), line
    assert "DataLoader worker" not in line


def test_non_finite_loss_gives_the_same_advice_with_and_without_the_crf(data_root, tmp_path):
    from rloss.engine.errors import TrainingError

    messages = {}
    for loss in ("pce", "pce_crf"):
        cfg = tiny_pce_config(data_root, tmp_path, loss, f"loss.type={loss}", "optim.lr=1e30", "optim.epochs=20",
                   "run.checkpoint_every_iters=1")
        with pytest.raises(TrainingError) as info:
            train(cfg)
        messages[loss] = str(info.value)
    for loss, message in messages.items():
        assert "the loss is not finite at iteration" in message, (loss, message)
        assert "the last checkpoint" in message and "is intact" in message and "Lower optim.lr" in message
    assert "probs contains NaN" not in messages["pce_crf"]


_SLOW_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "execution_count": None, "id": "p", "metadata": {"tags": ["parameters"]}, "outputs": [],
         "source": "marker = ''"},
        {"cell_type": "code", "execution_count": None, "id": "s", "metadata": {}, "outputs": [],
         "source": "import time\nopen(marker, 'w').close()\ntime.sleep(120)"},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_ctrl_c_during_a_study_is_one_line_and_exit_130(tmp_path):
    pytest.importorskip("papermill")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_slow.ipynb").write_text(json.dumps(_SLOW_NOTEBOOK))
    marker = tmp_path / "cell_started"
    params = tmp_path / "p.yaml"
    params.write_text(f"00_slow:\n  marker: {marker}\n")
    # As a terminal's Ctrl-C: SIGINT to the whole foreground process group. A terminal's foreground job
    # takes SIGINT; a test run started in the background (nohup, `&` without job control) ignores it,
    # and its children would inherit that, so the study starts with the default disposition.
    study = subprocess.Popen([sys.executable, "-m", "rloss", "study", "--params", str(params), "--output",
                              str(tmp_path / "out")], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert study.poll() is None and time.monotonic() < deadline, study.stderr.read()
        time.sleep(0.05)
    os.killpg(study.pid, signal.SIGINT)
    _, stderr = study.communicate(timeout=60)
    assert study.returncode == 130
    assert "Traceback" not in stderr and "ZMQError" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("study:")]
    assert errors == [("study: interrupted during notebooks/00_slow.ipynb; notebooks done before it are complete, "
                       "finished runs are kept and an interrupted run resumes on the next start")], stderr


# --------------------------------------------------------------------------------------------
# 5. Typos are errors everywhere
# --------------------------------------------------------------------------------------------


def test_a_common_key_no_notebook_declares_is_an_error(tmp_path):
    from rloss.study.runner import plan, study_notebooks

    notebooks = study_notebooks(ROOT / "notebooks")
    path = tmp_path / "p.yaml"
    path.write_text("common:\n  results_dirr: ../results\n  seed: 0\n")
    with pytest.raises(ValueError, match=r"p\.yaml: common\.results_dirr is not a parameter of any notebook"):
        plan(path, notebooks[:1])  # also when the notebook that would use it is not run
    path.write_text("common:\n  results_dir: ../results\n  sed: 0\n")
    with pytest.raises(ValueError, match=r"common\.sed is not a parameter of any notebook"):
        plan(path, notebooks)
    path.write_text("common:\n  results_dir: ../results\n  seed: 0\n")
    assert len(plan(path, notebooks)) == len(notebooks)


def test_cuda_asked_for_where_there_is_none_is_one_line(checkpoint, data_root, tmp_path, monkeypatch, capsys):
    # resolve_device's error is the package's one-line kind: train and infer report it without a traceback.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["train", "--set", f"data.root={data_root}", "--set", f"run.results_dir={tmp_path / 'r'}",
            "--set", "run.device=cuda", "--set", "optim.epochs=1", "--set", "data.crop_size=32"]
    assert cli.main(args) == 1
    assert one_error_line(capsys.readouterr().err) == ("rloss train: run.device is cuda but CUDA is not available "
                                                       "(use run.device=cpu or auto)")
    image = tmp_path / "one.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    assert cli.main(["infer", "--checkpoint", str(checkpoint), "--input", str(image), "--device", "cuda",
                     "--output", str(tmp_path / "out")]) == 1
    assert one_error_line(capsys.readouterr().err).startswith("rloss infer: run.device is cuda but CUDA is not")
    assert not (tmp_path / "out").exists()


def test_one_checkpoint_reader_for_resume_and_inference(checkpoint, data_root, tmp_path):
    # The same refusals, phrased for each use: a bare state dict and a truncated file.
    from rloss.engine.infer import load_predictor
    from rloss.engine.runs import NotACheckpoint, read_checkpoint

    obj, config = read_checkpoint(checkpoint)
    assert obj["num_classes"] == len(obj["class_names"]) and config.run.name == "trained"
    bare = tmp_path / "bare" / "checkpoint.pt"
    bare.parent.mkdir()
    torch.save(obj["model"], bare)
    truncated = tmp_path / "truncated" / "checkpoint.pt"
    truncated.parent.mkdir()
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    for path, why in ((bare, "missing model, config"), (truncated, "torch.load(weights_only=True) failed: ")):
        with pytest.raises(NotACheckpoint, match=re.escape(why)):
            read_checkpoint(path)
        with pytest.raises(ValueError, match=f"not a checkpoint written by `rloss train` \\({re.escape(why)}"):
            load_predictor(path, "cpu")
        resume = tiny_pce_config(data_root, tmp_path, path.parent.name)  # its run folder is the bad file's
        with pytest.raises(ValueError, match=f"not a checkpoint written by rloss train \\({re.escape(why)}"):
            train(resume, resume=True)


def test_first_line_of_an_exception():
    from rloss.engine.errors import first_line

    header = RuntimeError("Error(s) in loading state_dict for Net:\n\tsize mismatch for w\n\tmore")
    assert first_line(header) == "size mismatch for w"
    assert first_line(header, typed=True) == "RuntimeError: size mismatch for w"
    assert first_line(KeyError()) == "KeyError" and first_line(KeyError(), typed=True) == "KeyError"
    assert first_line(ValueError("x" * 300), limit=10) == "x" * 10 + "..."
