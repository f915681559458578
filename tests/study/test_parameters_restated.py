"""Each training setting's default is declared once, by the config dataclasses (rloss/engine/config.py).
The notebooks' parameters cells and params/*.yaml may restate it for readers; this test ties every
restatement to that source. The rule:

1. A restatement is written in one of two forms, in any comment of a parameters cell or a params file
   (a "#" starts a comment):
   - ``the recipe's: VALUE`` on a parameter's line: VALUE is the default of the config key that parameter
     sets (:data:`SETTINGS`: ``NOTEBOOK_SETTINGS`` for the training notebooks, ``PREP_SETTINGS`` for
     notebook 01; in a params file, by its section's notebook);
   - ```KEY: VALUE``` in backquotes: KEY is a config key (``optim.iterations``) or a constant of
     rloss/engine/config.py (``FINETUNE_SHARE``).
   VALUE (read as YAML) must equal the source's value; a restatement of a parameter or key that has no
   such source fails too.
2. Any other value is an override and is not compared: a params file's section sets that study's own
   settings (the VOC files' published ``sigma_xy: 100.0``, default.yaml's ``crf_relative_weight: 16.0``),
   even where one equals the recipe's.
3. In a notebook's parameters cell a parameter that sets a config key is None (the recipe's) or an
   override that differs from the recipe's (the smoke run's ``iterations = 4``): a value equal to it
   would be a second declaration of the default, which nothing ties to the first.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import nbformat
import pytest
import yaml

from rloss.engine import config
from rloss.study.data_prep import PREP_SETTINGS
from rloss.study.training_notebook import NOTEBOOK_SETTINGS

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARAMS = sorted((ROOT / "params").glob("*.yaml"))
# Per notebook, its parameters that set a config key (flat, as the study layer maps them: "data_crop_size").
SETTINGS = {"01_data_prep": PREP_SETTINGS, "02_train_40px": NOTEBOOK_SETTINGS, "03_train_513px": NOTEBOOK_SETTINGS}
RECIPES_VALUE = re.compile(r"the recipe's: (\[[^\]]*\]|[^\s;,)]+)")
KEY_VALUE = re.compile(r"`(\w+(?:\.\w+)?): ([^`]+)`")
NO_SOURCE = object()


def source_value(key: str):
    """The declared value of a config key ("optim.iterations") or of a constant of the config module."""
    section, _, name = key.partition(".")
    if name:
        return getattr(getattr(config.TrainConfig(), section, None), name, NO_SOURCE)
    return getattr(config, key, NO_SOURCE) if key.isupper() else NO_SOURCE


def setting_key(stem: str, parameter: str | None) -> str | None:
    flat = SETTINGS.get(stem, {}).get(parameter)
    return flat.replace("_", ".", 1) if flat else None


def restatements(stem: str, parameter: str | None, comment: str) -> list[tuple[str | None, str]]:
    """The (key, value text) pairs a comment restates, on the line of ``parameter`` (None: a line of prose)."""
    found = [(setting_key(stem, parameter), text) for text in RECIPES_VALUE.findall(comment)]
    return found + KEY_VALUE.findall(comment)


def failures(where: str, pairs) -> list[str]:
    out = []
    for key, text in pairs:
        value = source_value(key) if key else NO_SOURCE
        if value is NO_SOURCE:
            out.append(f"{where}: restates {text!r} of {key or 'a parameter'} that has no default in "
                       "rloss/engine/config.py")
        elif yaml.safe_load(text) != value:
            out.append(f"{where}: restates {key} as {text}, but rloss/engine/config.py says {value!r}")
    return out


def parameters_cell(notebook: Path) -> str:
    [cell] = [c for c in nbformat.read(notebook, 4).cells if "parameters" in c.metadata.get("tags", [])]
    return cell.source


def cell_lines(source: str):
    """(parameter or None, its literal value, the line's comment) per commented or assigning line of a cell."""
    names = {node.lineno: node for node in ast.parse(source).body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    comments = {token.start[0]: token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
                if token.type == tokenize.COMMENT}
    for line in sorted(set(names) | set(comments)):
        node = names.get(line)
        yield (node.targets[0].id if node else None, ast.literal_eval(node.value) if node else None,
               comments.get(line, ""))


def notebook_failures(stem: str, source: str) -> tuple[list[str], int]:
    """Rules 1 and 3 on a parameters cell: its failures, and how many restatements it holds."""
    out, count = [], 0
    for parameter, value, comment in cell_lines(source):
        pairs = restatements(stem, parameter, comment)
        count += len(pairs)
        out += failures(f"{stem}: {parameter or 'comment'}", pairs)
        key = setting_key(stem, parameter)
        if key is not None and value is not None and value == source_value(key):
            out.append(f"{stem}: {parameter} = {value!r} is the recipe's {key} again: set None (and, for readers, "
                       f"\"the recipe's: {value!r}\" in its comment)")
    return out, count


def params_failures(name: str, text: str) -> tuple[list[str], int]:
    """Rule 1 on a params file, line by line: its failures, and how many restatements it holds."""
    out, count, section = [], 0, None
    for number, line in enumerate(text.splitlines(), 1):
        body, _, comment = line.partition("#")
        top = re.match(r"([\w-]+):", body)
        section = top[1] if top else section
        key = re.match(r"\s+(\w+):", body)
        pairs = restatements(section, key[1] if key else None, comment)
        count += len(pairs)
        out += failures(f"{name}:{number}", pairs)
    return out, count


def test_every_restated_default_in_the_notebooks_is_the_configs():
    counted = 0
    for notebook in NOTEBOOKS:
        found, count = notebook_failures(notebook.stem, parameters_cell(notebook))
        assert not found, "\n".join(found)
        counted += count
    assert counted >= 8  # the crop, the weights, the length, the evaluation, ...: the rule is not checking nothing


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_every_restated_default_in_a_params_file_is_the_configs(path):
    found, _ = params_failures(path.name, path.read_text())
    assert not found, "\n".join(found)


def test_the_default_studys_description_of_the_recipe_is_checked():
    _, count = params_failures("default.yaml", (ROOT / "params" / "default.yaml").read_text())
    assert count >= 8


def test_a_wrong_or_unsourced_restatement_and_a_second_default_fail():
    cell = ('crop_size = None  # (the recipe\'s: 65)\nsigma_xy = 12.5  # the recipe\'s\n'
            'lr = 0.1  # an override\nseeds = [0]  # (the recipe\'s: [0])\n# `optim.iterations: 4000`, `optim.lr: 1`\n')
    found, count = notebook_failures("02_train_40px", cell)
    assert count == 4
    assert found == [
        "02_train_40px: crop_size: restates data.crop_size as 65, but rloss/engine/config.py says 64",
        "02_train_40px: sigma_xy = 12.5 is the recipe's loss.sigma_xy again: set None (and, for readers, "
        "\"the recipe's: 12.5\" in its comment)",
        "02_train_40px: seeds: restates '[0]' of a parameter that has no default in rloss/engine/config.py",
        "02_train_40px: comment: restates optim.lr as 1, but rloss/engine/config.py says 0.002",
    ]
    text = ("# `FINETUNE_SHARE: 0.5` and `data.scale_range: [0.9, 1.2]`, `loss.sigma: 3`\n03_train_513px:\n"
            "  crop_size: null  # (null: the recipe's: 64)\n  sigma_xy: 100.0  # VOC's own\n"
            "04_bicubic_vs_bilinear:\n  device: auto  # the recipe's: auto\n")
    found, count = params_failures("p.yaml", text)
    assert count == 5
    assert found == ["p.yaml:1: restates '3' of loss.sigma that has no default in rloss/engine/config.py",
                     "p.yaml:6: restates 'auto' of a parameter that has no default in rloss/engine/config.py"]
