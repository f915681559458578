"""The DenseCRF weight sweep: it scores on a share of train held out, and never reads val."""

import json
import sys

import pytest

from rloss.engine.config import load_config
from rloss.data.folder import split_holdout
from rloss.engine.runs import CHECKPOINT, read_run_config
from rloss.engine.sweep import read_sweep, sweep_crf_weight, two_phase_base


def test_holdout_split_is_a_partition_fixed_by_the_ids():
    ids = [f"img{i:03d}" for i in range(50)]
    kept, held = split_holdout(ids, 0.2)
    assert len(held) == 10 and set(kept) | set(held) == set(ids) and not set(kept) & set(held)
    assert kept == [i for i in ids if i in set(kept)]  # the list's order is kept
    kept_rev, held_rev = split_holdout(ids[::-1], 0.2)
    assert set(held_rev) == set(held)  # membership does not depend on the order
    _, few = split_holdout(ids[:3], 0.01)
    assert len(few) == 1  # at least one image each way
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(ids, 1.0)


def test_sweep_scores_on_held_out_train_images_and_never_reads_val(tmp_path):
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path / "data"
    generate_synthetic(root, size=32, n_train=10, n_val=4, seed=0, progress=False)
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()  # any read of val would now fail
    base = load_config(None, [
        f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "loss.kernel=exact",
        "optim.iterations=1", "optim.min_epochs=2",  # the floor of passes raises 1 iteration to 2 (1 per epoch)
        f"run.results_dir={tmp_path / 'results'}", "run.device=cpu", "run.eval_every_epochs=1",
    ])
    result = sweep_crf_weight(base, "t", weights=[2.0, 0.0], holdout_fraction=0.3)

    assert [p["relative_weight"] for p in result["points"]] == [0.0, 2.0] and result["complete"]
    assert result["best_by_score"] == max(result["points"], key=lambda p: p["heldout_miou"])["weight"]
    # Each weight's gain over pCE and its bootstrap interval (3 held-out images: wide), and a choice
    # that follows the rule: 2 only if its interval lies above 0, else the published 1x.
    zero, two = result["points"]
    assert two["gain_over_pce"] == two["heldout_miou"] - zero["heldout_miou"]
    assert two["gain_low"] <= two["gain_over_pce"] <= two["gain_high"] and zero["gain_low"] == zero["gain_high"] == 0
    assert result["noise"]["images"] == 3
    assert result["best"] == (2.0 if two["gain_low"] > 0 else 1.0) and result["beats_noise"] == (two["gain_low"] > 0)
    assert read_sweep(tmp_path / "results", "t") == result
    _, held = split_holdout([f"{i}" for i in (root / "ImageSets/Segmentation/train.txt").read_text().split()], 0.3)
    for point in result["points"]:
        metrics = json.loads((tmp_path / "results" / point["run"] / "metrics.json").read_text())
        assert metrics["data"]["evaluated_on"] == "held-out share of train"
        assert metrics["data"]["val_images"] == len(held) == 3
        assert metrics["data"]["train_images"] == 7
        assert metrics["final"]["iteration"] == point["iterations"] == 2  # what was trained, not what was asked
    assert result["iterations"] == 2
    crf_run = json.loads((tmp_path / "results" / "t_sweep_w2" / "metrics.json").read_text())
    assert crf_run["crf_weight"] == pytest.approx(result["points"][1]["absolute_weight"])


def test_a_two_phase_sweep_fine_tunes_pce_trained_on_the_kept_share_and_never_reads_val(tmp_path):
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path / "data"
    generate_synthetic(root, size=32, n_train=10, n_val=4, seed=0, progress=False)
    (root / "ImageSets" / "Segmentation" / "val.txt").unlink()  # any read of val would now fail
    results = tmp_path / "results"
    base = load_config(None, [
        f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "optim.epochs=2", "loss.kernel=exact",
        f"run.results_dir={results}", "run.device=cpu", "run.eval_every_epochs=1",
    ])
    tuned = two_phase_base(base, "t", finetune_iterations=7 // 4, holdout_fraction=0.3)
    start = json.loads((results / "t_sweep_start" / "metrics.json").read_text())
    # The start is pCE with the base schedule, trained on the kept 7 images and scored on the held-out 3.
    assert read_run_config(results / "t_sweep_start").loss.type == "pce"
    assert start["final"]["iteration"] == 2 * (7 // 4)
    assert start["data"]["train_images"] == 7 and start["data"]["evaluated_on"] == "held-out share of train"
    assert tuned.loss.init_from == str(results / "t_sweep_start" / CHECKPOINT) and tuned.optim.iterations == 1
    result = sweep_crf_weight(tuned, "t", weights=[0.0, 2.0], holdout_fraction=0.3)
    assert result["fine_tunes"] == tuned.loss.init_from
    for point in result["points"]:  # each weight fine-tunes the start for one epoch (1 iteration) on the same kept share
        metrics = json.loads((results / point["run"] / "metrics.json").read_text())
        assert metrics["final"]["iteration"] == 7 // 4 and metrics["data"]["train_images"] == 7
        assert read_run_config(results / point["run"]).loss.init_from == tuned.loss.init_from


def test_sweep_trains_its_runs_in_groups_and_stops_at_the_time_budget(tmp_path):
    """Two runs at once: a budget spent by the first group stops the sweep after it, with the
    choice made among its two weights."""
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path / "data"
    generate_synthetic(root, size=32, n_train=10, n_val=4, seed=0, progress=False)
    base = load_config(None, [
        f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "optim.epochs=1", "loss.kernel=exact",
        f"run.results_dir={tmp_path / 'results'}", "run.device=cpu", "run.eval_every_epochs=1",
    ])
    result = sweep_crf_weight(base, "t", weights=[0.0, 1.0, 4.0], holdout_fraction=0.3,
                              time_budget_s=0.0, parallel_runs=2)
    assert [p["relative_weight"] for p in result["points"]] == [0.0, 1.0] and not result["complete"]
    assert result["best"] in (0.0, 1.0)  # 1 beats pCE beyond the noise, or is the published fallback, or harms
    assert not (tmp_path / "results" / "t_sweep_w4").exists()


def test_read_sweep_says_how_to_make_a_missing_result(tmp_path):
    with pytest.raises(ValueError, match="sweep-weight --name mine"):
        read_sweep(tmp_path, "mine")


def test_a_sweep_without_matplotlib_writes_its_result_and_says_there_is_no_plot(tmp_path, monkeypatch, capsys):
    """matplotlib is in the study's extra: `pip install rloss[train]` then `sweep-weight` must not fail
    after all its training; with it, the plot lands beside the result."""
    from rloss.cli import main
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path / "data"
    generate_synthetic(root, size=32, n_train=10, n_val=4, seed=0, progress=False)
    settings = [f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "loss.kernel=exact", "optim.iterations=1",
                f"run.results_dir={tmp_path / 'results'}", "run.device=cpu", "run.eval_every_epochs=1"]
    command = ["sweep-weight", "--name", "t", "--weights", "0,1", "--holdout", "0.3"] + [f"--set={s}" for s in settings]
    with monkeypatch.context() as without:
        without.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
        without.setitem(sys.modules, "matplotlib.pyplot", None)
        assert main(command) == 0
    result = read_sweep(tmp_path / "results", "t")
    assert [p["weight"] for p in result["points"]] == [0.0, 1.0]
    assert not (tmp_path / "results" / "t_weight_sweep.png").exists()
    assert "sweep t: no plot (matplotlib is missing: pip install 'rloss[study]')" in capsys.readouterr().err
    assert main(command) == 0  # finished runs are read back, and the plot is drawn now
    assert (tmp_path / "results" / "t_weight_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
