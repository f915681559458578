"""The regularizers beyond Table 1 (pCE + normalized cut, pCE + KernelCut) in the study: grid, pooling, table."""

import csv
import io

import pytest

from rloss.study import report
from rloss.study.grid import base_config, grid_summary, load_runs, plan_grid, study_grid, summarize
from rloss.study.training_notebook import notebook_config

from test_report import SETTING_A, sample_std, write_run

# (loss, seed) -> final mIoU, median s/iteration, regularizer share
EXTRA = {
    ("pce_nc", 0): (0.58, 0.40, 0.30), ("pce_nc", 1): (0.62, 0.60, 0.30),
    ("pce_kernelcut", 0): (0.64, 0.80, 0.50), ("pce_kernelcut", 1): (0.70, 1.00, 0.50),
}
# The Table 1 columns, as they were before the extra regularizers (a study without them keeps them).
TABLE1_CSV = (
    "network", "data", "resolution_px", "crop_px", "schedule", "crf_relative_weight", "iterations", "differs",
    "pce_miou", "pce_std", "pce_seeds", "pce_crf_miou", "pce_crf_std", "pce_crf_seeds", "full_miou", "full_std",
    "full_seeds", "crf_gain_pp", "full_gain_pp", "pce_s_per_iteration", "pce_crf_s_per_iteration",
    "full_s_per_iteration", "crf_share",
)
TABLE1_MD = ("| network | data | px | crop | DenseCRF weight (x published) | iterations | pCE mIoU % | "
             "+ DenseCRF mIoU % | full mIoU % | DenseCRF − pCE (pp) | full − pCE (pp) | s/it pCE | s/it + DenseCRF | "
             "s/it full | DenseCRF loss share of + DenseCRF iteration |")


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _write(root, runs, study="alpha", settings=()):
    for (loss, seed), values in runs.items():
        write_run(root, study, "/data/fake40", 40, loss, seed, *values, settings=settings)


def test_a_table_with_the_new_regularizers_gets_their_columns_and_gains(tmp_path):
    _write(tmp_path, SETTING_A)
    _write(tmp_path, EXTRA)
    rows = summarize(load_runs(tmp_path))
    assert len(rows) == 1  # one variant of each regularizer: one row
    [row] = report.miou_table(rows)
    # normalized cut: 58 and 62 -> 60.0; pCE 50 and 54 -> 52.0; gain 8.0 pp; s/it median of 0.4 and 0.6
    assert row["pce_nc_miou"] == pytest.approx(60.0) and row["pce_nc_seeds"] == 2
    assert row["pce_nc_std"] == pytest.approx(sample_std([58, 62]))
    assert row["nc_gain_pp"] == pytest.approx(8.0)
    assert row["pce_nc_s_per_iteration"] == pytest.approx(0.5)
    # KernelCut: 64 and 70 -> 67.0; gain 15.0 pp; s/it median of 0.8 and 1.0
    assert row["pce_kernelcut_miou"] == pytest.approx(67.0) and row["pce_kernelcut_seeds"] == 2
    assert row["pce_kernelcut_std"] == pytest.approx(sample_std([64, 70]))
    assert row["kernelcut_gain_pp"] == pytest.approx(15.0)
    assert row["pce_kernelcut_s_per_iteration"] == pytest.approx(0.9)
    assert row["nc_weight"] == pytest.approx(0.05)  # the config's default
    # The Table 1 losses as without them.
    assert row["crf_gain_pp"] == pytest.approx(11.0) and row["full_gain_pp"] == pytest.approx(19.0)

    md = report.to_markdown([row]).splitlines()
    header = _cells(md[0])
    for title in ("+ normalized cut mIoU %", "normalized cut − pCE (pp)", "s/it + normalized cut",
                  "+ KernelCut mIoU %", "KernelCut − pCE (pp)", "s/it + KernelCut", "normalized cut weight (normalized cut / KernelCut)"):
        assert title in header, title
    cells = _cells(md[2])
    assert cells[header.index("+ normalized cut mIoU %")] == "60.0 ± 2.8 (n=2)"
    assert cells[header.index("normalized cut − pCE (pp)")] == "+8.0"
    assert cells[header.index("s/it + normalized cut")] == "0.500"
    assert cells[header.index("+ KernelCut mIoU %")] == "67.0 ± 4.2 (n=2)"
    assert cells[header.index("KernelCut − pCE (pp)")] == "+15.0"
    # each loss's own normalized cut weight (both the config's default here)
    assert cells[header.index("normalized cut weight (normalized cut / KernelCut)")] == "0.05 / 0.05"
    assert len(cells) == len(header)

    [out] = list(csv.DictReader(io.StringIO(report.to_csv([row]))))
    assert float(out["pce_nc_miou"]) == pytest.approx(60.0) and float(out["nc_gain_pp"]) == pytest.approx(8.0)
    assert float(out["kernelcut_gain_pp"]) == pytest.approx(15.0) and out["pce_kernelcut_seeds"] == "2"

    lines = report.conclusions([row])
    assert "pCE + normalized cut: +8.0 pp over pCE (52.0 vs 60.0); exceeds the seed spread (2.8 pp)" in lines[0]
    assert "pCE + KernelCut: +15.0 pp over pCE (52.0 vs 67.0); exceeds the seed spread (4.2 pp)" in lines[0]
    text = report.report_markdown([row])
    published = text.index("## " + report.PUBLISHED_TITLE)
    note = "No published figures are shown for pCE + normalized cut or pCE + KernelCut"
    assert note in text and text.index(note) > published


def test_the_default_three_loss_table_is_unchanged(tmp_path):
    _write(tmp_path, SETTING_A)
    table = report.miou_table(summarize(load_runs(tmp_path)))
    assert report.to_markdown(table).splitlines()[0] == TABLE1_MD
    assert report.TABLE_COLUMNS[:len(TABLE1_CSV)] == TABLE1_CSV
    [out] = list(csv.DictReader(io.StringIO(report.to_csv(table))))
    assert out["pce_nc_miou"] == "" and out["nc_gain_pp"] == "" and out["pce_kernelcut_seeds"] == "0"
    text = report.report_markdown(table, runs=load_runs(tmp_path))
    assert "normalized cut" not in text and "KernelCut" not in text
    assert table[0]["differs"] == ""


def test_two_nc_weights_never_share_a_row(tmp_path):
    for seed, (pce, full) in enumerate(((0.50, 0.70), (0.54, 0.72))):
        write_run(tmp_path, "s", "/data/d", 40, "pce", seed, pce, 0.1, None)
        write_run(tmp_path, "s", "/data/d", 40, "full", seed, full, 0.1, None)
    for study, weight, mious in (("n1", 0.05, (0.60, 0.62)), ("n4", 0.2, (0.40, 0.44))):
        for seed, miou in enumerate(mious):  # the same loss and seeds, two weights
            write_run(tmp_path, study, "/data/d", 40, "pce_nc", seed, miou, 0.2, 0.3,
                      settings=[f"loss.nc_weight={weight}"])
    rows = summarize(load_runs(tmp_path))
    assert len(rows) == 2
    by_weight = {r["nc_weight"]: r for r in rows}
    assert by_weight[0.05]["pce_nc_miou"] == pytest.approx(0.61) and by_weight[0.05]["pce_nc_seeds"] == 2
    assert by_weight[0.2]["pce_nc_miou"] == pytest.approx(0.42) and by_weight[0.2]["pce_nc_seeds"] == 2
    for row in rows:  # both beside the same pCE and full runs: the NC weight means nothing to them
        assert row["pce_miou"] == pytest.approx(0.52) and row["pce_seeds"] == 2 and row["full_seeds"] == 2
        assert row["pce_nc_gain"] == pytest.approx(row["pce_nc_miou"] - 0.52)
    assert "pce_nc:loss.nc_weight=0.2" in by_weight[0.2]["differs"]
    assert "pce_nc:loss.nc_weight=0.05" in by_weight[0.05]["differs"]


def test_each_nc_loss_is_flagged_with_its_own_nc_weight(tmp_path):
    for seed, miou in enumerate((0.70, 0.72)):
        write_run(tmp_path, "r", "/data/d", 40, "pce", seed, miou, 0.1, None)
    for loss, weight in (("pce_nc", 0.1), ("pce_kernelcut", 0.4)):
        for seed, miou in enumerate((0.45, 0.47)):
            write_run(tmp_path, "r", "/data/d", 40, loss, seed, miou, 0.1, 0.2, settings=[f"loss.nc_weight={weight}"])
    [row] = report.miou_table(summarize(load_runs(tmp_path)))
    assert "loss.nc_weight (now 0.1)" in report.regression(row, "pce_nc")
    flag = report.regression(row, "pce_kernelcut")
    assert flag.startswith("REGRESSION: pCE + KernelCut is 25.0 pp below pCE")
    assert "loss.nc_weight (now 0.4)" in flag and "loss.crf_relative_weight" in flag


def test_a_normalized_cut_below_pce_is_flagged_with_its_own_weight(tmp_path):
    for seed, miou in enumerate((0.70, 0.72)):
        write_run(tmp_path, "r", "/data/d", 40, "pce", seed, miou, 0.1, None)
    for seed, miou in enumerate((0.45, 0.47)):
        write_run(tmp_path, "r", "/data/d", 40, "pce_nc", seed, miou, 0.1, 0.2, settings=["loss.nc_weight=0.8"])
    [row] = report.miou_table(summarize(load_runs(tmp_path)))
    flag = report.regression(row, "pce_nc")
    assert flag.startswith("REGRESSION: pCE + normalized cut is 25.0 pp below pCE")
    assert "loss.nc_weight (now 0.8)" in flag and "--key loss.nc_weight" in flag
    assert "crf_relative_weight" not in flag
    assert report.regression(row) is None  # no DenseCRF runs in this row
    assert flag in report.conclusions([row])[0]


def test_the_grid_trains_the_new_losses(tmp_path, capsys, monkeypatch):
    base = base_config("d", tmp_path)
    configs = study_grid(base, "s", losses=["pce_kernelcut", "pce_nc", "pce"], seeds=[0], two_phase=True)
    assert [c.loss.type for c in configs] == ["pce", "pce_nc", "pce_kernelcut"]
    assert all(c.loss.init_from.endswith("s_pce_seed0/checkpoint.pt") for c in configs[1:])
    with pytest.raises(ValueError, match="two_phase needs the pce runs"):
        study_grid(base, "s", losses=["pce_nc"], two_phase=True)

    configs = plan_grid(notebook_config("d", tmp_path, nc_weight=0.2), "s", ["pce", "pce_nc"], [0])
    assert {c.loss.nc_weight for c in configs} == {0.2} and base.loss.nc_weight == 0.05
    with pytest.raises(ValueError, match="nc_weight"):
        notebook_config("d", tmp_path, nc_weight=-1.0)

    calls = []

    def fake_sweep(cfg, name, rerun=False, key="loss.crf_relative_weight", runs_prefix=None):
        calls.append((name, key, cfg.loss.type, runs_prefix))
        return {"best": 0.0125, "reason": "held-out mIoU 0.5, +3.00 pp over pCE (the sweep's own words)"}

    monkeypatch.setattr("rloss.engine.sweep.sweep_crf_weight", fake_sweep)
    monkeypatch.setattr("rloss.study.plots.save_sweep_plot", lambda result, results_dir: None)  # a fake has no points
    configs = plan_grid(base, "s", ["pce", "pce_nc"], [0], sweep_nc=True)
    assert base.loss.nc_weight == 0.05  # the chosen weight goes to the grid's configs, not to base
    # Its own sweep file, not the DenseCRF one; its runs named after the study, so that its pCE run is
    # the DenseCRF sweep's (rloss.engine.sweep.sweep_configs).
    assert calls == [("s_nc", "loss.nc_weight", "pce_nc", "s")]
    assert {c.loss.nc_weight for c in configs} == {0.0125}
    assert {c.loss.type for c in configs} == {"pce", "pce_nc"}
    assert ("normalized cut weight chosen by the sweep: 0.0125 (held-out mIoU 0.5, +3.00 pp over pCE "
            "(the sweep's own words))") in capsys.readouterr().out


def test_summary_and_plots_show_the_new_losses(tmp_path):
    _write(tmp_path, SETTING_A)
    _write(tmp_path, EXTRA)
    runs = load_runs(tmp_path)
    summary = grid_summary(runs)
    assert "pCE + normalized cut: mIoU 0.6000 ± 0.0283 over 2 seed(s), 500 ms/iteration" in summary
    assert "pCE + KernelCut: mIoU 0.6700" in summary
    fig = report.plot_learning_curves(runs)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["pCE", "pCE + DenseCRF", "full supervision", "pCE + normalized cut", "pCE + KernelCut"]
    fig = report.plot_per_class_iou(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "pCE + normalized cut" in labels and "pCE + KernelCut" in labels


def test_differs_names_only_settings_both_rows_have(tmp_path):
    """A 16-epoch row with normalized cut runs beside a 32-epoch row without: the rows differ by their
    epochs; the normalized cut settings of one row are not a difference from the other."""
    _write(tmp_path, SETTING_A, study="short", settings=["optim.epochs=16"])
    _write(tmp_path, {k: v for k, v in EXTRA.items() if k[0] == "pce_nc"}, study="short", settings=["optim.epochs=16"])
    _write(tmp_path, SETTING_A, study="long", settings=["optim.epochs=32"])
    rows = sorted(summarize(load_runs(tmp_path)), key=lambda r: r["pce_nc_seeds"])
    assert [r["pce_nc_seeds"] for r in rows] == [0, 2]
    assert [r["differs"] for r in rows] == ["optim.epochs=32", "optim.epochs=16"]
