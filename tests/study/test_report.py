"""The mIoU table on a hand-written results folder: means, spreads, gains, files, conclusions, plots."""

import csv
import io
import json
import math

import pytest

from rloss.study import report
from rloss.engine.config import load_config
from rloss.study.grid import load_runs, summarize

CLASSES = ["background", "ellipse", "star"]

# (setting data root, loss, seed) -> final mIoU, median s/iteration, DenseCRF share
SETTING_A = {  # 2 seeds x 3 losses
    ("pce", 0): (0.50, 0.10, None), ("pce", 1): (0.54, 0.30, None),
    ("pce_crf", 0): (0.60, 0.50, 0.40), ("pce_crf", 1): (0.66, 0.70, 0.50),
    ("full", 0): (0.70, 0.10, None), ("full", 1): (0.72, 0.10, None),
}
SETTING_B = {  # one seed, no full supervision, DenseCRF worse than pCE
    ("pce", 0): (0.41, 0.20, None), ("pce_crf", 0): (0.37, 0.90, 0.25),
}


def write_run(results, study, data_root, side, loss, seed, miou, seconds, share, evals=None, settings=(),
              per_class=None):
    name = f"{study}_{loss}_seed{seed}"
    cfg = load_config(None, [f"data.root={data_root}", "data.crop_size=32", f"loss.type={loss}",
                             f"run.seed={seed}", f"run.name={name}", f"run.results_dir={results}", *settings])
    run_dir = results / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    per_class = per_class or {"background": miou + 0.2, "ellipse": miou - 0.1, "star": miou - 0.1}
    evals = evals or [{"epoch": 1, "iteration": 5, "miou": miou - 0.05, "pixel_accuracy": 0.8,
                       "per_class_iou": per_class},
                      {"epoch": 2, "iteration": 10, "miou": miou, "pixel_accuracy": 0.9, "per_class_iou": per_class}]
    metrics = {
        "run": name, "data": {"train_images": 8, "val_images": 4, "image_side": side}, "evals": evals,
        "final": {"miou": miou, "pixel_accuracy": 0.9, "per_class_iou": per_class, "epoch": 2, "iteration": 10},
        "timings": {"median_iteration_s": seconds, "crf_share": share, "median_crf_s": None,
                    "timed_iterations": 9, "processes": 1, "device": "cpu"},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for (loss, seed), values in SETTING_A.items():
        write_run(root, "alpha", "/data/fake40", 40, loss, seed, *values)
    for (loss, seed), values in SETTING_B.items():
        write_run(root, "beta", "/data/fake64", 64, loss, seed, *values)
    return root


@pytest.fixture(scope="module")
def table(results):
    return report.miou_table(summarize(load_runs(results)))


def row_of(table, data):
    [row] = [r for r in table if r["data"] == data]
    return row


def sample_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_table_means_stds_gains(table):
    assert len(table) == 2
    a = row_of(table, "fake40")
    assert (a["network"], a["resolution_px"], a["crop_px"]) == ("deeplabv3plus_micro", 40, 32)
    assert a["pce_miou"] == pytest.approx(52.0)
    assert a["pce_crf_miou"] == pytest.approx(63.0)
    assert a["full_miou"] == pytest.approx(71.0)
    assert a["pce_std"] == pytest.approx(sample_std([50, 54]))  # 2.83
    assert a["pce_crf_std"] == pytest.approx(sample_std([60, 66]))  # 4.24
    assert a["full_std"] == pytest.approx(sample_std([70, 72]))
    assert (a["pce_seeds"], a["pce_crf_seeds"], a["full_seeds"]) == (2, 2, 2)
    assert a["crf_gain_pp"] == pytest.approx(11.0)
    assert a["full_gain_pp"] == pytest.approx(19.0)
    assert a["pce_s_per_iteration"] == pytest.approx(0.2)  # median of 0.1 and 0.3
    assert a["pce_crf_s_per_iteration"] == pytest.approx(0.6)
    assert a["full_s_per_iteration"] == pytest.approx(0.1)
    assert a["crf_share"] == pytest.approx(0.45)

    b = row_of(table, "fake64")
    assert b["resolution_px"] == 64
    assert b["pce_miou"] == pytest.approx(41.0) and b["pce_std"] is None and b["pce_seeds"] == 1
    assert b["full_miou"] is None and b["full_seeds"] == 0 and b["full_gain_pp"] is None
    assert b["crf_gain_pp"] == pytest.approx(-4.0)


def test_markdown_and_csv(table):
    md = report.to_markdown(table)
    line_a = next(line for line in md.splitlines() if "| fake40 |" in line)
    for text in ("52.0 ± 2.8 (n=2)", "63.0 ± 4.2 (n=2)", "71.0 ± 1.4 (n=2)", "+11.0", "+19.0", "45.0 %"):
        assert text in line_a, text
    line_b = next(line for line in md.splitlines() if "| fake64 |" in line)
    assert "41.0 (n=1)" in line_b and "37.0 (n=1)" in line_b and "-4.0" in line_b
    assert "| — |" in line_b  # no full-supervision runs: no mIoU, no gain

    rows = list(csv.DictReader(io.StringIO(report.to_csv(table))))
    assert list(rows[0]) == list(report.TABLE_COLUMNS)
    a = next(r for r in rows if r["data"] == "fake40")
    assert float(a["pce_crf_miou"]) == pytest.approx(63.0)
    assert float(a["pce_crf_std"]) == pytest.approx(sample_std([60, 66]), abs=1e-4)
    assert float(a["crf_gain_pp"]) == pytest.approx(11.0) and a["pce_seeds"] == "2"
    b = next(r for r in rows if r["data"] == "fake64")
    assert b["full_miou"] == "" and b["pce_std"] == "" and b["full_seeds"] == "0"


def test_write_report_keeps_published_table_apart(results, tmp_path):
    paths = report.write_report(results, out_dir=tmp_path)
    assert paths["markdown"] == tmp_path / "miou_table.md" and paths["csv"] == tmp_path / "miou_table.csv"
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))
    md = paths["markdown"].read_text()
    ours, published = md.split("## " + report.PUBLISHED_TITLE)
    assert "not measured here" in report.PUBLISHED_TITLE
    assert "| fake40 |" in ours and "| fake64 |" in ours
    for p in report.PUBLISHED_TABLE1:  # the published rows only under their own heading, never in ours
        assert p["network"] not in ours and p["network"] in published
        assert f"| {p['network']} |" in published
    assert "| fake40 |" not in published
    for url, _ in report.PUBLISHED_SOURCES.values():
        assert url in published
    text = paths["csv"].read_text()
    assert all(p["network"] not in text for p in report.PUBLISHED_TABLE1)
    assert len(list(csv.DictReader(io.StringIO(text)))) == 2

    only_alpha = report.write_report(results, study_names=["alpha"], out_dir=tmp_path / "alpha")
    assert [r["data"] for r in only_alpha["table"]] == ["fake40"]


def test_published_figures_as_sourced():
    by_name = {p["network"]: p for p in report.PUBLISHED_TABLE1}
    assert (by_name["DeepLab-largeFOV"]["pce"], by_name["DeepLab-largeFOV"]["pce_crf"],
            by_name["DeepLab-largeFOV"]["full"]) == (55.8, 62.3, 63.0)
    assert by_name["DeepLab-MSc-largeFOV"]["pce"] is None  # "n/a" in the source
    md = report.published_markdown()
    assert md.startswith(f"**{report.PUBLISHED_TITLE}**")
    line = next(line for line in md.splitlines() if line.startswith("| DeepLab-VGG16 |"))
    assert "| 60.7 | 64.7 | 68.8 | +4.0 | +8.1 |" in line
    line = next(line for line in md.splitlines() if line.startswith("| DeepLab-MSc-largeFOV |"))
    assert "n/a in source" in line


def test_select_runs(results):
    runs = load_runs(results)
    assert len(report.select_runs(runs, None)) == 8
    assert {r["run"] for r in report.select_runs(runs, "beta")} == {"beta_pce_seed0", "beta_pce_crf_seed0"}
    assert len(report.select_runs(runs, ["alpha", "beta"])) == 8
    assert report.select_runs(runs, ["gamma"]) == []


def test_runs_found_says_what_the_table_holds_or_what_to_run(results, table):
    runs = load_runs(results)
    assert report.runs_found(runs, table, results) == f"8 finished runs in 2 settings under {results}"
    beta = report.select_runs(runs, "beta")
    assert report.runs_found(beta, report.miou_table(summarize(beta)), results, "beta") == \
        f"2 finished runs in 1 settings under {results} (studies beta)"
    assert report.runs_found([], [], results, ["gamma", "delta"]) == (
        f"No finished runs under {results} in the studies gamma, delta: run notebooks 02/03 first. "
        "The table, plots and browser below stay empty.")


def test_report_figures_are_the_plots_by_file_name_and_show_as_the_saved_png(results, table, tmp_path):
    runs = load_runs(results)
    figures = report.report_figures(table, runs)
    assert list(figures) == ["miou_learning_curves.png", "miou_per_class_iou.png", "miou_crf_time_share.png",
                             "miou_crf_gain_along_training.png"]
    assert [ax.get_title() for ax in figures["miou_learning_curves.png"].axes] == \
        [ax.get_title() for ax in report.plot_learning_curves(runs).axes]
    assert sorted(bar.get_height() for bar in figures["miou_crf_time_share.png"].axes[0].patches) == \
        pytest.approx([25.0, 45.0])
    fig = figures["miou_crf_time_share.png"]
    assert report.figure_png(fig) == report.save_figure(fig, tmp_path / "share.png").read_bytes()


def test_conclusions_follow_the_numbers(table):
    lines = report.conclusions(table)
    a = next(line for line in lines if "fake40" in line)
    assert "pCE < pCE + DenseCRF <= full holds (52.0 / 63.0 / 71.0)" in a
    assert "gain of +11.0 pp exceeds the seed spread (4.2 pp)" in a
    assert "45% of an iteration" in a
    b = next(line for line in lines if "fake64" in line)
    assert "pCE >= pCE + DenseCRF" in b and "unknown with one seed" in b

    # The same row with a wider spread: the verdict flips, computed, not written in.
    wide = dict(row_of(table, "fake40"), pce_crf_std=12.0, full_miou=60.0)
    [line] = report.conclusions([wide])
    assert "does not hold" in line and "does not exceed the seed spread (12.0 pp)" in line
    assert report.conclusions([]) == ["No finished runs: there is nothing to conclude yet."]


def test_empty_table():
    assert report.miou_table([]) == []
    assert "No finished runs" in report.to_markdown([])
    assert report.to_csv([]).strip() == ",".join(report.TABLE_COLUMNS)
    for fig in (report.plot_learning_curves([]), report.plot_per_class_iou([]), report.plot_crf_share([])):
        assert fig.axes and fig.axes[0].texts  # a figure saying there is nothing to plot


def test_plots(results, table, tmp_path):
    runs = load_runs(results)
    fig = report.plot_learning_curves(runs)
    assert [ax.get_title() for ax in fig.axes] == ["pCE", "pCE + DenseCRF", "full supervision"]
    crf_axis = fig.axes[1]
    assert len(crf_axis.lines) == 3  # alpha's two seeds and beta's one
    line = next(ln for ln in crf_axis.lines if ln.get_label() == "alpha_pce_crf_seed1")
    assert list(line.get_xdata()) == [5, 10]
    assert list(line.get_ydata()) == pytest.approx([61.0, 66.0])

    fig = report.plot_per_class_iou(runs)
    assert len(fig.axes) == 2  # one panel per setting
    alpha = next(ax for ax in fig.axes if "fake40" in ax.get_title())
    heights = [bar.get_height() for bar in alpha.patches]
    assert len(heights) == len(CLASSES) * 3
    assert heights[0] == pytest.approx(72.0)  # pCE background: mean of 70 and 74

    fig = report.plot_crf_share(table)
    bars = fig.axes[0].patches
    assert sorted(bar.get_height() for bar in bars) == pytest.approx([25.0, 45.0])
    path = report.save_figure(fig, tmp_path / "share.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_phase_densecrf_runs_get_their_own_row(tmp_path):
    for (loss, seed), values in SETTING_A.items():
        write_run(tmp_path, "alpha", "/data/fake40", 40, loss, seed, *values)
    # Two fine-tuned DenseCRF runs of the same setting (loss.init_from set).
    for seed, miou in ((0, 0.80), (1, 0.84)):
        name = f"alpha2_pce_crf_seed{seed}"
        write_run(tmp_path, "alpha2", "/data/fake40", 40, "pce_crf", seed, miou, 0.5, 0.4)
        cfg = load_config(tmp_path / name / "config.yaml")
        cfg.loss.init_from = str(tmp_path / f"alpha_pce_seed{seed}" / "checkpoint.pt")
        (tmp_path / name / "config.yaml").write_text(cfg.to_yaml())
    rows = summarize(load_runs(tmp_path))
    assert [r["schedule"] for r in rows] == ["one-phase", "two-phase"]
    one, two = rows
    assert one["pce_crf_miou"] == pytest.approx(0.63) and one["pce_crf_seeds"] == 2
    assert two["pce_crf_miou"] == pytest.approx(0.82) and two["pce_crf_seeds"] == 2
    for row in rows:  # the same pCE and full runs in both
        assert row["pce_miou"] == pytest.approx(0.52) and row["full_miou"] == pytest.approx(0.71)
    table = report.miou_table(rows)
    assert table[1]["crf_gain_pp"] == pytest.approx(30.0)
    md = report.to_markdown(table).splitlines()
    assert "fine-tuned from pCE" in md[3] and "fine-tuned" not in md[2]
    assert next(csv.DictReader(io.StringIO(report.to_csv(table))))["schedule"] == "one-phase"


def test_runs_of_two_weights_or_two_schedules_never_share_a_row(tmp_path):
    for seed, (pce, full) in enumerate(((0.50, 0.70), (0.54, 0.72))):
        write_run(tmp_path, "s", "/data/d", 40, "pce", seed, pce, 0.1, None)
        write_run(tmp_path, "s", "/data/d", 40, "full", seed, full, 0.1, None)
    for study, weight, mious in (("w1", 1, (0.60, 0.62)), ("w4", 4, (0.40, 0.44))):
        for seed, miou in enumerate(mious):  # the same loss and seeds, two weights: two studies' runs
            write_run(tmp_path, study, "/data/d", 40, "pce_crf", seed, miou, 0.2, 0.3,
                      settings=[f"loss.crf_relative_weight={weight}"])
    # pCE runs trained twice as long are another setting, with no DenseCRF runs beside them.
    write_run(tmp_path, "long", "/data/d", 40, "pce", 0, 0.58, 0.1, None, settings=["optim.epochs=60"])
    rows = summarize(load_runs(tmp_path))
    assert len(rows) == 3
    by_weight = {r["crf_relative_weight"]: r for r in rows if r["pce_crf_seeds"]}
    assert by_weight[1.0]["pce_crf_miou"] == pytest.approx(0.61) and by_weight[1.0]["pce_crf_seeds"] == 2
    assert by_weight[4.0]["pce_crf_miou"] == pytest.approx(0.42) and by_weight[4.0]["pce_crf_seeds"] == 2
    for row in by_weight.values():  # both beside the same pCE and full runs of 30 epochs
        assert row["pce_miou"] == pytest.approx(0.52) and row["pce_seeds"] == 2 and row["full_seeds"] == 2
        assert "loss.crf_relative_weight" in row["differs"]
    [long] = [r for r in rows if not r["pce_crf_seeds"]]
    assert long["pce_miou"] == pytest.approx(0.58) and long["pce_seeds"] == 1 and "optim.epochs=60" in long["differs"]
    md = report.to_markdown(report.miou_table(rows))
    assert "differs from the other rows" in md and "optim.epochs=60" in md


def test_study_names_are_matched_exactly(tmp_path):
    for study in ("small", "small2", "small_sweep_w1"):
        write_run(tmp_path, study, "/data/d", 40, "pce", 0, 0.5, 0.1, None)
    runs = load_runs(tmp_path)
    assert {r["run"] for r in report.select_runs(runs, "small")} == {"small_pce_seed0"}
    assert {r["run"] for r in report.select_runs(runs, ["small2"])} == {"small2_pce_seed0"}


def _regression_rows(tmp_path, crf_mious, crf_star):
    for seed, miou in enumerate((0.70, 0.72)):
        write_run(tmp_path, "r", "/data/d", 40, "pce", seed, miou, 0.1, None,
                  per_class={"background": 0.9, "ellipse": 0.6, "star": 0.6})
    for seed, miou in enumerate(crf_mious):
        write_run(tmp_path, "r", "/data/d", 40, "pce_crf", seed, miou, 0.1, 0.2,
                  per_class={"background": 0.9, "ellipse": 0.6, "star": crf_star}, settings=["loss.crf_relative_weight=16"])
    return report.miou_table(summarize(load_runs(tmp_path)))


def test_a_regularizer_below_pce_by_more_than_the_spread_is_called_a_regression(tmp_path):
    [row] = _regression_rows(tmp_path, (0.45, 0.47), crf_star=0.05)
    flag = report.regression(row)
    assert flag.startswith("REGRESSION") and "25.0 pp below pCE" in flag
    assert "star (5% vs 60% with pCE)" in flag and "ellipse" not in flag
    assert "16x" in flag and "sweep-weight" in flag
    assert flag in report.conclusions([row])[0]


def test_a_small_loss_within_the_spread_is_not_a_regression(tmp_path):
    [row] = _regression_rows(tmp_path, (0.70, 0.71), crf_star=0.58)  # 0.5 pp below, spread 1.4 pp
    assert report.regression(row) is None
    assert "REGRESSION" not in report.conclusions([row])[0]


def _curve(values):
    return [{"epoch": i + 1, "iteration": 10 * (i + 1), "miou": v, "pixel_accuracy": 0.9, "per_class_iou": {}}
            for i, v in enumerate(values)]


def test_convergence_is_the_gain_over_the_last_quarter(tmp_path):
    from rloss.study.grid import convergence

    flat = {"evals": _curve([0.3, 0.5, 0.6, 0.65, 0.70, 0.700, 0.702, 0.705])}
    rising = {"evals": _curve([0.3, 0.4, 0.5, 0.55, 0.60, 0.63, 0.66, 0.70])}
    few = {"evals": _curve([0.3, 0.7])}
    # flat: 80 iterations, the last quarter from 60 (0.702) to 80 (0.705): +0.3 pp
    assert convergence(flat)["late_gain"] == pytest.approx(0.005) and convergence(flat)["converged"]
    assert convergence(rising)["late_gain"] == pytest.approx(0.07) and not convergence(rising)["converged"]
    assert convergence(few)["evals"] == 2 and not convergence(few)["converged"]
    # 16 evaluations, flat at 0.80 over the last quarter (120..160) but for one low evaluation at its
    # start: the end points alone would read +4 pp; the median of the 10 pairwise slopes is 0.
    dip = {"evals": _curve([0.5 + 0.02 * i for i in range(11)] + [0.76, 0.80, 0.80, 0.80, 0.80])}
    assert convergence(dip)["late_gain"] == pytest.approx(0.0) and convergence(dip)["converged"]
    # Rising steadily by 1 pp per evaluation over the last quarter (40 iterations): +4 pp.
    steady = {"evals": _curve([0.5 + 0.01 * i for i in range(16)])}
    assert convergence(steady)["late_gain"] == pytest.approx(0.04) and not convergence(steady)["converged"]

    write_run(tmp_path, "c", "/data/d", 40, "pce", 0, 0.705, 0.1, None, evals=flat["evals"])
    write_run(tmp_path, "c", "/data/d", 40, "full", 0, 0.70, 0.1, None, evals=rising["evals"])
    runs = load_runs(tmp_path)
    [row] = report.miou_table(summarize(runs))
    note = report.convergence_note(row, runs)
    assert "1 of 2 runs NOT converged" in note and "c_full_seed0 (+7.0 pp" in note and "c_pce_seed0" not in note


def test_a_two_phase_gain_continues_its_pce_run_and_compares_with_its_end_point(tmp_path):
    # pCE runs end at iteration 10 (mIoU 0.50 and 0.54); each DenseCRF run fine-tunes its seed's pCE run
    # for 10 iterations: its evaluations continue at 15 and 20, against the pCE end point.
    from rloss.study.grid import curve, gain_along_training

    for seed, (pce_end, crf_curve) in enumerate([(0.50, [0.52, 0.58]), (0.54, [0.55, 0.60])]):
        write_run(tmp_path, "t", "/data/d", 40, "pce", seed, pce_end, 0.1, None)
        evals = [{"epoch": i + 1, "iteration": 5 * (i + 1), "miou": v, "pixel_accuracy": 0.9, "per_class_iou": {}}
                 for i, v in enumerate(crf_curve)]
        write_run(tmp_path, "t", "/data/d", 40, "pce_crf", seed, crf_curve[-1], 0.1, 0.2, evals=evals,
                  settings=[f"loss.init_from={tmp_path / f't_pce_seed{seed}' / 'checkpoint.pt'}"])
    runs = load_runs(tmp_path)
    crf = [r for r in runs if r["loss"] == "pce_crf"]
    pce = [r for r in runs if r["loss"] == "pce"]
    points = gain_along_training(crf, pce)
    assert [i for i, _ in points] == [15, 20]
    assert points[0][1] == pytest.approx(((0.52 - 0.50) + (0.55 - 0.54)) / 2)
    assert points[1][1] == pytest.approx(((0.58 - 0.50) + (0.60 - 0.54)) / 2)
    # Its learning curve continues the pCE run's line; without that run among the runs, its own iterations.
    [seed0] = [r for r in crf if r["seed"] == 0]
    assert curve(seed0, runs) == [(15, 0.52), (20, 0.58)] and curve(seed0, crf) == [(5, 0.52), (10, 0.58)]
    # One-phase runs are compared at the evaluations both have (here 5 and 10).
    one_phase = [dict(r, config={**r["config"], "loss": {**r["config"]["loss"], "init_from": None}}) for r in crf]
    assert [i for i, _ in gain_along_training(one_phase, pce)] == [5, 10]


def test_each_studys_report_goes_to_its_own_folder(results, tmp_path):
    """A study's table is not replaced by the next study's: each set of study names has its folder."""
    assert report.report_dir(tmp_path, ["alpha", "beta"]) == tmp_path / "report-alpha+beta"
    assert report.report_dir(tmp_path, "alpha") == tmp_path / "report-alpha"
    assert report.report_dir(tmp_path, None) == tmp_path / "report-all"
    runs = load_runs(results)
    alpha = report.write_report(results, runs, ["alpha"], out_dir=None)
    first = alpha["markdown"].read_text()
    beta = report.write_report(results, runs, ["beta"])
    assert alpha["markdown"] == results / "report-alpha" / "miou_table.md"
    assert beta["markdown"] == results / "report-beta" / "miou_table.md"
    assert alpha["markdown"].read_text() == first and "fake40" in first and "fake64" not in first
    assert "fake64" in beta["markdown"].read_text()
