"""The study's Table 1 (mIoU of pCE, pCE + DenseCRF and full supervision) and its plots; runs of the
regularizers beyond it (pCE + normalized cut, pCE + KernelCut) add their columns where they exist.

    runs = select_runs(load_runs("results"), ["smoke40"])     # optional: the runs of these studies
    rows = summarize(runs)                                     # rloss.study: one row per setting
    table = miou_table(rows)                                   # the rows as the report shows them
    print(to_markdown(table))
    paths = write_report("results", runs, ["smoke40"])         # results/report-smoke40/miou_table.md and .csv
    fig = plot_learning_curves(runs)                           # also plot_per_class_iou, plot_crf_share

mIoU is reported in percent (mean ± sample standard deviation over seeds, with the
number of seeds), gains in percentage points. Beside our rows the report carries
the figures Tang et al. published (:data:`PUBLISHED_TABLE1`), always as a table of
their own, labelled as not measured here.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

import numpy as np

from ..data.io import write_text_atomic
from .plots import save_figure  # noqa: F401 (the notebooks' call)
from .grid import (ALL_LOSSES, CONVERGED_GAIN, EXTRA_LOSSES, LOSS_LABELS, LOSSES, MIN_EVALS, convergence,
                    curve, gain_along_training, in_studies, load_runs, summarize)

__all__ = [
    "TABLE_COLUMNS",
    "TABLE_MD",
    "TABLE_CSV",
    "PUBLISHED_TITLE",
    "PUBLISHED_TABLE1",
    "PUBLISHED_SOURCES",
    "select_runs",
    "miou_table",
    "extra_losses_shown",
    "to_markdown",
    "to_csv",
    "published_markdown",
    "published_note",
    "conclusions",
    "report_markdown",
    "report_dir",
    "write_report",
    "plot_learning_curves",
    "plot_per_class_iou",
    "plot_crf_share",
    "plot_crf_gain_along_training",
    "regression",
    "convergence_note",
    "save_figure",
    "runs_found",
    "report_figures",
    "figure_png",
]

TABLE_MD, TABLE_CSV = "miou_table.md", "miou_table.csv"

# The gain column of each loss over pCE (percentage points).
GAIN_COLUMNS = {"pce_crf": "crf_gain_pp", "full": "full_gain_pp", "pce_nc": "nc_gain_pp",
                "pce_kernelcut": "kernelcut_gain_pp"}

# The CSV's columns, in order (mIoU in percent, gains in percentage points). The regularizers beyond
# Table 1 (EXTRA_LOSSES) always have their columns, at the end, empty (seeds 0) where no runs exist:
# one fixed header for every study, and the Table 1 columns where they always were.
TABLE_COLUMNS = (
    "network", "data", "resolution_px", "crop_px", "schedule", "crf_relative_weight", "iterations", "differs",
    "pce_miou", "pce_std", "pce_seeds",
    "pce_crf_miou", "pce_crf_std", "pce_crf_seeds",
    "full_miou", "full_std", "full_seeds",
    "crf_gain_pp", "full_gain_pp",
    "pce_s_per_iteration", "pce_crf_s_per_iteration", "full_s_per_iteration", "crf_share",
    "nc_weight",
) + tuple(f"{loss}_{key}" for loss in EXTRA_LOSSES for key in ("miou", "std", "seeds")) \
  + tuple(GAIN_COLUMNS[loss] for loss in EXTRA_LOSSES) + tuple(f"{loss}_s_per_iteration" for loss in EXTRA_LOSSES)

# --------------------------------------------------------------------------------------------
# The published figures (never mixed into the measured rows)
# --------------------------------------------------------------------------------------------

PUBLISHED_TITLE = "Published figures, Tang et al. ECCV 2018 Table 1 — not measured here"

# Where each figure below was read. The ECCV paper's own PDF table
# (https://arxiv.org/abs/1803.09569, https://ar5iv.labs.arxiv.org/html/1803.09569) could not be
# read here; the figures are the authors' "Table 1: mIOU on PASCAL VOC2012 val set" as published
# in their official repository, which accompanies the paper. They are *not* verified against the
# paper's PDF; a row the sources do not give is None ("n/a" in the source, shown as such).
PUBLISHED_SOURCES = {
    "caffe": ("https://github.com/meng-tang/rloss/blob/5a5cb154e66e7e92f8d5099dadd5456b70d53b7d/README.md",
              'README "Table 1: mIOU on PASCAL VOC2012 val set" (Caffe; the implementation used for the '
              "published articles)"),
    "pytorch": ("https://github.com/meng-tang/rloss/blob/1caa759e568db2c7209ab73e73ac039ea3d7101c/pytorch/README.md",
                'pytorch/README "Table 1: mIOU on PASCAL VOC2012 val set. We report training time for '
                'different losses (seconds/iteration, batch_size 12, GTX 1080Ti, AMD FX-6300 3.5GHz)" '
                "(the later PyTorch release, DeepLabV3+ with a MobileNet backbone)"),
}

# mIoU in percent on PASCAL VOC 2012 val, ScribbleSup scribbles (~3% of pixels labeled);
# s/iteration only where the source gives it.
PUBLISHED_TABLE1 = (
    {"network": "DeepLab-largeFOV", "pce": 55.8, "pce_crf": 62.3, "full": 63.0,
     "pce_s_per_iteration": None, "pce_crf_s_per_iteration": None, "full_s_per_iteration": None, "source": "caffe"},
    {"network": "DeepLab-MSc-largeFOV", "pce": None, "pce_crf": 63.2, "full": 64.1,
     "pce_s_per_iteration": None, "pce_crf_s_per_iteration": None, "full_s_per_iteration": None, "source": "caffe"},
    {"network": "DeepLab-VGG16", "pce": 60.7, "pce_crf": 64.7, "full": 68.8,
     "pce_s_per_iteration": None, "pce_crf_s_per_iteration": None, "full_s_per_iteration": None, "source": "caffe"},
    {"network": "DeepLab-ResNet101", "pce": 69.5, "pce_crf": 73.0, "full": 75.6,
     "pce_s_per_iteration": None, "pce_crf_s_per_iteration": None, "full_s_per_iteration": None, "source": "caffe"},
    {"network": "DeepLabV3+ MobileNet", "pce": 65.8, "pce_crf": 69.4, "full": 72.1,
     "pce_s_per_iteration": 1.05, "pce_crf_s_per_iteration": 1.66, "full_s_per_iteration": 1.05, "source": "pytorch"},
)

# --------------------------------------------------------------------------------------------
# Our table
# --------------------------------------------------------------------------------------------


def select_runs(runs: list[dict], study_names=None) -> list[dict]:
    """The runs of the studies ``study_names`` (a name or a list, matched exactly); all with None."""
    return [r for r in runs if in_studies(str(r["run"]), study_names)]


def runs_found(runs: list[dict], table: list[dict], results_dir, study_names=None) -> str:
    """One line saying what the table is made of, or that there is nothing yet and what to run."""
    names = [study_names] if isinstance(study_names, str) else study_names
    if runs:
        return (f"{len(runs)} finished runs in {len(table)} settings under {results_dir}"
                + (f" (studies {', '.join(names)})" if names else ""))
    return (f"No finished runs under {results_dir}" + (f" in the studies {', '.join(names)}" if names else "")
            + ": run notebooks 02/03 first. The table, plots and browser below stay empty.")


def _pct(value):
    return None if value is None else 100.0 * value


def miou_table(rows: list[dict]) -> list[dict]:
    """``summarize(runs)``'s rows as the report's rows: keys :data:`TABLE_COLUMNS`, mIoU in %.

    Gains are recomputed from the means so that they agree with the shown numbers (percentage points).
    """
    table = []
    for row in rows:
        out = {"network": row.get("model"), "data": row.get("data"), "resolution_px": row.get("resolution"),
               "crop_px": row.get("crop_size"), "schedule": row.get("schedule", "one-phase"),
               "crf_relative_weight": row.get("crf_relative_weight"), "nc_weight": row.get("nc_weight"),
               "nc_weights": row.get("nc_weights", {}),
               "iterations": row.get("iterations"), "differs": row.get("differs") or ""}
        for loss in ALL_LOSSES:
            out[f"{loss}_miou"] = _pct(row.get(f"{loss}_miou"))
            out[f"{loss}_std"] = _pct(row.get(f"{loss}_std"))
            out[f"{loss}_seeds"] = int(row.get(f"{loss}_seeds") or 0)
        for loss, key in GAIN_COLUMNS.items():
            base, other = out["pce_miou"], out[f"{loss}_miou"]
            out[key] = other - base if base is not None and other is not None else None
        for loss in ALL_LOSSES:
            out[f"{loss}_s_per_iteration"] = row.get(f"{loss}_s_per_iteration")
        out["crf_share"] = row.get("crf_share")
        out["runs"] = {loss: row.get(f"{loss}_runs", []) for loss in ALL_LOSSES}
        out["per_class"] = {loss: row.get(f"{loss}_per_class", {}) for loss in ALL_LOSSES}
        table.append(out)
    return table


def _fmt_miou(mean, std, n) -> str:
    if mean is None or not n:
        return "—"
    spread = f" ± {std:.1f}" if std is not None else ""
    return f"{mean:.1f}{spread} (n={n})"


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


_MD_HEADER = ("network", "data", "px", "crop", "DenseCRF weight (x published)", "iterations", "pCE mIoU %", "+ DenseCRF mIoU %", "full mIoU %",
              "DenseCRF − pCE (pp)", "full − pCE (pp)", "s/it pCE", "s/it + DenseCRF", "s/it full",
              "DenseCRF loss share of + DenseCRF iteration")


def extra_losses_shown(table: list[dict]) -> list[str]:
    """The regularizers beyond Table 1 that some row has runs of: the Markdown table's extra columns."""
    return [loss for loss in EXTRA_LOSSES if any(r.get(f"{loss}_seeds") for r in table)]


def _extra_header(loss: str) -> tuple:
    name = LOSS_LABELS[loss].removeprefix("pCE + ")
    return (f"+ {name} mIoU %", f"{name} − pCE (pp)", f"s/it + {name}")


def to_markdown(table: list[dict]) -> str:
    """Our rows as a Markdown table (mean ± std over seeds, n seeds); a line saying so when empty.
    The regularizers beyond Table 1 get their columns (mIoU, gain over pCE, s/it; and the normalized cut
    weight) only when some row has their runs."""
    if not table:
        return "_No finished runs: nothing measured yet._\n"
    extras = extra_losses_shown(table)
    # Each loss with a normalized cut term has its own weight (KernelCut's is swept with its DenseCRF term on).
    weight_header = "normalized cut weight" + (" (" + " / ".join(LOSS_LABELS[loss].removeprefix("pCE + ")
                                                                  for loss in extras) + ")" if len(extras) > 1 else "")
    header = _MD_HEADER + ((weight_header,) if extras else ()) + tuple(
        h for loss in extras for h in _extra_header(loss))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    fine_tuned = " (regularized losses fine-tuned from pCE)" if extras else " (DenseCRF fine-tuned from pCE)"
    for r in table:
        network = str(r["network"]) + (fine_tuned if r["schedule"] == "two-phase" else "")
        cells = [network, str(r["data"]), _fmt(r["resolution_px"], "d"), _fmt(r["crop_px"], "d"),
                 _fmt(r["crf_relative_weight"], ".3g"), _fmt(r["iterations"], ".0f")]
        cells += [_fmt_miou(r[f"{loss}_miou"], r[f"{loss}_std"], r[f"{loss}_seeds"]) for loss in LOSSES]
        cells += [_fmt(r["crf_gain_pp"], "+.1f"), _fmt(r["full_gain_pp"], "+.1f")]
        cells += [_fmt(r[f"{loss}_s_per_iteration"], ".3f") for loss in LOSSES]
        cells.append(_fmt(None if r["crf_share"] is None else 100 * r["crf_share"], ".1f", " %"))
        if extras:
            cells.append(" / ".join(_fmt(r["nc_weights"].get(loss), ".3g") for loss in extras))
        for loss in extras:
            cells += [_fmt_miou(r[f"{loss}_miou"], r[f"{loss}_std"], r[f"{loss}_seeds"]),
                      _fmt(r[GAIN_COLUMNS[loss]], "+.1f"), _fmt(r[f"{loss}_s_per_iteration"], ".3f")]
        if any(row["differs"] for row in table):
            cells.append(r["differs"] or "—")
        lines.append("| " + " | ".join(cells) + " |")
    if any(row["differs"] for row in table):
        lines[0] = lines[0][:-2] + " | differs from the other rows |"
        lines[1] += "---|"
    return "\n".join(lines) + "\n"


def to_csv(table: list[dict]) -> str:
    """Our rows as CSV with the header :data:`TABLE_COLUMNS`; empty cells for missing values."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for r in table:
        writer.writerow(["" if r.get(c) is None else (f"{r[c]:.6g}" if isinstance(r[c], float) else r[c])
                         for c in TABLE_COLUMNS])
    return buf.getvalue()


def published_markdown(title: bool = True) -> str:
    """The published figures as their own Markdown table, with their sources (and ``title``)."""
    header = ("network", "pCE mIoU %", "+ DenseCRF mIoU %", "full mIoU %", "DenseCRF − pCE (pp)",
              "full − pCE (pp)", "s/it pCE / + DenseCRF / full", "source")
    lines = ([f"**{PUBLISHED_TITLE}**", ""] if title else []) + [
             "PASCAL VOC 2012 val, ScribbleSup scribbles (~3% of pixels labeled). Figures as the authors "
             "publish them in their repository's Table 1; not verified against the paper's PDF.", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for p in PUBLISHED_TABLE1:
        gain = [f"{p[k] - p['pce']:+.1f}" if p["pce"] is not None and p[k] is not None else "—"
                for k in ("pce_crf", "full")]
        times = [p[f"{k}_s_per_iteration"] for k in LOSSES]
        timing = " / ".join(f"{t:.2f}" for t in times) if all(t is not None for t in times) else "—"
        cells = [p["network"]] + ["n/a in source" if p[k] is None else f"{p[k]:.1f}" for k in LOSSES]
        cells += gain + [timing, p["source"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Sources:", ""]
    lines += [f"- {key}: <{url}> — {what}" for key, (url, what) in PUBLISHED_SOURCES.items()]
    return "\n".join(lines) + "\n"


def published_note(table: list[dict]) -> str:
    """The line under the published table when our table shows regularizers beyond Table 1: the published
    table has none of their figures (no source verified); empty otherwise."""
    extras = extra_losses_shown(table)
    if not extras:
        return ""
    return (f"\nNo published figures are shown for {' or '.join(LOSS_LABELS[loss] for loss in extras)}: "
            "no source for them has been verified.\n")


# --------------------------------------------------------------------------------------------
# Conclusions computed from the numbers
# --------------------------------------------------------------------------------------------


def _setting(r: dict) -> str:
    weight = f", DenseCRF weight {r['crf_relative_weight']:.3g}x published" if r.get("crf_relative_weight") else ""
    differs = f"; {r['differs']}" if r.get("differs") else ""
    return f"{r['network']} on {r['data']} ({r['resolution_px']} px, crop {r['crop_px']}{weight}{differs})"


# A class has collapsed under a regularizer when its IoU falls below this, or this far below pCE's.
COLLAPSED_IOU, COLLAPSE_DROP = 0.25, 0.20


def _collapsed_classes(r: dict, loss: str) -> list[str]:
    ours, pce = r["per_class"].get(loss, {}), r["per_class"].get("pce", {})
    found = []
    for name, iou in ours.items():
        if iou is None:
            continue
        base = pce.get(name)
        if iou < COLLAPSED_IOU or (base is not None and base - iou > COLLAPSE_DROP):
            found.append(f"{name} ({100 * iou:.0f}%" + (f" vs {100 * base:.0f}% with pCE)" if base is not None else ")"))
    return found


def regression(r: dict, loss: str = "pce_crf") -> str | None:
    """A sentence when the regularized loss ends below pCE by more than the seed spread (by more than
    1 pp when one seed leaves the spread unknown), naming the likely cause and the fix; else None."""
    pce, other = r["pce_miou"], r[f"{loss}_miou"]
    if pce is None or other is None or other >= pce:
        return None
    stds = [s for s in (r["pce_std"], r[f"{loss}_std"]) if s is not None]
    bound = max(stds) if len(stds) == 2 else 1.0
    if pce - other <= bound:
        return None
    collapsed = _collapsed_classes(r, loss)
    cause = ("predictions collapse to few classes: " + ", ".join(collapsed)) if collapsed else \
        "predictions may collapse to few classes: check the per-class IoU"
    return (f"REGRESSION: {LOSS_LABELS[loss]} is {pce - other:.1f} pp below pCE, more than the seed spread "
            f"({bound:.1f} pp). Likely cause: a weight too high for this data; {cause}. Fix: "
            f"{_weight_fix(r, loss)}.")


def _weight_fix(r: dict, loss: str) -> str:
    """Which weight to lower for ``loss``'s regularizer, and the sweep that chooses it on held-out train."""
    crf = f" (now {r['crf_relative_weight']:.3g}x the published balance)" if r.get("crf_relative_weight") else ""
    weight = r.get("nc_weights", {}).get(loss)
    nc = f" (now {weight:.3g})" if weight is not None else ""
    crf_fix = f"loss.crf_relative_weight{crf}"
    nc_fix = f"loss.nc_weight{nc}"
    sweep = "`python -m rloss sweep-weight`"
    nc_sweep = f"`python -m rloss sweep-weight --key loss.nc_weight --set loss.type={loss}`"
    if loss == "pce_nc":
        return f"lower {nc_fix}, or choose it on a held-out share of train with {nc_sweep}"
    if loss == "pce_kernelcut":
        return (f"lower {crf_fix} or {nc_fix}, or choose them on a held-out share of train with "
                f"{sweep} and {nc_sweep}")
    return f"lower {crf_fix}, or choose it on a held-out share of train with {sweep}"


def convergence_note(r: dict, runs: list[dict]) -> str:
    """Whether the row's runs converged (mIoU gained < 1 pp over their last quarter of iterations)."""
    names = {name for members in r["runs"].values() for name in members}
    members = [run for run in runs if run["run"] in names]
    if not members:
        return ""
    checks = {run["run"]: convergence(run) for run in members}
    unconverged = {name: c for name, c in checks.items() if not c["converged"]}
    if not unconverged:
        return f"all {len(members)} runs converged (< {100 * CONVERGED_GAIN:.0f} pp over their last quarter)"
    parts = []
    for name, c in sorted(unconverged.items()):
        if c["evals"] < MIN_EVALS:
            parts.append(f"{name} ({c['evals']} evaluations, too few to tell)")
        else:
            parts.append(f"{name} (+{100 * c['late_gain']:.1f} pp in its last quarter)")
    return (f"{len(unconverged)} of {len(members)} runs NOT converged, so the gains may only be faster early "
            f"training: " + "; ".join(parts))


def conclusions(table: list[dict], runs: list[dict] | None = None) -> list[str]:
    """One sentence per row, computed from its numbers: does pCE < pCE + DenseCRF <= full hold, does
    the DenseCRF gain exceed the seed spread (the larger standard deviation of the two), is it a
    regression (see :func:`regression`), and (with ``runs``) did every run converge? Each regularizer beyond
    Table 1 with runs in the row adds a sentence: its gain over pCE against the seed spread, and its flag."""
    if not table:
        return ["No finished runs: there is nothing to conclude yet."]
    lines = []
    for r in table:
        pce, crf, full = r["pce_miou"], r["pce_crf_miou"], r["full_miou"]
        converged = convergence_note(r, runs) if runs is not None else ""
        converged = f" Convergence: {converged}." if converged else ""
        # The other regularizers' sentences, then whether the runs converged, end each row's line.
        tail = "".join(_extra_conclusion(r, loss) for loss in EXTRA_LOSSES) + converged
        if pce is None or crf is None:
            missing = " and ".join(LOSS_LABELS[k] for k, v in (("pce", pce), ("pce_crf", crf)) if v is None)
            lines.append(f"{_setting(r)}: no {missing} runs, so the DenseCRF gain cannot be measured.{tail}")
            continue
        gain = crf - pce
        if full is None:
            order = (f"pCE {'<' if pce < crf else '>='} pCE + DenseCRF ({pce:.1f} vs {crf:.1f}; "
                     "no full-supervision runs)")
        else:
            holds = pce < crf <= full
            order = (f"pCE < pCE + DenseCRF <= full {'holds' if holds else 'does not hold'} "
                     f"({pce:.1f} / {crf:.1f} / {full:.1f})")
        stds = [s for s in (r["pce_std"], r["pce_crf_std"]) if s is not None]
        if len(stds) < 2:
            spread = f"the seed spread is unknown with one seed (gain {gain:+.1f} pp)"
        else:
            bound = max(stds)
            verdict = "exceeds" if abs(gain) > bound else "does not exceed"
            spread = f"the DenseCRF gain of {gain:+.1f} pp {verdict} the seed spread ({bound:.1f} pp)"
        share = r["crf_share"]
        timing = f"; the DenseCRF loss takes {100 * share:.0f}% of an iteration" if share is not None else ""
        flagged = regression(r)
        flagged = f" {flagged}" if flagged else ""
        lines.append(f"{_setting(r)}: {order}; {spread}{timing}.{flagged}{tail}")
    return lines


def _extra_conclusion(r: dict, loss: str) -> str:
    """A sentence for a regularizer beyond Table 1 in this row: its gain over pCE against the seed spread,
    and its REGRESSION flag; nothing when the row has no runs of it."""
    pce, other = r["pce_miou"], r[f"{loss}_miou"]
    label = LOSS_LABELS[loss]
    if other is None:
        return ""
    if pce is None:
        return f" {label}: {other:.1f} with no pCE runs beside it, so its gain cannot be measured."
    gain = other - pce
    stds = [s for s in (r["pce_std"], r[f"{loss}_std"]) if s is not None]
    if len(stds) < 2:
        spread = "the seed spread is unknown with one seed"
    else:
        spread = f"{'exceeds' if abs(gain) > max(stds) else 'does not exceed'} the seed spread ({max(stds):.1f} pp)"
    flagged = regression(r, loss)
    return f" {label}: {gain:+.1f} pp over pCE ({pce:.1f} vs {other:.1f}); {spread}." + (f" {flagged}" if flagged else "")


def report_markdown(table: list[dict], title: str = "mIoU: pCE, pCE + DenseCRF loss, full supervision",
                    runs: list[dict] | None = None) -> str:
    """Our table, its conclusions (with ``runs``: convergence too), then the published table under its own heading."""
    parts = [f"# {title}", "", "## Measured here", "",
             "mIoU on the validation split in percent, at each image's own resolution (the network's logits resized "
             "to the image before the argmax, as in inference): mean ± standard deviation over seeds (n = seeds); "
             "gains in percentage points; s/it = median seconds per training iteration.", "",
             to_markdown(table), "### Conclusions", ""]
    parts += [f"- {line}" for line in conclusions(table, runs)]
    parts += ["", "## " + PUBLISHED_TITLE, "", published_markdown(title=False) + published_note(table)]
    return "\n".join(parts)


def report_dir(results_dir, study_names=None) -> Path:
    """Where the report of ``study_names`` goes: ``<results_dir>/report-<name>+<name>`` (``report-all``
    for every run), so that a study's table and figures are not replaced by another study's."""
    names = [study_names] if isinstance(study_names, str) else study_names
    return Path(results_dir) / ("report-" + ("+".join(names) if names else "all"))


def write_report(results_dir, runs: list[dict] | None = None, study_names=None, out_dir=None) -> dict:
    """Writes ``miou_table.md`` (ours, conclusions, the published table apart) and ``miou_table.csv``
    (ours only) atomically under ``out_dir`` (default :func:`report_dir`). ``runs`` default:
    ``load_runs(results_dir)``. Returns ``{"table", "markdown", "csv"}`` (paths as Path)."""
    runs = select_runs(load_runs(results_dir) if runs is None else runs, study_names)
    table = miou_table(summarize(runs))
    out = report_dir(results_dir, study_names) if out_dir is None else Path(out_dir)
    md, csv_path = out / TABLE_MD, out / TABLE_CSV
    write_text_atomic(md, report_markdown(table, runs=runs))
    write_text_atomic(csv_path, to_csv(table))
    return {"table": table, "markdown": md, "csv": csv_path}


# --------------------------------------------------------------------------------------------
# Plots (each returns a matplotlib Figure, not registered with pyplot; display() or save_figure() it)
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs):
    """A Figure outside pyplot (nothing is shown or kept open by these helpers) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def _empty(message: str):
    fig, axes = _figure(5, 2)
    axes[0, 0].axis("off")
    axes[0, 0].text(0.5, 0.5, message, ha="center", va="center")
    return fig


def _setting_key(run: dict) -> tuple:
    return (run["model"], run["data"], run["resolution"], run["crop_size"])


def _setting_label(key: tuple) -> str:
    model, data, resolution, crop = key
    return f"{model}, {data} ({resolution} px, crop {crop})"


def plot_learning_curves(runs: list[dict]):
    """Validation mIoU (%) against training iteration, one panel per loss, one line per run."""
    from matplotlib.ticker import MaxNLocator

    if not runs:
        return _empty("no runs to plot")
    losses = [loss for loss in ALL_LOSSES if any(r["loss"] == loss for r in runs)]
    fig, axes = _figure(4.2 * len(losses), 3.4, ncols=len(losses), sharey=True)
    for ax, loss in zip(axes[0], losses):
        for run in sorted((r for r in runs if r["loss"] == loss), key=lambda r: r["run"]):
            points = curve(run, runs)
            if not points:
                continue
            x, y = zip(*points)
            ax.plot(x, [100 * v for v in y], marker="o", markersize=3, label=run["run"])
        ax.set_title(LOSS_LABELS[loss])
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("val mIoU (%)")
    return fig


def plot_per_class_iou(runs: list[dict]):
    """Final per-class IoU (%) per loss, mean over seeds (error bar: standard deviation), one panel per setting."""
    if not runs:
        return _empty("no runs to plot")
    settings = sorted({_setting_key(r) for r in runs}, key=lambda k: tuple(map(str, k)))
    fig, axes = _figure(8, 3.2 * len(settings), nrows=len(settings))
    for ax, key in zip(axes[:, 0], settings):
        members = [r for r in runs if _setting_key(r) == key]
        classes = list(dict.fromkeys(c for r in members for c in r["per_class_iou"]))
        losses = [loss for loss in ALL_LOSSES if any(r["loss"] == loss for r in members)]
        width = 0.8 / max(len(losses), 1)
        for i, loss in enumerate(losses):
            means, stds = [], []
            for c in classes:
                values = [r["per_class_iou"].get(c) for r in members if r["loss"] == loss]
                values = [100 * v for v in values if v is not None]
                means.append(statistics.fmean(values) if values else np.nan)
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            x = np.arange(len(classes)) + (i - (len(losses) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=2, label=LOSS_LABELS[loss])
        ax.set_xticks(np.arange(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_ylim(0, 100)
        ax.set_title(_setting_label(key), fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    return fig


def plot_crf_gain_along_training(table: list[dict], runs: list[dict]):
    """DenseCRF mIoU minus pCE mIoU (pp, means over seeds) at each evaluation, one line per row of the table:
    a gain that shrinks towards the end was faster early training, not a better end point. Two-phase
    runs: the gain over the pCE end point along the fine-tuning (``grid.gain_along_training``)."""
    by_name = {r["run"]: r for r in runs}
    curves = []
    for r in table:
        crf = [by_name[n] for n in r["runs"]["pce_crf"] if n in by_name]
        pce = [by_name[n] for n in r["runs"]["pce"] if n in by_name]
        points = gain_along_training(crf, pce) if crf and pce else []
        if points:
            curves.append((_setting(r), points))
    if not curves:
        return _empty("no pCE and pCE + DenseCRF runs evaluated at the same iterations")
    fig, axes = _figure(7, 3.6)
    ax = axes[0, 0]
    for label, points in curves:
        x, y = zip(*points)
        ax.plot(x, [100 * v for v in y], marker="o", markersize=3, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("DenseCRF − pCE mIoU (pp)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return fig


def plot_crf_share(table: list[dict]):
    """The DenseCRF loss's share (%) of a pCE + DenseCRF training iteration, one bar per setting,
    labelled with the iteration's median seconds."""
    rows = [r for r in table if r.get("crf_share") is not None]
    if not rows:
        return _empty("no pCE + DenseCRF runs with timings")
    fig, axes = _figure(max(4.0, 1.6 * len(rows) + 2), 3.6)
    ax = axes[0, 0]
    labels = [f"{r['network']}\n{r['data']} {r['resolution_px']} px\ncrop {r['crop_px']}" for r in rows]
    shares = [100 * r["crf_share"] for r in rows]
    bars = ax.bar(range(len(rows)), shares, color="tab:orange")
    for bar, r in zip(bars, rows):
        seconds = r.get("pce_crf_s_per_iteration")
        text = f"{bar.get_height():.1f}%" + (f"\n{seconds:.3f} s/it" if seconds is not None else "")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("DenseCRF loss share of iteration (%)")
    ax.set_ylim(0, max(100.0, max(shares) * 1.15) if shares else 100.0)
    ax.grid(axis="y", alpha=0.3)
    return fig


def report_figures(table: list[dict], runs: list[dict]) -> dict:
    """The table notebook's figures, by the file name they are saved under."""
    return {"miou_learning_curves.png": plot_learning_curves(runs),
            "miou_per_class_iou.png": plot_per_class_iou(runs),
            "miou_crf_time_share.png": plot_crf_share(table),
            "miou_crf_gain_along_training.png": plot_crf_gain_along_training(table, runs)}


def figure_png(fig) -> bytes:
    """The PNG :func:`save_figure` writes, in memory (to show a figure without writing a file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()
