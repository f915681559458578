"""rloss reproduce: a study run again into a fresh folder and compared, run by run, with a recorded
one; rloss record-study: what a recorded study keeps."""

import json
from pathlib import Path

import pytest

from inputs import tiny_config
from rloss.cli import main
from rloss.engine.runs import CHECKPOINT, CONFIG, METRICS, write_config
from rloss.study.reproduce import compare_studies, record_study, report_comparison, reproduce
from rloss.study.runner import run_study

ROOT = Path(__file__).resolve().parents[2]


def _scores(miou: float) -> dict:
    return {"miou": miou, "pixel_accuracy": 0.5 + miou / 2, "per_class_iou": {"background": miou, "disc": miou / 2},
            "num_pixels": 100}


def _write_run(results: Path, name: str, evals=(0.25, 0.5), threads: int = 1, commit: str = "a" * 40) -> Path:
    """A finished run folder as train writes it: config.yaml and metrics.json (scores as given)."""
    run_dir = results / name
    run_dir.mkdir(parents=True)
    cfg = tiny_config(results.parent / "data" / "set_40px", results, name, f"run.threads={threads}",
                      f"loss.init_from={results / 'start' / CHECKPOINT}")
    write_config(run_dir, cfg.to_yaml(), "id" + name)
    steps = [{"epoch": i + 1, "iteration": 2 * (i + 1), **_scores(m)} for i, m in enumerate(evals)]
    doc = {"run": name, "run_id": "id" + name, "evals": steps, "final": steps[-1],
           "provenance": {"commit": commit, "dirty": False, "threads": threads, "torch": "2.x", "device": "cpu"}}
    (run_dir / METRICS).write_text(json.dumps(doc))
    return run_dir


def _study(folder: Path, **changed) -> Path:
    """Two runs, ``a`` and ``b``; ``changed`` gives ``b`` other arguments."""
    _write_run(folder / "results", "a")
    _write_run(folder / "results", "b", **changed)
    return folder / "results"


def test_the_same_study_somewhere_else_reproduces(tmp_path, capsys):
    # Other folders (the data's parent, the results folder) and another commit are no difference.
    recorded, fresh = _study(tmp_path / "first"), _study(tmp_path / "second", commit="b" * 40)
    assert compare_studies(recorded, fresh) == []
    assert report_comparison(recorded, fresh) == 0
    assert "all 2 runs" in capsys.readouterr().out


def test_a_changed_score_is_named_with_the_settings_and_provenance_behind_it(tmp_path, capsys):
    recorded = _study(tmp_path / "first")
    fresh = _study(tmp_path / "second", evals=(0.25, 0.51), threads=2)
    lines = compare_studies(recorded, fresh)
    assert not any(line.startswith("a:") for line in lines)  # run a is the same
    assert lines[0] == ("b: final mIoU 50.0000 -> 51.0000 % (+1.0000 pp); 4 final scores differ, "
                        "e.g. miou: 0.5 -> 0.51")
    assert "b:   first differing evaluation: iteration 4 (miou: 0.5 -> 0.51)" in lines
    assert "b:   settings: run.threads: 1 -> 2" in lines
    assert "b:   provenance: threads: 1 -> 2" in lines
    assert report_comparison(recorded, fresh) == 1
    assert "1 of 2 runs differ" in capsys.readouterr().out


def test_an_evaluation_on_the_way_counts_too(tmp_path):
    lines = compare_studies(_study(tmp_path / "first"), _study(tmp_path / "second", evals=(0.26, 0.5)))
    assert lines[0] == "b: the final scores agree but the evaluation at iteration 2 differs (miou: 0.25 -> 0.26)"
    assert "b:   settings: the same" in lines and "b:   provenance: the same" in lines


def test_missing_and_extra_runs_are_named(tmp_path):
    recorded = _study(tmp_path / "first")
    fresh = tmp_path / "second" / "results"
    _write_run(fresh, "a")
    _write_run(fresh, "c")
    assert compare_studies(recorded, fresh) == ["b: recorded, but not in the new study",
                                                "c: in the new study, but not recorded"]


def test_record_study_keeps_configs_metrics_tables_and_no_checkpoint(tmp_path):
    results = _study(tmp_path / "study")
    (results / "a" / CHECKPOINT).write_bytes(b"weights")
    (results / "report-small").mkdir()
    (results / "report-small" / "miou_table.md").write_text("| table |\n")
    (results / "interpolation_small.csv").write_text("a,b\n")
    (results / "small_weight_sweep.json").write_text("{}\n")
    dest = record_study(results, tmp_path / "recorded")
    for name in "ab":
        for file in (CONFIG, METRICS):
            assert (dest / "runs" / name / file).read_bytes() == (results / name / file).read_bytes()
    assert not (dest / "runs" / "a" / CHECKPOINT).exists()
    assert (dest / "report-small" / "miou_table.md").is_file() and (dest / "interpolation_small.csv").is_file()
    assert (dest / "small_weight_sweep.json").is_file()
    assert compare_studies(dest, results) == []  # a recorded folder reads like the study it came from
    # A second record into the same folder is refused, and leaves it as it was.
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    with pytest.raises(FileExistsError, match="recorded exists"):
        record_study(results, dest)
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before


def test_an_unfinished_study_is_not_recorded(tmp_path):
    results = _study(tmp_path / "study")
    metrics = json.loads((results / "b" / METRICS).read_text())
    (results / "b" / METRICS).write_text(json.dumps({**metrics, "final": None}))
    with pytest.raises(ValueError, match="b: the run has not finished"):
        record_study(results, tmp_path / "recorded")
    assert not (tmp_path / "recorded").exists()


def test_bad_folders_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "--recorded", str(tmp_path / "nothing"), "--compare", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"rloss reproduce: {tmp_path / 'nothing'}: no run folders (<run>/metrics.json) found"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    recorded = _study(tmp_path / "recorded")
    assert main(["reproduce", "--recorded", str(recorded), "--out", str(busy)]) == 1
    assert "is not empty: reproduce runs the study into a fresh folder" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]


def test_the_smoke_study_reproduces_with_another_number_of_runs_at_once(tmp_path, monkeypatch, capsys):
    """End to end: notebooks 01 and 02 of the smoke study, one run at a time (in the notebook's own
    process, which has all the cores' threads), recorded; then reproduced into a fresh folder with
    two runs at once (worker processes): every run's every evaluation is the same."""
    monkeypatch.chdir(ROOT)  # where `make reproduce` runs: the notebooks are found from there
    smoke = ROOT / "params" / "smoke.yaml"
    first = tmp_path / "first"
    assert run_study(smoke, only=["01", "02"], output_dir=first / "notebooks", base_dir=first, parallel_runs=1) == 0
    recorded = record_study(first / "results", tmp_path / "recorded")
    assert {p.name for p in (recorded / "runs").iterdir()} == {f"smoke40_{loss}_seed0" for loss in
                                                               ("pce", "pce_crf", "full")}
    capsys.readouterr()
    assert reproduce(recorded, smoke, out=tmp_path / "second", parallel_runs=2, only=["01", "02"]) == 0
    assert "all 3 runs" in capsys.readouterr().out
    assert (tmp_path / "second" / "data" / "smoke_40px").is_dir()  # its own data, made afresh
