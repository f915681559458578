"""The three floors as folders: the library (rloss/ itself: losses, filtering/, models/, data/, ...) never
imports the run layer (rloss/engine/); neither imports the study (rloss/study/) nor the developer tools
(tools/); only the command line reaches the study and the tools, lazily. No import circle anywhere."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rloss"
# Everything in rloss/ outside rloss/study/, except the top entry points (cli.py may import the study
# for its `study` command and the tools for `gpu-check` and `bench`; __main__ only calls cli).
ENTRY_POINTS = {"rloss/cli.py", "rloss/__main__.py"}
LOWER_LAYERS = sorted(p for p in PACKAGE.rglob("*.py")
                      if "study" not in p.relative_to(PACKAGE).parts
                      and str(p.relative_to(PACKAGE.parent)) not in ENTRY_POINTS)
# The library: the same without the run layer.
LIBRARY = [p for p in LOWER_LAYERS if "engine" not in p.relative_to(PACKAGE).parts]


def module_package(path: Path) -> str:
    """The package a file of rloss/ belongs to, which its relative imports start from."""
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__") if path.name == "__init__.py" else name.rpartition(".")[0]


def imported_modules(path: Path, package: str) -> set[str]:
    """The absolute names of every module ``path`` (in ``package``) imports, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _is_upper(name: str) -> bool:
    return name == "rloss.study" or name.startswith(("rloss.study.", "tools.")) or name == "tools"


def test_the_walk_sees_relative_and_lazy_imports(tmp_path):
    # The checker itself: lazy, relative and absolute imports of the study from a run-layer module are seen.
    probe = tmp_path / "probe.py"
    probe.write_text("import json\n\ndef f():\n    from .study import grid\n    from .study.report import save_figure\n"
                     "    from ..tools import browser_check\n    import rloss.study.runner\n")
    names = imported_modules(probe, "rloss")
    assert {"rloss.study", "rloss.study.grid", "rloss.study.report", "rloss.study.runner", "tools"} <= names
    assert sum(map(_is_upper, names)) == 7 and not _is_upper("json") and not _is_upper("rloss.studyish")
    assert module_package(PACKAGE / "filtering" / "__init__.py") == "rloss.filtering"
    assert module_package(PACKAGE / "data" / "io.py") == "rloss.data"


@pytest.mark.parametrize("path", LOWER_LAYERS, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_library_and_run_layers_do_not_import_the_study(path):
    upward = sorted(n for n in imported_modules(path, module_package(path)) if _is_upper(n))
    assert not upward, f"{path.relative_to(PACKAGE.parent)} imports {upward}: the study layer sits above it"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_the_library_does_not_import_the_run_layer(path):
    upward = sorted(n for n in imported_modules(path, module_package(path))
                    if n == "rloss.engine" or n.startswith("rloss.engine."))
    assert not upward, f"{path.relative_to(PACKAGE.parent)} imports {upward}: the run layer sits above the library"


def test_the_floors_are_folders():
    # The run layer's modules live in rloss/engine/, the study's in rloss/study/, the tools in tools/.
    assert (PACKAGE / "engine" / "train.py").is_file() and (PACKAGE / "study" / "runner.py").is_file()
    assert {p.name for p in LIBRARY} >= {"losses.py", "metrics.py", "crf_weight.py"}
    assert not {"train.py", "config.py", "gpu_check.py", "bench.py"} & {p.name for p in PACKAGE.glob("*.py")}
    assert (PACKAGE.parent / "tools" / "gpu_check.py").is_file() and (PACKAGE.parent / "tools" / "bench.py").is_file()


def test_importing_the_package_and_its_run_layer_loads_no_study_module():
    run_layer = ["rloss", "rloss.cli", "rloss.losses", "rloss.metrics", "rloss.crf_weight"] + sorted(
        f"rloss.engine.{p.stem}" for p in (PACKAGE / "engine").glob("*.py") if p.stem != "__init__")
    code = ("import importlib, sys\n"
            f"for name in {run_layer!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('rloss.study', 'tools', 'matplotlib', 'ipywidgets', "
            "'papermill'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_loss_alone_needs_only_the_core_dependencies():
    # `pip install rloss` pulls torch, numpy, pillow (and ninja to build the lattice); the loss must not
    # reach for what the run layer's or the study's extras bring (yaml, scipy, torchvision, matplotlib, ...).
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    core = sorted(dep.split(">")[0].split("=")[0].strip() for dep in project["dependencies"])
    assert core == ["ninja", "numpy", "pillow", "torch"]
    code = ("import sys, torch\n"
            "before = {m.split('.')[0] for m in sys.modules}\n"
            "import rloss\n"
            "images = torch.rand(1, 3, 12, 12) * 255\n"
            "probs = torch.rand(1, 3, 12, 12).softmax(1).requires_grad_()\n"
            "for kernel in ('exact', 'permutohedral'):\n"
            "    rloss.DenseCRFLoss(1e-3, 15.0, 5.0, 1.0, kernel=kernel)(images, probs, torch.ones(1, 12, 12)).backward()\n"
            "rloss.partial_cross_entropy(torch.randn(1, 3, 12, 12), torch.zeros(1, 12, 12, dtype=torch.long))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    extras = {"yaml", "scipy", "tqdm", "torchvision", "matplotlib", "skimage", "wandb", "ipywidgets", "papermill"}
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert "rloss" in loaded and not loaded & extras, loaded


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Each module of rloss/ and the modules of rloss/ it imports (lazy imports too; ``from .x import y``
    counts as an import of ``x``, or of ``x.y`` when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_modules(path, module_package(path)):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_finder_finds_a_circle_and_only_circles():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_module_of_the_package_imports_itself_through_others():
    """No import circle, lazy imports included: runs.py (the run folder) needs nothing of run_pool.py
    (which trains runs through train.py, which writes run folders)."""
    graph = import_graph()
    assert "rloss.engine.runs" in graph and "rloss.engine.train" in graph["rloss.engine.run_pool"]
    assert import_cycles(graph) == []


def test_architecture_names_every_module():
    """ARCHITECTURE.md is drawn from the tree: a module added or moved without it fails here."""
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    unnamed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if f"`{relative}`" not in text:
            unnamed.append(relative)
    unnamed += [f"tools/{p.name}" for p in sorted((PACKAGE.parent / "tools").glob("*.py"))
                if p.name != "__init__.py" and f"`tools/{p.name}`" not in text]
    assert not unnamed, f"modules ARCHITECTURE.md does not name: {unnamed}"
