"""Nothing already there is lost or replaced without ``--overwrite``, and bad input is one line.

1. ``data synthetic`` / ``data downscale`` refuse a folder that is not empty (and ``--src`` equal
   to ``--out``); with ``--overwrite`` they first remove what a previous data set left there.
2. Duplicate (or empty) class names in ROOT/classes.txt are refused, naming the lines.
3. ``infer`` without ``--output`` refuses a checkpoint whose run name is not a plain folder name.
4. A full disk during ``infer`` names the output file and leaves no partial or temporary file.
"""

import builtins
import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rloss import cli
from rloss.data.downscale import downscale_dataset
from rloss.data.io import DataError
from rloss.data.synthetic import generate_synthetic

PROGRESS = re.compile(r"^\w[\w ]*: +\d+%\|")  # a tqdm bar ("infer:  33%|###  | 1/3 ...")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``: relative path -> bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(err: str) -> str:
    """The one line on stderr, besides progress bars."""
    lines = [line for line in err.splitlines() if line.strip() and not PROGRESS.match(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "set"
    generate_synthetic(root, size=32, n_train=4, n_val=2, seed=0, progress=False)
    return root


# --------------------------------------------------------------------------------------------
# 1. data synthetic / downscale never write over a data set without --overwrite
# --------------------------------------------------------------------------------------------


def test_data_commands_refuse_a_folder_that_is_not_empty(dataset, tmp_path, capsys):
    before = snapshot(dataset)
    other = tmp_path / "other"
    generate_synthetic(other, size=48, n_train=2, n_val=1, seed=1, progress=False)
    commands = {
        "synthetic": ["data", "synthetic", "--out", str(dataset), "--size", "40", "--n-train", "2", "--n-val", "1"],
        "downscale": ["data", "downscale", "--src", str(other), "--out", str(dataset), "--size", "16"],
    }
    for what, argv in commands.items():
        assert cli.main(argv) == 1, what
        line = one_line(capsys.readouterr().err)
        assert line.startswith(f"rloss data: {dataset}: ") and "not empty" in line and "--overwrite" in line, line
        assert snapshot(dataset) == before, f"data {what} changed the existing data set"
    # The library functions refuse it too (the notebooks and Python users call them).
    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        generate_synthetic(dataset, size=32, n_train=1, n_val=1, progress=False)
    with pytest.raises(DataError, match="not empty.*overwrite=True"):
        downscale_dataset(other, dataset, size=16, progress=False)
    assert snapshot(dataset) == before
    # The source itself as the output: refused, whatever --overwrite says.
    for flags in ([], ["--overwrite"]):
        argv = ["data", "downscale", "--src", str(dataset), "--out", str(dataset), "--size", "16", *flags]
        assert cli.main(argv) == 1
        line = one_line(capsys.readouterr().err)
        assert line.startswith("rloss data: ") and str(dataset) in line and "source" in line, line
        assert snapshot(dataset) == before


def test_overwrite_replaces_the_previous_data_set_and_keeps_unknown_files(dataset, tmp_path, capsys):
    notes = dataset / "notes.txt"
    notes.write_text("mine")
    # A smaller set over the larger one: no image of the old one survives, the summary is the new one.
    assert cli.main(["data", "synthetic", "--out", str(dataset), "--size", "40", "--n-train", "2", "--n-val", "1",
                     "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert one_line(captured.err) == (f"{dataset}: removed the previous data set's JPEGImages/, SegmentationClassAug/, "
                                      "pascal_2012_scribble/, ImageSets/, classes.txt, synthetic.json (overwrite)")
    fresh = tmp_path / "fresh"
    generate_synthetic(fresh, size=40, n_train=2, n_val=1, seed=0, progress=False)
    assert snapshot(dataset) == {**snapshot(fresh), "notes.txt": b"mine"}

    # A low-resolution copy over a synthetic set: its synthetic.json (which names the old size) goes too.
    src = tmp_path / "src"
    generate_synthetic(src, size=32, n_train=3, n_val=1, seed=2, progress=False)
    assert cli.main(["data", "downscale", "--src", str(src), "--out", str(dataset), "--size", "16", "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert f"{dataset}: removed the previous data set's" in captured.err and "synthetic.json" in captured.err
    assert not (dataset / "synthetic.json").exists()
    assert sorted(p.name for p in (dataset / "JPEGImages").iterdir()) == [
        "train_00000.png", "train_00001.png", "train_00002.png", "val_00000.png"]
    assert Image.open(dataset / "JPEGImages" / "train_00000.png").size == (16, 16)
    assert notes.read_text() == "mine"


# --------------------------------------------------------------------------------------------
# 2. Class names: no duplicates (one class's IoU would vanish from metrics.json), none empty
# --------------------------------------------------------------------------------------------


def test_duplicate_or_empty_class_names_are_refused(dataset, capsys):
    classes = dataset / "classes.txt"
    classes.write_text("background\nellipse\nrectangle\ntriangle\nellipse\nblob\n")
    before = snapshot(dataset)
    assert cli.main(["data", "check", "--root", str(dataset)]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"rloss data: {classes}: class name 'ellipse' is given twice (lines 2 and 5); class names must differ")
    classes.write_text("background\nellipse\n\nrectangle\ntriangle\nstar\nblob\n\n")
    assert cli.main(["data", "check", "--root", str(dataset)]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"rloss data: {classes}: line 3 is empty, so class 2 has no name (line i names class i - 1)")
    classes.write_text("background\nellipse\nrectangle\ntriangle\nstar\nblob\n\n")  # trailing blank lines are fine
    assert cli.main(["data", "check", "--root", str(dataset)]) == 0
    capsys.readouterr()
    assert snapshot(dataset) == {**before, "classes.txt": classes.read_bytes()}


# --------------------------------------------------------------------------------------------
# 3 and 4. infer: the output folder a checkpoint names, and a full disk
# --------------------------------------------------------------------------------------------


def fake_checkpoint(path: Path, run_name: str, num_classes: int = 6) -> Path:
    """A checkpoint as ``rloss train`` writes one (the keys inference reads), of an untrained tiny network."""
    from rloss.engine.config import TrainConfig
    from rloss.models import build_model

    config = TrainConfig()
    config.model.name = "deeplabv3plus_tiny"
    config.data.crop_size = 32
    config.run.name = run_name
    torch.manual_seed(0)
    model = build_model(config.model.name, num_classes, pretrained=False, output_stride=config.model.output_stride)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": json.dumps(config.to_dict()), "num_classes": num_classes,
                "class_names": [f"c{i}" for i in range(num_classes)], "model_name": config.model.name}, path)
    return path


def test_infer_refuses_a_run_name_that_is_not_a_folder_name(dataset, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    image = dataset / "JPEGImages" / "val_00000.png"
    escape = tmp_path / "escaped"
    before = snapshot(tmp_path)
    for name in ("../../../escaped", str(escape), "..", "a\\b", ""):
        ckpt = fake_checkpoint(tmp_path / "ckpt" / "checkpoint.pt", name)
        before["ckpt/checkpoint.pt"] = ckpt.read_bytes()
        assert cli.main(["infer", "--checkpoint", str(ckpt), "--input", str(image), "--device", "cpu"]) == 1, name
        assert one_line(capsys.readouterr().err) == (
            f"rloss infer: {ckpt}: the run name {name!r} it records is not a plain folder name (no '/' or '\\', "
            "not '.' or '..', not empty), so it cannot name the output folder results/inference/<run name>; "
            "pass --output"), name
        assert snapshot(tmp_path) == before and not escape.exists() and not list(work.iterdir()), name
    # With --output the same checkpoint is usable.
    assert cli.main(["infer", "--checkpoint", str(ckpt), "--input", str(image), "--device", "cpu",
                     "--output", str(work / "pred")]) == 0
    assert (work / "pred" / "val_00000.png").is_file()


def test_a_full_disk_during_infer_names_the_file_and_leaves_no_partial_output(dataset, tmp_path, monkeypatch, capsys):
    ckpt = fake_checkpoint(tmp_path / "ckpt" / "checkpoint.pt", "tiny")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.png").write_bytes((dataset / "JPEGImages" / f"train_0000{'abc'.index(name)}.png").read_bytes())
    argv = ["infer", "--checkpoint", str(ckpt), "--input", str(src), "--device", "cpu", "--save-probs",
            "--batch-size", "1"]
    reference = tmp_path / "reference"
    assert cli.main([*argv, "--output", str(reference)]) == 0
    capsys.readouterr()

    out = tmp_path / "out"
    real_open = builtins.open
    opened = []

    class FillsTheDisk:
        """A file that takes half of one write and then finds the disk full (no fileno: PIL and numpy
        write through it as they would to a pipe)."""

        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(bytes(data)[: len(data) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def fileno(self):
            import io

            raise io.UnsupportedOperation("fileno")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def open_on_a_small_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and Path(file).parent == out and any(m in mode for m in "wxa+"):
            opened.append(Path(file).name)
            if len(opened) > 3:  # the first image's three files fit; the second image's first does not
                return FillsTheDisk(f)
        return f

    monkeypatch.setattr(builtins, "open", open_on_a_small_disk)
    assert cli.main([*argv, "--output", str(out)]) == 1
    monkeypatch.setattr(builtins, "open", real_open)
    line = one_line(capsys.readouterr().err)
    assert line == f"rloss infer: {out / 'b_probs.npy'}: No space left on device", line
    left = sorted(p.name for p in out.iterdir())
    assert left == ["a.png", "a_overlay.jpg", "a_probs.npy"], f"a partial or temporary file is left: {left}"
    first = snapshot(reference)
    assert snapshot(out) == {k: v for k, v in first.items() if k.startswith("a")}, "outputs written before changed"
    np.load(out / "a_probs.npy")
