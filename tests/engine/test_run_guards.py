"""A run a user has is never replaced without --overwrite, a resume continues the same run or
refuses, a full disk while saving is one line, and bad values stop a study before it starts."""

import json
from pathlib import Path

import pytest
import torch

from inputs import config_file, last_line, tiny_config, tiny_pce_config
from rloss import cli
from rloss.engine.config import load_config
from rloss.engine.runs import config_run_id
from rloss.engine.train import train

ROOT = Path(__file__).resolve().parents[2]


def tiny_args(data_root, results, name, *extra):
    """`rloss train` arguments of a 1-epoch pCE run of the tiny network (2 iterations on 8 images)."""
    return ["train", "--config", str(config_file(tiny_pce_config(data_root, results, name, *extra), results))]


def files_of(run_dir: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def test_train_refuses_to_replace_a_finished_run_without_overwrite(data_root, tmp_path, capsys):
    args = tiny_args(data_root, tmp_path, "mine")
    assert cli.main(args) == 0
    run_dir = tmp_path / "mine"
    before = files_of(run_dir)
    final = json.loads((run_dir / "metrics.json").read_text())["final"]
    capsys.readouterr()

    assert cli.main(args) == 1
    assert last_line(capsys.readouterr().err) == (
        f"rloss train: {run_dir} already holds a finished run (iteration {final['iteration']}, mIoU "
        f"{final['miou']:.4f}): --resume continues it, --overwrite replaces it, or choose another run.name")
    assert files_of(run_dir) == before  # nothing replaced

    assert cli.main(args + ["--overwrite"]) == 0  # asked for: a new run (a new id in all three files)
    ids = {json.loads((run_dir / "metrics.json").read_text())["run_id"],
           torch.load(run_dir / "checkpoint.pt", weights_only=True)["run_id"]}
    assert len(ids) == 1 and ids != {json.loads(before["metrics.json"])["run_id"]}


def test_resume_with_another_setting_of_the_run_is_refused_naming_it(data_root, tmp_path, capsys):
    args = tiny_args(data_root, tmp_path, "mine", "loss.type=pce_crf")
    assert cli.main(args) == 0
    run_dir = tmp_path / "mine"
    before = files_of(run_dir)
    capsys.readouterr()
    for change, named in (("optim.lr=0.01", "optim.lr 0.002 -> 0.01"), ("loss.type=pce", "loss.type 'pce_crf' -> 'pce'")):
        assert cli.main(args + ["--resume", "--set", change]) == 1
        line = last_line(capsys.readouterr().err)
        assert line.startswith(f"rloss train: resume: {run_dir / 'checkpoint.pt'} was trained with other settings ("), line
        assert named in line and "loss.init_from=" in line, line
        assert files_of(run_dir) == before  # neither trained nor recorded as the new settings
    # Where the data and results are and how the work is done may change: the run continues (here: is complete).
    assert cli.main(args + ["--resume", "--set", "run.checkpoint_every_iters=7", "--set", "run.device=cpu"]) == 0


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(data_root, tmp_path, monkeypatch):
    import rloss.engine.checkpoint as C

    extra = ("optim.epochs=1", "loss.type=pce")
    final_a = train(tiny_config(data_root, tmp_path, "a", *extra))

    def killed(path, state):
        raise KeyboardInterrupt  # as if the process had died during its first save

    cfg = tiny_config(data_root, tmp_path, "b", *extra)
    with monkeypatch.context() as m:
        m.setattr(C, "write_checkpoint", killed)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)
    run_dir = tmp_path / "b"
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "checkpoint.pt").exists()
    run_id = config_run_id(run_dir / "config.yaml")
    assert train(cfg, resume=True) == final_a  # the same run, trained from its beginning
    # it kept its id: the three files are one run's
    assert run_id and json.loads((run_dir / "metrics.json").read_text())["run_id"] == run_id
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["run_id"] == config_run_id(run_dir / "config.yaml") == run_id


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous(data_root, tmp_path, monkeypatch,
                                                                                    capsys):
    saves = []
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 1:
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 partial")  # torch's zip writer stops short
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", save_until_full)
    args = tiny_args(data_root, tmp_path, "full", "run.checkpoint_every_iters=1")
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    checkpoint = tmp_path / "full" / "checkpoint.pt"
    line = last_line(err)
    assert line.startswith(f"rloss train: cannot write {checkpoint}: the write stopped short, "), line
    assert "MiB free on its disk" in line and line.endswith("(the previous one is intact)"), line
    assert "Traceback" not in err
    monkeypatch.undo()
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 1  # the first save, intact
    assert not list(checkpoint.parent.glob("*.part"))


@pytest.mark.parametrize("override", ["loss.crf_relative_weight=nan", "optim.lr=.inf", "loss.sigma_rgb=-.inf"])
def test_non_finite_values_are_refused_naming_the_key(override, capsys):
    key, value = override.split("=")
    with pytest.raises(ValueError, match=rf"config: {key} must be a finite number, got"):
        load_config(None, [override])
    assert cli.main(["train", "--set", override]) == 1
    assert last_line(capsys.readouterr().err).startswith(f"rloss train: config: {key} must be a finite number")


@pytest.mark.parametrize("setting, message", [
    ("02_train_40px.crf_relative_weight=.nan", "02_train_40px: crf_relative_weight must be \"sweep\" or a finite number >= 0; got nan"),
    ("02_train_40px.seeds=0", "02_train_40px: seeds must be a non-empty list of distinct integers >= 0; got 0"),
    ("03_train_513px.losses=[pce, pce_crff]", "03_train_513px: losses: unknown loss 'pce_crff' (choose from pce, pce_crf, full, "
                                              "pce_nc, pce_kernelcut)"),
    ("03_train_513px.iterations=-5", "03_train_513px: optim.iterations must be >= 1 (or null), got -5"),
    ("02_train_40px.lr=.nan", "02_train_40px: optim.lr must be a finite number, got nan"),
])
def test_a_study_checks_every_training_value_before_the_first_notebook(tmp_path, capsys, setting, message):
    args = ["study", "--params", str(ROOT / "params" / "smoke.yaml"), "--set", setting, "--output", str(tmp_path / "nb")]
    assert cli.main(args) == 1
    assert last_line(capsys.readouterr().err) == f"rloss study: {ROOT / 'params' / 'smoke.yaml'}: {message}"
    assert not (tmp_path / "nb").exists()  # no notebook ran


def test_study_outside_the_repository_says_where_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["study"]) == 1
    line = last_line(capsys.readouterr().err)
    assert line == (f"rloss study: no numbered notebooks in {tmp_path / 'notebooks'}: run the study from the repository "
                    f"root (the folder with notebooks/ and params/), e.g. cd {ROOT}")
    assert list(tmp_path.iterdir()) == []
