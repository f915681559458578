"""Progress of long work: training bars reach the study runner's terminal with the run (i of N), its
iterations, the time left and the study's elapsed time; without the runner nothing is written."""

import io
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from rloss.engine import progress
from rloss.engine.progress import PROGRESS_ENV, announce, progress_bar, report_run
from rloss.study.display import StudyDisplay

ROOT = Path(__file__).resolve().parents[2]


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines(text: str) -> list[str]:
    """What a terminal keeps of each redraw: the text between carriage returns and newlines."""
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def test_a_bar_reports_its_count_a_few_times_a_second_and_its_end(tmp_path, monkeypatch):
    channel = tmp_path / "progress.jsonl"
    monkeypatch.setenv(PROGRESS_ENV, str(channel))
    bar = progress_bar(total=50, desc="small_pce_seed0")
    for _ in range(50):
        bar.update(1)  # far faster than REPORT_EVERY_S: only the first and last counts go out
    bar.close()
    events = _events(channel)
    for event in events:
        assert 0 <= event.pop("elapsed") < 5
    assert events[0] == {"event": "iterations", "name": "small_pce_seed0", "n": 0, "total": 50, "unit": "it", "initial": 0,
                         "postfix": ""}
    assert events[-1] == {"event": "iterations", "name": "small_pce_seed0", "n": 50, "total": 50, "unit": "it",
                          "initial": 0, "postfix": ""}
    assert len(events) <= 4

    channel.unlink()
    monkeypatch.setattr(progress, "REPORT_EVERY_S", 0.0)  # every update reported
    bar = progress_bar(total=3, initial=1, desc="resumed")
    bar.update(1)
    bar.update(1)
    bar.close()
    assert [e["n"] for e in _events(channel)] == [1, 2, 3, 3]


def test_without_the_runner_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    bar = progress_bar(total=2, desc="x")
    bar.update(2)
    bar.close()
    report_run(1, 1, "x")
    assert type(bar) is not progress._ReportingBar and isinstance(bar, progress.tqdm)
    assert list(tmp_path.iterdir()) == []


def test_the_training_bar_is_tqdm_auto(monkeypatch):
    """In a notebook tqdm.auto draws a widget; the training loop takes its bar from progress_bar."""
    import tqdm.auto

    from rloss.engine import train

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    bar = train._progress(4, 0, "run")
    try:
        assert isinstance(bar, tqdm.auto.tqdm) and bar.total == 4 and bar.desc == "run"
    finally:
        bar.close()


def test_study_display_draws_cells_runs_iterations_and_elapsed_time(monkeypatch):
    """The runner's side, fed the way a kernel feeds it (the channel named in the environment)."""
    monkeypatch.setattr(progress, "REPORT_EVERY_S", 0.0)
    out = io.StringIO()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("") for _ in range(4)])
    start = time.monotonic() - 75  # the study began 1:15 ago
    with StudyDisplay(3, 6, "02_train_40px", start, file=out) as display:
        assert Path(progress.os.environ[PROGRESS_ENV]).is_file()
        display.notebook_started(notebook=notebook)
        display.cell_started(cell=notebook.cells[0], cell_index=0)
        display.cell_started(cell=notebook.cells[1], cell_index=1)
        report_run(1, 2, "small_pce_seed0", skipped=True)
        report_run(2, 2, "small_full_seed0")
        bar = progress_bar(total=4, desc="small_full_seed0", file=io.StringIO())
        for _ in range(4):
            bar.update(1)
            time.sleep(0.05)
        bar.close()
        display.cell_started(cell=notebook.cells[2], cell_index=2)  # reads the run's last events first
        display.cell_started(cell=notebook.cells[3], cell_index=3)
        channel = Path(progress.os.environ[PROGRESS_ENV])
    assert not channel.exists() and PROGRESS_ENV not in progress.os.environ

    lines = _lines(out.getvalue())
    assert "[3/6] 02_train_40px run 1/2 small_pce_seed0: finished before, skipped" in lines
    runs = [line for line in lines if "run 2/2 small_full_seed0" in line]
    assert runs and all(line.startswith("[3/6] 02_train_40px run 2/2 small_full_seed0:") for line in runs)
    final = re.search(r"100%\|[█#]+\| 4/4 \[00:00<00:00, +([\d.]+)it/s, study 1:1\d\]$", runs[-1])
    # the kernel's pace (4 iterations in about 0.2 s), not the reader's (all events read at once)
    assert final and 5 < float(final[1]) < 25, runs[-1]
    assert any(re.search(r"\| [123]/4 \[00:0\d<00:0\d", line) for line in runs), runs  # time left while it runs
    cells = [line for line in lines if line.startswith("[3/6] 02_train_40px:")]
    assert re.search(r"100%\|[█#]+\| cell 4/4 \[00:0\d, study 1:1\d\]$", cells[-1]), cells[-1]
    assert any("cell 1/4" in line for line in cells)
    # the order a terminal shows: cells, then the run, then the cells after it
    first_run, last_run = lines.index(runs[0]), lines.index(runs[-1])
    assert any("cell 1/4" in line for line in lines[:first_run])
    assert any("cell 4/4" in line for line in lines[last_run:])
    assert not any("run 2/2" in line for line in lines[lines.index(cells[-1]):]), "a stale event reopened the run"


def test_the_study_terminal_shows_announced_lines_and_the_runs_in_flight(monkeypatch, capsys):
    """A sweep's lines (its choice and margin, the weights being trained, the time left) and the names a
    parallel bar shows after its count reach the runner's terminal, not only the notebook."""
    monkeypatch.setattr(progress, "REPORT_EVERY_S", 0.0)
    out = io.StringIO()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    with StudyDisplay(3, 6, "02_train_40px", time.monotonic(), file=out) as display:
        display.notebook_started(notebook=notebook)
        display.cell_started(cell=notebook.cells[0], cell_index=0)
        announce("sweep s40: chose loss.crf_relative_weight 4: +2.00 pp over pCE")
        bar = progress_bar(total=2, desc="runs finished (2 at once)", unit="run", file=io.StringIO())
        bar.set_postfix_str("training s40_sweep_w1, s40_sweep_w4")
        bar.update(1)
        bar.set_postfix_str("training s40_sweep_w4")
        bar.update(1)
        bar.close()
    lines = _lines(out.getvalue())
    assert "[3/6] 02_train_40px sweep s40: chose loss.crf_relative_weight 4: +2.00 pp over pCE" in lines
    assert any("runs finished (2 at once)" in line and "0/2" in line
               and "training s40_sweep_w1, s40_sweep_w4, study 0:0" in line for line in lines), lines
    assert any("1/2" in line and "training s40_sweep_w4, study" in line for line in lines), lines
    assert "sweep s40: chose" in capsys.readouterr().err  # and in the notebook, under its cell


def _moved_paths(values: dict, root: Path) -> dict:
    """The folders a parameter file names (absolute, under the repository after ``plan``), moved under ``root``."""
    from rloss.study.runner import is_path_parameter

    return {name: str(root / Path(value).relative_to(ROOT)) for name, value in values.items()
            if is_path_parameter(name) and isinstance(value, str) and Path(value).is_relative_to(ROOT)}


@pytest.mark.slow
@pytest.mark.parametrize("parallel_runs", [1, 2])
def test_make_study_shows_each_run_its_iterations_and_no_kernel_warning(tmp_path, capfd, parallel_runs):
    """The smoke parameters' notebooks 01 and 02 (folders moved to tmp_path), as `make study` runs them:
    one run at a time, each with its iteration bar; or two at once, each run named as it starts and
    one bar counting the finished runs."""
    from rloss.study.runner import plan, run_study, study_notebooks

    smoke = ROOT / "params" / "smoke.yaml"
    notebooks = [nb for nb in study_notebooks(ROOT / "notebooks") if nb.stem[:2] in ("01", "02")]
    moved = [f"{nb.stem}.{name}={path}" for nb, values in plan(smoke, notebooks)
             for name, path in _moved_paths(values, tmp_path / "project").items()]
    assert len(moved) == 4  # 01: data_root, low_res_root; 02: data_root, results_dir
    assert run_study(smoke, only=["01", "02"], overrides=moved + [f"02_train_40px.parallel_runs={parallel_runs}"],
                     output_dir=tmp_path / "executed", notebooks_dir=ROOT / "notebooks") == 0
    err = capfd.readouterr().err
    lines = _lines(err)

    assert "== [2/2] " + str(ROOT / "notebooks" / "02_train_40px.ipynb") in err
    # smoke: 4 iterations; the DenseCRF run fine-tunes the pCE run for half as long (the recipe's two phases)
    for i, (loss, iterations) in enumerate((("pce", 4), ("pce_crf", 2), ("full", 4)), 1):
        name = f"smoke40_{loss}_seed0"
        assert (tmp_path / "project" / "results" / name / "metrics.json").is_file()
        if parallel_runs == 1:
            shown = [line for line in lines if line.startswith(f"[2/2] 02_train_40px run {i}/3 {name}:")]
            assert shown, err[-3000:]
            # the run's loss terms (e.g. "pce=1.101"), then the study's elapsed time
            assert re.search(rf"100%\|█+\| {iterations}/{iterations} \[[\d:]+<00:00, +[\d.]+(it/s|s/it)"
                             rf"(, \w+=[-+\d.e]+)+, study \d+:\d\d\]$", shown[-1]), shown[-1]
    if parallel_runs == 2:
        shown = [line for line in lines if line.startswith("[2/2] 02_train_40px runs finished (2 at once):")]
        assert shown, err[-3000:]
        assert re.search(r"100%\|█+\| 3/3 \[[\d:]+<00:00, +[\d.]+(run/s|s/run), ", shown[-1]), shown[-1]
    assert re.search(r"\[1/2\] 01_data_prep: 100%\|█+\| cell (\d+)/\1 ", err)
    assert re.search(r"02_train_40px\.ipynb done in \d+:\d\d \(study \d+:\d\d\)", err)
    assert "without encryption" not in err and "WARNING" not in err
    assert "Executing" not in err  # papermill's own cell bar is replaced
