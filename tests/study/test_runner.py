"""The study runner's parameter files: sections per notebook, checked before anything runs."""

import ast
from pathlib import Path

import pytest
import yaml

from rloss.study.runner import declared_parameters, is_path_parameter, plan, study_notebooks

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = study_notebooks(ROOT / "notebooks")


def _default(info: dict):
    return ast.literal_eval(info["default"])


def test_smoke_parameters_are_the_notebooks_own_defaults():
    """CI runs the notebooks under nbval with their defaults; params/smoke.yaml must say the same
    (its folders relative to the repository root, the notebooks' own relative to notebooks/)."""
    for notebook, values in plan(ROOT / "params" / "smoke.yaml", NOTEBOOKS):
        declared = declared_parameters(notebook)
        for key, value in values.items():
            default = _default(declared[key])
            if is_path_parameter(key):
                default = str((ROOT / "notebooks" / default).resolve())
            assert default == value, f"{notebook.name}: {key}"


def test_folders_in_a_parameter_file_are_relative_to_where_the_study_runs(tmp_path, monkeypatch):
    params = tmp_path / "p.yaml"
    params.write_text("common:\n  results_dir: out/results\n02_train_40px:\n  data_root: /abs/data\n  study_name: s\n")
    monkeypatch.chdir(tmp_path)
    [(_, values)] = plan(params, [nb for nb in NOTEBOOKS if nb.stem == "02_train_40px"])
    assert values["results_dir"] == str(tmp_path / "out" / "results")  # from the working folder, not notebooks/
    assert values["data_root"] == "/abs/data" and values["study_name"] == "s"


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "params").glob("*.yaml")))
def test_every_section_and_key_names_a_notebook_parameter(name):
    steps = plan(ROOT / "params" / name, NOTEBOOKS)
    assert [nb.name for nb, _ in steps] == [nb.name for nb in NOTEBOOKS]
    sections = yaml.safe_load((ROOT / "params" / name).read_text())
    for notebook, values in steps:
        assert set(sections.get(notebook.stem) or {}) <= set(values)


def test_common_values_go_only_to_notebooks_that_declare_them(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("common:\n  seed: 7\n  results_dir: /r\n02_train_40px:\n  epochs: 3\n")
    values = dict((nb.stem, v) for nb, v in plan(path, NOTEBOOKS, rerun=True))
    assert values["00_environment_and_loss"]["seed"] == 7 and "results_dir" not in values["00_environment_and_loss"]
    assert values["02_train_40px"] == {"results_dir": "/r", "epochs": 3, "rerun": True}


def test_unknown_keys_and_sections_are_one_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("02_train_40px:\n  epoch: 3\n")
    with pytest.raises(ValueError, match=r"p\.yaml: 02_train_40px\.epoch is not a parameter of .*02_train_40px"):
        plan(path, NOTEBOOKS)
    path.write_text("07_extra:\n  x: 1\n")
    with pytest.raises(ValueError, match=r"section '07_extra' names no notebook"):
        plan(path, NOTEBOOKS)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold sections"):
        plan(path, NOTEBOOKS)


def test_set_overrides_the_file_and_is_checked_like_it(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("common:\n  results_dir: /r\n02_train_40px:\n  epochs: 3\n")
    values = dict((nb.stem, v) for nb, v in plan(
        path, NOTEBOOKS, overrides=["02_train_40px.wandb=true", "02_train_40px.epochs=5", "common.results_dir=/s",
                                    "03_train_513px.seeds=[0, 1]"]))
    assert values["02_train_40px"] == {"results_dir": "/s", "epochs": 5, "wandb": True}
    assert values["03_train_513px"]["seeds"] == [0, 1]
    assert (path.read_text()) == "common:\n  results_dir: /r\n02_train_40px:\n  epochs: 3\n"  # the file is untouched
    with pytest.raises(ValueError, match=r"02_train_40px\.wandbb is not a parameter"):
        plan(path, NOTEBOOKS, overrides=["02_train_40px.wandbb=true"])
    for bad in ("epochs=3", "02_train_40px.epochs", ".epochs=3"):
        with pytest.raises(ValueError, match=r"expected SECTION\.KEY=VALUE"):
            plan(path, NOTEBOOKS, overrides=[bad])


def _tiny_notebook(path: Path, text: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"value = {text!r}", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(value)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_a_partial_rerun_keeps_the_whole_studys_executed_notebooks(tmp_path):
    from rloss.study.runner import run_study

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _tiny_notebook(notebooks / "00_first.ipynb", "a")
    _tiny_notebook(notebooks / "01_second.ipynb", "b")
    params = tmp_path / "params.yaml"
    params.write_text("01_second:\n  value: full\n")
    out = tmp_path / "executed"
    assert run_study(params, output_dir=out, notebooks_dir=notebooks) == 0
    whole = (out / "01_second.ipynb").read_text()
    assert "full" in whole

    assert run_study(params, only=["01"], overrides=["01_second.value=partial"], output_dir=out,
                     notebooks_dir=notebooks) == 0
    assert (out / "01_second.ipynb").read_text() == whole  # the whole study's copy is untouched
    [partial] = list(out.glob("only-*/01_second.ipynb"))
    assert "partial" in partial.read_text() and not list(out.glob("only-*/00_first.ipynb"))


def test_each_parameter_files_study_keeps_its_executed_notebooks(tmp_path, monkeypatch):
    from rloss.study.runner import run_study

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _tiny_notebook(notebooks / "00_only.ipynb", "a")
    for name in ("mine", "theirs"):
        (tmp_path / f"{name}.yaml").write_text(f"00_only:\n  value: {name}-value\n")
    monkeypatch.chdir(tmp_path)
    assert run_study("mine.yaml", notebooks_dir=notebooks) == 0
    assert run_study("theirs.yaml", notebooks_dir=notebooks) == 0
    for name in ("mine", "theirs"):
        assert f"{name}-value" in (tmp_path / "results" / f"notebooks-{name}" / "00_only.ipynb").read_text()
