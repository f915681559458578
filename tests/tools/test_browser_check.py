"""The result browser in a real browser: notebook 05 served by Voilà, and opened in JupyterLab, driven in
headless Chromium; and how the browser is provisioned (with the commands stubbed).

The two real-browser tests need a Chromium (`make browser`, which `make test` runs once): without one
they are skipped with one line, and fail under CI=true."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.browser_check import (BrowserCheckError, main, check_notebook_in_lab, check_result_browser, lab_arguments,
                                 provision_browser)
from rloss.engine.config import load_config
from rloss.data.folder import SegmentationFolder
from rloss.data.io import voc_palette
from rloss.engine.infer import load_predictor
from rloss.engine.train import train
from rloss.study.browser import WRONG, ResultBrowser

from inputs import randomise_classifier

ROOT = Path(__file__).resolve().parents[2]
PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
FIRST, SECOND = "a_pce", "b_full"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs (one epoch on 8 images of 40 px); the second's classifier made random, with
    biases that level three classes, so that its prediction has several colours."""
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, size=40, n_train=8, n_val=4, seed=0, progress=False)
    results = tmp_path_factory.mktemp("project") / "results"
    for name, loss, seed in ((FIRST, "pce", 0), (SECOND, "full", 1)):
        train(load_config(None, [
            f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
            "optim.epochs=1", f"loss.type={loss}", f"run.results_dir={results}", f"run.name={name}",
            "run.eval_every_epochs=1", "run.device=cpu", f"run.seed={seed}",
        ]))
    randomise_classifier(results / SECOND / "checkpoint.pt", root)
    return root, results


def test_browser_changes_selection_and_screenshot_shows_the_overlay(trained, chromium, tmp_path):
    root, results = trained
    shot = tmp_path / "shots" / "browser.png"
    summary = check_result_browser(results, shot, timeout_s=120, chromium_path=chromium)

    # The selection changed in the page: next image, then the compare run.
    assert summary["runs"] == [FIRST, SECOND] and summary["compare_run"] == SECOND
    assert FIRST in summary["initial_info"] and " 1/4 " in summary["initial_info"]
    assert summary["image_changed_after_next"] and " 2/4 " in summary["after_next_info"]
    assert summary["image_changed_after_compare"] and SECOND in summary["final_info"]
    assert " 2/4 " in summary["final_info"] and "error" not in summary["final_info"]
    assert not list(results.glob("miou_*")), "the check must not rewrite the study's table and plots"

    # The screenshot: a PNG written under its name only (atomically), the page's width.
    assert summary["screenshot"] == str(shot) and list(shot.parent.iterdir()) == [shot]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == summary["screenshot_bytes"] > 20_000
    page = np.asarray(Image.open(shot).convert("RGB"))
    assert list(page.shape[1::-1]) == summary["screenshot_size"] and page.shape[1] == 1920

    # The view in the screenshot is what the browser draws for this state here (the page shows it
    # stretched to its width, so compared after resizing).
    box = summary["view_box"]
    assert box["natural_width"] > 1500  # 7 panels: compare mode
    x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
    assert 0 <= x and x + w <= page.shape[1] and 1000 < y and y + h <= page.shape[0]  # the whole page, browser last
    view = page[y: y + h, x: x + w].astype(int)
    browser = ResultBrowser(results, device="cpu")
    browser.select_image(1)
    browser.select_compare_run(SECOND)
    expected = Image.open(io.BytesIO(browser.render_png())).convert("RGB")
    assert expected.size == (box["natural_width"], box["natural_height"])
    expected = np.asarray(expected.resize((w, h), Image.BILINEAR)).astype(int)
    assert np.abs(view - expected).mean() < 4.0

    # Independently of the widget code: the second run's prediction on image 2, in VOC colours,
    # and its wrong pixels in red, fill a share of the view like theirs of the image.
    sample = SegmentationFolder(root, "val").load(SegmentationFolder(root, "val").ids[1])
    [pred] = load_predictor(results / SECOND / "checkpoint.pt", "cpu").predict([sample.image])
    classes, counts = np.unique(pred.labels, return_counts=True)
    assert len(classes) >= 2
    panel_pixels = (0.6 * h) ** 2  # a panel: at least 60% of the view's height, squared
    for cls, count in zip(classes, counts):
        share = count / pred.labels.size
        if share >= 0.1:
            seen = np.all(view == PALETTE[cls], axis=-1).sum()
            assert seen >= 0.5 * share * panel_pixels, (cls, share, seen)
    wrong = (pred.labels != sample.mask).mean()
    assert wrong > 0.05 and np.all(view == WRONG, axis=-1).sum() >= 0.5 * wrong * panel_pixels


def test_missing_chromium_is_one_clear_error(trained, tmp_path):
    _, results = trained
    with pytest.raises(BrowserCheckError, match="apt-get install chromium"):
        check_result_browser(results, tmp_path / "x.png", chromium_path=tmp_path / "no-chromium")
    assert not (tmp_path / "x.png").exists()


def test_no_runs_is_one_clear_error_on_the_command_line(tmp_path, capsys):
    (tmp_path / "results" / "not_a_run").mkdir(parents=True)  # no checkpoint
    assert main(["check", "--results", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("rloss browser-check: no run with a checkpoint under")



def test_jupyterlab_runs_notebook_05_and_renders_the_result_browser(trained, chromium, tmp_path):
    root, results = trained
    before = sorted(str(p.relative_to(results)) for p in results.rglob("*"))
    shot = tmp_path / "lab.png"
    summary = check_notebook_in_lab(results, shot, timeout_s=120, chromium_path=chromium)

    # every cell ran without an error, and the widget shows the first run's first val image
    assert summary["error_outputs"] == 0 and summary["image_loaded"]
    assert FIRST in summary["info"] and " 1/4 " in summary["info"] and "error" not in summary["info"]
    assert sorted(str(p.relative_to(results)) for p in results.rglob("*")) == before, "Lab only reads the results"

    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == summary["screenshot_bytes"] and list(tmp_path.iterdir()) == [shot]
    page = np.asarray(Image.open(shot).convert("RGB"))
    box = summary["view_box"]
    x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
    assert 0 <= x and x + w <= page.shape[1] and 0 <= y and y + h <= page.shape[0], (box, page.shape)
    # the picture in the page is what the browser draws for the first run's first image
    expected = Image.open(io.BytesIO(ResultBrowser(results, device="cpu").render_png())).convert("RGB")
    expected = np.asarray(expected.resize((w, h), Image.BILINEAR)).astype(int)
    assert np.abs(page[y: y + h, x: x + w].astype(int) - expected).mean() < 4.0


# --------------------------------------------------------------------------------------------
# Provisioning (make browser / make test): which path it takes, the commands stubbed
# --------------------------------------------------------------------------------------------

PLAYWRIGHTS = Path("/home/u/.cache/ms-playwright/chromium-1/chrome-linux64/chrome")


class Machine:
    """Stubs of the commands provision_browser uses: which tools exist, who we are, which commands
    succeed, and the browser each successful install leaves behind."""

    def __init__(self, tools=("apt-get",), euid=1000, failing=(), installed=None, broken=()):
        self.tools, self._euid, self.failing, self.browser = set(tools), euid, set(failing), installed
        self.broken = set(broken)  # browsers that do not start (a download without its libraries)
        self.commands, self.lines = [], []

    def which(self, name):
        return f"/usr/bin/{name}" if name in self.tools else None

    def euid(self):
        return self._euid

    def run(self, command, **kwargs):
        import subprocess

        self.commands.append(" ".join(command))
        text = " ".join(command)
        ok = not any(f in text for f in self.failing)
        if ok and "install" in command and "chromium" in command:
            self.browser = CHROMIUM_PATH if "apt-get" in command else PLAYWRIGHTS
        return subprocess.CompletedProcess(command, 0 if ok else 100)

    def find(self):
        return self.browser

    def starts(self, path):
        return f"{path} does not start (exit code 127)" if path in self.broken else None

    def provision(self, ci=False):
        return provision_browser(run=self.run, find=self.find, which=self.which, euid=self.euid, starts=self.starts,
                                 ci=ci, log=self.lines.append)


CHROMIUM_PATH = Path("/usr/bin/chromium")


def test_provision_finds_an_installed_browser_and_installs_nothing():
    machine = Machine(installed=CHROMIUM_PATH)
    assert machine.provision() == ("present", CHROMIUM_PATH)
    assert machine.commands == [] and machine.lines == ["browser: /usr/bin/chromium (already installed)"]


def test_provision_as_root_installs_debians_chromium_with_apt():
    machine = Machine(euid=0)
    assert machine.provision() == ("apt", CHROMIUM_PATH)
    assert machine.commands == ["apt-get update -qq", "apt-get install -y -qq chromium"]
    assert len(machine.lines) == 1 and "Debian's chromium" in machine.lines[0]


def test_provision_uses_sudo_only_without_a_password():
    machine = Machine(tools=("apt-get", "sudo"))
    assert machine.provision()[0] == "apt"
    assert machine.commands == ["sudo -n true", "sudo -n apt-get update -qq", "sudo -n apt-get install -y -qq chromium"]

    machine = Machine(tools=("apt-get", "sudo"), failing=("sudo -n true",))  # sudo asks for a password
    assert machine.provision() == ("playwright", PLAYWRIGHTS)
    assert machine.commands[0] == "sudo -n true" and not any("apt-get" in c for c in machine.commands)
    assert machine.commands[-1].endswith("-m playwright install --no-shell chromium")


def test_provision_falls_back_to_playwright_when_apt_fails_or_is_absent():
    machine = Machine(euid=0, failing=("apt-get install",))
    assert machine.provision() == ("playwright", PLAYWRIGHTS)
    assert [c.split(" -m ")[-1] for c in machine.commands] == [
        "apt-get update -qq", "apt-get install -y -qq chromium", "playwright install --no-shell chromium"]
    assert machine.lines == [f"browser: {PLAYWRIGHTS} (downloaded by Playwright)"]

    machine = Machine(tools=(), euid=0)  # not Debian-like: no apt-get
    assert machine.provision() == ("playwright", PLAYWRIGHTS)
    assert len(machine.commands) == 1


def test_provision_without_any_browser_skips_in_one_line_and_fails_under_ci():
    machine = Machine(tools=(), failing=("playwright",))
    assert machine.provision() == ("none", None)
    [line] = machine.lines
    assert line == ("browser: none installed (apt-get: not available; playwright install chromium failed); "
                    "the browser tests will be skipped")

    machine = Machine(euid=1000, failing=("playwright",))  # apt-get there, but not root and no sudo
    with pytest.raises(BrowserCheckError, match=r"CI=true \(apt-get: needs root \(or sudo without a password\); "
                                                r"playwright install chromium failed\)"):
        machine.provision(ci=True)
    assert machine.lines == []


def test_provision_does_not_count_a_browser_that_does_not_start():
    machine = Machine(euid=0, installed=PLAYWRIGHTS, broken={PLAYWRIGHTS})  # downloaded, system libraries missing
    assert machine.provision() == ("apt", CHROMIUM_PATH)

    machine = Machine(tools=(), installed=PLAYWRIGHTS, broken={PLAYWRIGHTS})
    assert machine.provision(ci=False) == ("none", None)
    [line] = machine.lines
    assert line.startswith(f"browser: none installed ({PLAYWRIGHTS} does not start (exit code 127); apt-get: not available; ")


def test_browser_starts_says_why_a_browser_does_not_start(tmp_path):
    from tools.browser_check import browser_starts

    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("#!/bin/sh\necho '<html><head></head><body></body></html>'\n")
    bad.write_text("#!/bin/sh\necho 'chrome: error while loading shared libraries: libnss3.so' >&2\nexit 127\n")
    for script in (good, bad):
        script.chmod(0o755)
    assert browser_starts(good) is None
    assert browser_starts(bad) == (f"{bad} does not start (exit code 127: "
                                   "chrome: error while loading shared libraries: libnss3.so)")
    assert browser_starts(tmp_path / "missing").endswith("does not start (FileNotFoundError)")


def test_browser_setup_on_the_command_line_is_one_line(monkeypatch, capsys):
    import tools.browser_check as browser_check

    def no_browser():
        raise BrowserCheckError("no Chromium for the browser tests and CI=true (apt-get: not available)")

    monkeypatch.setattr(browser_check, "provision_browser", no_browser)
    assert main(["setup"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "rloss browser-setup: no Chromium for the browser tests and CI=true (apt-get: not available)"


def _make(*args, path=None):
    import os
    import subprocess

    env = {**os.environ, "PATH": f"{path}:{os.environ['PATH']}"} if path else None
    out = subprocess.run(["make", "-n", "--no-print-directory", *args, "PY=python", "STAMP=", "BROWSER_STAMP=x"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_lab_allows_root_only_for_root(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    for uid in (0, 1000):
        (fake / "id").write_text(f"#!/bin/sh\necho {uid}\n")
        (fake / "id").chmod(0o755)
        [lab] = [line for line in _make("lab", path=fake).splitlines() if "jupyter lab" in line]
        assert lab.startswith("python -m jupyter lab --notebook-dir=notebooks --port=8888 --no-browser")
        assert lab.endswith("--allow-root") == (uid == 0), lab
        # the browser test starts Lab as make lab does
        assert set(lab_arguments(lambda: uid)) <= set(lab.split()), (lab_arguments(lambda: uid), lab)


def test_make_test_provisions_the_browser_before_the_tests():
    lines = _make("test").splitlines()
    assert lines.index("python tools/browser_check.py setup") < lines.index("python -m pytest")
    assert "python tools/browser_check.py setup" in _make("browser").splitlines()
