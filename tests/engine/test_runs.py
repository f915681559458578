"""The run folder: saved configs name their data by an absolute path; older configs, whose data.root
was relative to the folder training ran in, are still read; a finished run is recognised either way."""

import yaml

from inputs import tiny_config, tiny_synthetic
from rloss.engine.run_pool import finished_metrics
from rloss.engine.runs import CHECKPOINT, CONFIG, read_checkpoint, read_run_config
from rloss.engine.train import train


def _rewrite_root(run_dir, root: str) -> None:
    """config.yaml as an older rloss wrote it: the same run, its data root as given on the command line."""
    lines = (run_dir / CONFIG).read_text().splitlines(keepends=True)
    doc = yaml.safe_load("".join(lines[1:]))
    doc["data"]["root"] = root
    (run_dir / CONFIG).write_text(lines[0] + yaml.safe_dump(doc, sort_keys=False))


def test_saved_configs_hold_absolute_roots_and_old_ones_are_still_read(tmp_path, monkeypatch):
    project = tmp_path / "project"
    data = tiny_synthetic(project / "data" / "set")
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")  # as a notebook trains: data and results relative to notebooks/
    cfg = tiny_config("../data/set", "../results", "run", "optim.epochs=1", "loss.type=pce")
    final = train(cfg)
    run_dir = project / "results" / "run"
    assert yaml.safe_load((run_dir / CONFIG).read_text())["data"]["root"] == str(data.resolve())
    assert read_checkpoint(run_dir / CHECKPOINT)[1].data.root == str(data.resolve())
    assert cfg.data.root == "../data/set"  # the caller's config is left as it was
    assert finished_metrics(cfg) == final  # asked again with the relative root: the same run, not trained again

    # An older config.yaml: the root relative to notebooks/. Read from anywhere, it names the data.
    _rewrite_root(run_dir, "../data/set")
    monkeypatch.chdir(tmp_path)
    assert read_run_config(run_dir).data.root == str(data.resolve())
    monkeypatch.chdir(project / "notebooks")
    assert finished_metrics(cfg) == final

    # Relative to the project (a run started from the repository root), and a root found nowhere.
    _rewrite_root(run_dir, "data/set")
    monkeypatch.chdir(tmp_path)
    assert read_run_config(run_dir).data.root == str(data.resolve())
    _rewrite_root(run_dir, "gone/set")
    assert read_run_config(run_dir).data.root == "gone/set"


def test_a_finished_run_is_reused_when_every_setting_it_uses_matches(tmp_path):
    """A pCE run reads no DenseCRF or normalized cut setting, and AdamW no momentum: asked again with
    other such values it is the same run (adding a loss to a study must not retrain its pCE runs)."""
    data_root = tiny_synthetic(tmp_path / "data")
    done = train(tiny_config(data_root, tmp_path / "results", "p", "loss.type=pce", "run.threads=1",
                             "optim.name=adamw", "optim.lr_schedule=cosine"))

    def asked(*changes):
        return finished_metrics(tiny_config(data_root, tmp_path / "results", "p", "loss.type=pce", "run.threads=1",
                                            "optim.name=adamw", "optim.lr_schedule=cosine", *changes))

    assert asked("loss.crf_relative_weight=16", "loss.sigma_xy=3", "loss.nc_weight=0.5", "loss.kernel=exact",
                 "optim.momentum=0.5", "optim.poly_power=2") == done
    assert asked("optim.lr=0.5") is None  # a setting it uses: another run
    assert asked("loss.type=pce_crf") is None
    crf = tiny_config(data_root, tmp_path, "c", "loss.type=pce_crf", "optim.name=sgd", "optim.epochs=3")
    assert "crf_relative_weight" in crf.settings_used()["loss"] and "nc_weight" not in crf.settings_used()["loss"]
    assert "momentum" in crf.settings_used()["optim"]  # SGD reads it
    # The length is counted in epochs here: the iterations (null) are not a setting it uses, the epochs are.
    assert crf.settings_used()["optim"]["epochs"] == 3 and crf.settings_used()["optim"]["iterations"] is None
    by_iterations = tiny_config(data_root, tmp_path, "c", "loss.type=pce_crf", "optim.iterations=30")
    assert "epochs" not in by_iterations.settings_used()["optim"] and by_iterations.optim.epochs is None
