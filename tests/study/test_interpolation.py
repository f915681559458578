"""Notebook 04's helpers: aggregation over seeds (hand-computed), paired effects and their verdicts,
the written tables, missing runs, and one small end-to-end pass with a trained checkpoint."""

import csv
import io
import json
import math
import shutil
from collections import Counter
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from rloss.study.grid import ALL_LOSSES  # noqa: E402
from rloss.study.interpolation import (  # noqa: E402
    ROW_FIELDS,
    check_classes,
    check_parameters,
    describe_setup,
    checkpoint_paths,
    conclusions,
    evaluate_runs,
    example_panels,
    markdown_table,
    paired_effect,
    plot_examples,
    plot_metrics,
    resize_timing_table,
    rows_csv,
    save_figure,
    summarize,
    time_resizes,
    write_results,
)

COMBOS = [("bilinear", "bilinear"), ("bilinear", "bicubic"), ("bicubic", "bilinear"), ("bicubic", "bicubic"),
          ("nearest", "nearest")]


def row(loss, seed, combo, miou, bf=0.5, s=0.01, n=10):
    return {"loss": loss, "seed": seed, "input_interpolation": combo[0], "logit_interpolation": combo[1],
            "miou": miou, "boundary_f": bf, "median_s_per_image": s, "n_images": n, "pixel_accuracy": 0.9}


def grid(loss, base_by_seed, input_gain, logit_gain=0.0, seeds=(0, 1)):
    """Rows where bicubic input adds ``input_gain`` and bicubic logits ``logit_gain`` to a seed's base."""
    rows = []
    for seed in seeds:
        for combo in COMBOS:
            value = base_by_seed[seed]
            if combo == ("nearest", "nearest"):
                value -= 0.2
            else:
                value += input_gain * (combo[0] == "bicubic") + logit_gain * (combo[1] == "bicubic")
            rows.append(row(loss, seed, combo, value, bf=value / 2))
    return rows


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def test_summarize_mean_and_sample_std_over_seeds():
    rows = [row("pce", 0, COMBOS[0], 0.5, bf=0.2, s=0.010), row("pce", 1, COMBOS[0], 0.7, bf=0.4, s=0.030),
            row("pce", 2, COMBOS[0], 0.6, bf=0.3, s=0.020)]
    [s] = summarize(rows)
    assert s["loss"] == "pce" and (s["input_interpolation"], s["logit_interpolation"]) == COMBOS[0]
    assert s["n_seeds"] == 3 and s["seeds"] == [0, 1, 2] and s["n_images"] == 10
    assert s["miou_mean"] == pytest.approx(0.6)
    assert s["miou_std"] == pytest.approx(0.1)  # sqrt((0.01 + 0.01 + 0) / 2)
    assert s["boundary_f_mean"] == pytest.approx(0.3) and s["boundary_f_std"] == pytest.approx(0.1)
    assert s["median_s_per_image_mean"] == pytest.approx(0.02) and s["median_s_per_image_std"] == pytest.approx(0.01)


def test_summarize_two_seeds_one_seed_and_order():
    rows = [row("full", 0, COMBOS[1], 0.9), row("pce", 0, COMBOS[1], 0.5), row("pce", 1, COMBOS[1], 0.6),
            row("pce", 0, COMBOS[0], 0.4), row("pce", 1, COMBOS[0], 0.2)]
    summary = summarize(rows)
    # losses in the study's order (pce before full), combos in first-appearance order
    assert [(s["loss"], s["input_interpolation"], s["logit_interpolation"]) for s in summary] == [
        ("pce", *COMBOS[1]), ("pce", *COMBOS[0]), ("full", *COMBOS[1])]
    assert summary[0]["miou_mean"] == pytest.approx(0.55)
    assert summary[0]["miou_std"] == pytest.approx(math.sqrt(0.005))  # two values 0.1 apart: 0.1 / sqrt(2)
    assert summary[1]["miou_mean"] == pytest.approx(0.3) and summary[1]["miou_std"] == pytest.approx(0.2 / math.sqrt(2))
    assert summary[2]["n_seeds"] == 1 and summary[2]["miou_std"] is None


def test_summarize_refuses_a_repeated_seed_or_differing_image_counts():
    with pytest.raises(ValueError, match="seed listed twice"):
        summarize([row("pce", 0, COMBOS[0], 0.5), row("pce", 0, COMBOS[0], 0.6)])
    with pytest.raises(ValueError, match="different image counts"):
        summarize([row("pce", 0, COMBOS[0], 0.5, n=10), row("pce", 1, COMBOS[0], 0.6, n=12)])


# --------------------------------------------------------------------------------------------
# Paired effects and conclusions
# --------------------------------------------------------------------------------------------


def test_paired_effect_beyond_the_seed_spread():
    rows = grid("pce", {0: 0.50, 1: 0.52}, input_gain=0.05)
    e = paired_effect(rows, "pce", "input")
    assert sorted(e["diffs"]) == pytest.approx([0.05] * 4)  # 2 seeds x 2 logit modes
    assert e["mean"] == pytest.approx(0.05)
    assert e["seed_spread"] == pytest.approx(0.02 / math.sqrt(2))  # every combo's seeds are 0.02 apart
    assert e["verdict"] == "bicubic"
    logits = paired_effect(rows, "pce", "logit")
    assert logits["mean"] == pytest.approx(0.0, abs=1e-12) and logits["verdict"] in ("equal", "within spread")


def test_paired_effect_verdicts():
    assert paired_effect(grid("pce", {0: 0.5, 1: 0.7}, input_gain=0.05), "pce")["verdict"] == "within spread"
    assert paired_effect(grid("pce", {0: 0.5, 1: 0.51}, input_gain=-0.05), "pce")["verdict"] == "bilinear"
    assert paired_effect(grid("pce", {0: 0.5}, input_gain=0.05, seeds=(0,)), "pce")["verdict"] == "one seed"
    same = paired_effect(grid("pce", {0: 0.5}, input_gain=0.0, seeds=(0,)), "pce")
    assert same["verdict"] == "equal" and same["diffs"] == [0.0, 0.0]
    only_bilinear = [row("pce", 0, COMBOS[0], 0.5), row("pce", 0, COMBOS[4], 0.3)]
    assert paired_effect(only_bilinear, "pce")["verdict"] == "not run"
    bf = paired_effect(grid("pce", {0: 0.50, 1: 0.52}, input_gain=0.05), "pce", metric="boundary_f")
    assert bf["mean"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="factor"):
        paired_effect(only_bilinear, "pce", factor="output")


def test_conclusions_are_computed_from_the_numbers():
    rows = grid("pce", {0: 0.50, 1: 0.52}, input_gain=0.05) + grid("full", {0: 0.70, 1: 0.80}, input_gain=0.01,
                                                                     logit_gain=0.002)
    text = "\n".join(conclusions(rows))
    assert "pCE (2 seeds): best mIoU 0.5600, tied between 2 combinations (input/logits): bicubic/bilinear, bicubic/bicubic" in text
    assert "full supervision (2 seeds): best mIoU 0.7620 with bicubic/bicubic (input/logits), +0.0020 over the next, bicubic/bilinear" in text
    assert "bicubic is better by more than the seed spread" in text
    assert "nearest/nearest (the floor): mIoU 0.3100, -0.2500 from the best" in text
    assert "Bicubic input upscaling beats bilinear on mIoU by more than the seed spread for 1 of 2 losses (pCE); " \
           "bilinear beats it so for 0. In every paired comparison (same model, same images) bicubic is ahead " \
           "for 2 of 2 losses (pCE, full supervision) and behind for 0." in text
    # full's logit gain (0.002) is far inside its seed spread (0.07) but never changes sign.
    assert "Bicubic logit upsampling beats bilinear on mIoU by more than the seed spread for 0 of 2 losses; " \
           "bilinear beats it so for 0. In every paired comparison (same model, same images) bicubic is ahead " \
           "for 1 of 2 losses (full supervision) and behind for 0." in text
    # the other way round, and one seed
    flipped = grid("pce", {0: 0.50, 1: 0.52}, input_gain=-0.05) + grid("full", {0: 0.7}, input_gain=0.05, seeds=(0,))
    text = "\n".join(conclusions(flipped))
    assert "for 0 of 2 losses; bilinear beats it so for 1 (pCE); undecided (one seed or not run) for 1 (full supervision)." in text
    assert "one seed, so no seed spread to judge it by" in text


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------


def test_markdown_table_and_csv_hold_the_rows():
    rows = [row("pce", 0, COMBOS[0], 0.5, bf=0.25, s=0.004), row("pce", 1, COMBOS[0], 0.7, bf=0.35, s=0.006),
            row("pce", 0, COMBOS[2], 0.8, bf=0.1, s=0.010), row("pce", 1, COMBOS[2], 0.8, bf=0.1, s=0.010)]
    table = markdown_table(summarize(rows)).splitlines()
    assert table[0].startswith("| loss | input | logits | mIoU | boundary F | ms / image")
    assert len(table) == 2 + 2
    assert table[2] == "| pCE | bilinear | bilinear | 0.6000 ± 0.1414 | **0.3000 ± 0.0707** | 5.00 ± 1.41 | 2 | 10 |"
    assert table[3] == "| pCE | bicubic | bilinear | **0.8000 ± 0.0000** | 0.1000 ± 0.0000 | 10.00 ± 0.00 | 2 | 10 |"
    one = markdown_table(summarize(rows[:1])).splitlines()[2]
    assert "| **0.5000** | **0.2500** | 4.00 | 1 | 10 |" in one and "±" not in one

    parsed = list(csv.DictReader(io.StringIO(rows_csv(rows))))
    assert tuple(parsed[0]) == ROW_FIELDS and len(parsed) == 4
    assert [(p["loss"], p["seed"], p["input_interpolation"], float(p["miou"])) for p in parsed] == [
        ("pce", "0", "bilinear", 0.5), ("pce", "1", "bilinear", 0.7), ("pce", "0", "bicubic", 0.8),
        ("pce", "1", "bicubic", 0.8)]


def test_write_results_files(tmp_path):
    rows = grid("pce", {0: 0.5, 1: 0.52}, input_gain=0.05)
    written = write_results(tmp_path / "out", "demo", rows, meta={"data_root": "d", "split": "val", "device": "cpu"})
    assert {k: p.name for k, p in written.items()} == {
        "json": "interpolation_demo.json", "csv": "interpolation_demo.csv", "md": "interpolation_demo.md"}
    doc = json.loads(written["json"].read_text())
    assert doc["study_name"] == "demo" and doc["data_root"] == "d" and len(doc["rows"]) == 10
    assert set(doc["rows"][0]) == set(ROW_FIELDS) and len(doc["summary"]) == 5
    assert doc["conclusions"] == conclusions(rows)
    md = written["md"].read_text()
    assert md.startswith("# Input upscaling x logit upsampling: demo") and "data_root d, split val, device cpu" in md
    assert md.count("| pCE |") == 5
    assert len(written["csv"].read_text().splitlines()) == 11
    assert not list((tmp_path / "out").glob("*.part"))


def test_missing_or_unfinished_runs_are_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        checkpoint_paths(tmp_path, "small", ["pce", "full"], [0, 1])
    message = str(info.value)
    assert "run notebook 02 first" in message.lower()
    for name in ("small_pce_seed0", "small_pce_seed1", "small_full_seed0", "small_full_seed1"):
        assert str(tmp_path / name / "checkpoint.pt") in message
    for loss in ("pce", "full"):
        run = tmp_path / f"small_{loss}_seed0"
        run.mkdir()
        (run / "checkpoint.pt").write_bytes(b"x")
        (run / "metrics.json").write_text(json.dumps({"final": {"miou": 0.5}}))
    (tmp_path / "small_full_seed0" / "metrics.json").write_text(json.dumps({"final": None}))
    with pytest.raises(FileNotFoundError, match=r"not finished.*small_full_seed0.*notebook 02"):
        checkpoint_paths(tmp_path, "small", ["pce", "full"], [0])
    assert checkpoint_paths(tmp_path, "small", ["pce"], [0]) == {("pce", 0): tmp_path / "small_pce_seed0" / "checkpoint.pt"}
    with pytest.raises(ValueError, match="unknown loss"):
        checkpoint_paths(tmp_path, "small", ["crf"], [0])


@pytest.fixture
def parameters(notebook_parameters):
    """Notebook 04's defaults for check_parameters, its folders given, with ``changes``."""
    names = ("study_name", "losses", "seeds", "device", "split", "examples", "cpu_threads")
    defaults = notebook_parameters("04_bicubic_vs_bilinear", names)
    return lambda data_root, results_dir, **changes: {"data_root": data_root, "results_dir": results_dir,
                                                      **defaults, **changes}


@pytest.fixture
def split_root(tmp_path):
    (tmp_path / "data" / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "data" / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    return tmp_path / "data"


def test_the_notebook_defaults_pass_and_give_the_folders_as_paths(parameters, split_root, tmp_path):
    assert check_parameters(**parameters(str(split_root), str(tmp_path / "r"))) == (split_root, tmp_path / "r")
    every_loss = parameters(split_root, tmp_path, losses=list(ALL_LOSSES), seeds=(3, 1), device="cuda",
                                        examples=0, cpu_threads=0, study_name="a_b")
    assert check_parameters(**every_loss) == (split_root, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"device": "gpu"}, "device must be one of auto, cpu, cuda; got 'gpu'"),
    ({"losses": []}, "losses must be a non-empty list of distinct values from pce, pce_crf, full, pce_nc, pce_kernelcut; got []"),
    ({"losses": "pce"}, "losses must be a non-empty list of distinct values from pce, pce_crf, full, pce_nc, pce_kernelcut; got 'pce'"),
    ({"losses": ["pce", "pce"]}, "losses must be a non-empty list of distinct values from pce, pce_crf, full, pce_nc, pce_kernelcut; got ['pce', 'pce']"),
    ({"losses": ["pce", "crf"]}, "losses: unknown loss 'crf' (choose from pce, pce_crf, full, pce_nc, pce_kernelcut)"),
    ({"seeds": []}, "seeds must be a non-empty list of distinct integers >= 0; got []"),
    ({"seeds": 0}, "seeds must be a non-empty list of distinct integers >= 0; got 0"),
    ({"seeds": [0, 0]}, "seeds must be a non-empty list of distinct integers >= 0; got [0, 0]"),
    ({"seeds": [0, "1"]}, "seeds[1] must be an integer >= 0; got '1'"),
    ({"seeds": [True]}, "seeds[0] must be an integer >= 0; got True"),
    ({"seeds": [-1]}, "seeds[0] must be an integer >= 0; got -1"),
    ({"examples": -1}, "examples must be an integer >= 0; got -1"),
    ({"examples": 2.0}, "examples must be an integer >= 0; got 2.0"),
    ({"cpu_threads": None}, "cpu_threads must be an integer >= 0; got None"),
    ({"study_name": ""}, "study_name must be a run-name prefix such as 'small' (a plain folder name); got ''"),
    ({"study_name": "a/b"}, "study_name must be a run-name prefix such as 'small' (a plain folder name); got 'a/b'"),
    ({"study_name": ".."}, "study_name must be a run-name prefix such as 'small' (a plain folder name); got '..'"),
    ({"study_name": 4}, "study_name must be a run-name prefix such as 'small' (a plain folder name); got 4"),
])
def test_each_bad_parameter_is_one_line_naming_it(parameters, split_root, tmp_path, changes, message):
    with pytest.raises(ValueError) as info:
        check_parameters(**parameters(split_root, tmp_path, **changes))
    assert str(info.value) == message


def test_a_data_root_without_the_split_says_to_run_notebook_01(parameters, split_root, tmp_path):
    for data_root, split in ((tmp_path / "nowhere", "val"), (split_root, "test")):
        with pytest.raises(FileNotFoundError) as info:
            check_parameters(**parameters(data_root, tmp_path, split=split))
        assert str(info.value) == (f"{data_root}: no split {split!r} (ImageSets/Segmentation/{split}.txt); run notebook "
                                   "01 first, or set data_root to a data set in the VOC layout")
    assert not (tmp_path / "nowhere").exists()


def test_the_resize_timing_table_shows_milliseconds_per_combo():
    timing = [{"input_interpolation": "bilinear", "logit_interpolation": "bicubic", "input_resize_s": 0.0012,
               "logit_resize_s": 5e-5}]
    assert resize_timing_table(timing).splitlines() == [
        "the resizing alone, median ms per image (no network):",
        "      input/logits     input    logits",
        "  bilinear/bicubic    1.2000    0.0500",
    ]


def fake_models_and_data(tmp_path, image_shapes, trained_on):
    """Two predictors (network side 64) trained on ``trained_on``, and a split of images of ``image_shapes``."""
    predictors = {(loss, 0): SimpleNamespace(run_name=f"s_{loss}_seed0", model_name="tiny", size=64, device="cpu",
                                             config=SimpleNamespace(data=SimpleNamespace(root=str(trained_on))))
                  for loss in ("pce", "full")}
    return predictors, FakeSplit([np.zeros((*shape, 3), np.uint8) for shape in image_shapes])


class FakeSplit:
    """What describe_setup reads of a SegmentationFolder."""
    split = "val"

    def __init__(self, images):
        self.images = {f"i{k}": image for k, image in enumerate(images)}
        self.ids = list(self.images)

    def __len__(self):
        return len(self.images)

    def load(self, sample_id):
        return SimpleNamespace(image=self.images[sample_id])


def test_describe_setup_counts_the_images_the_network_upscales(tmp_path):
    predictors, data = fake_models_and_data(tmp_path, [(40, 30), (64, 64), (40, 30)], tmp_path / "data")
    setup = describe_setup(predictors, data, tmp_path / "data")
    assert setup["sizes"] == Counter({(40, 30): 2, (64, 64): 1}) and setup["network_sides"] == {64}
    lines = setup["lines"]
    assert lines[0].startswith("2 models on cpu (") and lines[0].endswith("CPU threads): s_pce_seed0, s_full_seed0")
    assert lines[1] == f"{tmp_path / 'data'} / val: 3 images, sizes (h, w): {{(40, 30): 2, (64, 64): 1}}"
    assert lines[2:] == ["  s_pce_seed0: tiny, network short side 64 px", "  s_full_seed0: tiny, network short side 64 px",
                         "images upscaled to the network: 2 of 3"]

    predictors, data = fake_models_and_data(tmp_path, [(64, 80)], tmp_path / "elsewhere")
    lines = describe_setup(predictors, data, tmp_path / "data")["lines"]
    assert lines[2].endswith(f"(trained on {tmp_path / 'elsewhere'}, evaluated on another set)")
    assert lines[-2] == "images upscaled to the network: 0 of 1"
    assert lines[-1].startswith(f"WARNING: no image of {tmp_path / 'data'} is smaller than the network input (64 px)")


# --------------------------------------------------------------------------------------------
# End to end with a small trained model
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rloss.engine.config import load_config
    from rloss.data.downscale import downscale_dataset
    from rloss.data.synthetic import generate_synthetic
    from rloss.study.grid import study_grid, train_runs

    tmp = tmp_path_factory.mktemp("interp")
    generate_synthetic(tmp / "s48", size=48, n_train=4, n_val=3, seed=0, progress=False)
    downscale_dataset(tmp / "s48", tmp / "s24", size=24, image_filter="area", progress=False)
    base = load_config(None, [f"data.root={tmp}/s24", "data.crop_size=40", "data.batch_size=4", "optim.epochs=1",
                              f"run.results_dir={tmp}/results", "run.device=cpu", "run.eval_every_epochs=1",
                              "loss.kernel=exact"])
    train_runs(study_grid(base, "t", losses=("pce",), seeds=(0,)))
    return tmp


def iou_by_hand(preds, masks, k):
    ious = []
    for c in range(k):
        inter = sum(int(((p == c) & (m == c) & (m != 255)).sum()) for p, m in zip(preds, masks))
        union = sum(int((((p == c) | (m == c)) & (m != 255)).sum()) for p, m in zip(preds, masks))
        if union:
            ious.append(inter / union)
    return float(np.mean(ious))


@pytest.fixture
def one_thread():
    """One torch thread: on a busy machine several make single-image calls erratic (0.5 s instead of 2 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_end_to_end_rows_match_a_hand_computed_miou(trained, tmp_path, one_thread):
    from rloss.engine.infer import load_predictor

    paths = checkpoint_paths(trained / "results", "t", ["pce"], [0])
    predictor = load_predictor(paths[("pce", 0)], "cpu")
    data = check_classes(predictor, trained / "s24", "val")
    rows = evaluate_runs({("pce", 0): predictor}, trained / "s24", "val", combos=COMBOS)
    assert [(r["input_interpolation"], r["logit_interpolation"]) for r in rows] == COMBOS
    assert all(r["loss"] == "pce" and r["seed"] == 0 and r["n_images"] == 3 for r in rows)
    assert all(0 <= r["miou"] <= 1 and 0 <= r["boundary_f"] <= 1 and r["median_s_per_image"] > 0 for r in rows)

    samples = [data.load(i) for i in data.ids]
    assert samples[0].image.shape[:2] == (24, 24)
    predictions, inputs = example_panels(predictor, samples, COMBOS)
    for c, combo in enumerate(COMBOS):
        preds = [predictions[s.id][combo] for s in samples]
        assert rows[c]["miou"] == pytest.approx(iou_by_hand(preds, [s.mask for s in samples], predictor.num_classes))
    assert inputs[samples[0].id]["bicubic"].shape == (40, 40, 3)

    summary = summarize(rows)
    timing = time_resizes([s.image for s in samples], predictor.size, predictor.num_classes, COMBOS, repeats=1)
    assert len(timing) == 5 and all(t["input_resize_s"] >= 0 and t["logit_resize_s"] >= 0 for t in timing)
    assert save_figure(plot_metrics(summary, rows, title="t"), tmp_path / "m.png").stat().st_size > 0
    fig = plot_examples(samples[:2], predictions, inputs)
    assert save_figure(fig, tmp_path / "e.png").stat().st_size > 0
    assert len(conclusions(rows, summary, timing)) > 3


def test_a_data_set_with_other_classes_is_refused(trained, tmp_path):
    from rloss.engine.infer import load_predictor

    predictor = load_predictor(trained / "results" / "t_pce_seed0" / "checkpoint.pt", "cpu")
    other = tmp_path / "other"
    shutil.copytree(trained / "s24", other)
    names = (other / "classes.txt").read_text().split()
    (other / "classes.txt").write_text("\n".join([names[0], *reversed(names[1:])]) + "\n")
    with pytest.raises(ValueError, match="not the classes the checkpoint"):
        check_classes(predictor, other, "val")


def test_a_floor_that_wins_is_said_so():
    rows = [row("pce", 0, COMBOS[0], 0.50), row("pce", 0, COMBOS[2], 0.52), row("pce", 0, COMBOS[4], 0.53)]
    text = "\n".join(conclusions(rows))
    assert "nearest/nearest, meant as the floor, has the best mIoU (or ties it): +0.0100 over the best smooth " \
           "combination, bicubic/bilinear" in text
