"""The result browser checked in a real browser: notebook 05 served by Voilà, driven in headless Chromium;
and the headless Chromium itself, found or installed.

    summary = check_result_browser("results", "results/result_browser.png")
    # python tools/browser_check.py check [--results results] [--out results/result_browser.png] [--study NAME ...]
    how, path = provision_browser()   # python tools/browser_check.py setup (make browser; make test runs it once)

A developer tool, not part of the ``rloss`` package: it needs the study's extras (Voilà,
Playwright) and a source checkout (it serves ``notebooks/05_miou_table.ipynb``).

The browser is Debian's Chromium (``/usr/bin/chromium``) where it is installed, else the Chromium
that Playwright downloads (``python -m playwright install chromium``, into ~/.cache/ms-playwright).
``provision_browser`` installs one: Debian's package where apt-get can be used (as root, or with
sudo that needs no password), else Playwright's download; where neither can be had it says so in
one line (the browser tests are then skipped), and under ``CI=true`` that is an error.

A copy of ``notebooks/05_miou_table.ipynb`` with its parameters set (papermill, not executed) goes
to a temporary folder; Voilà serves it on a free localhost port and runs it (the whole notebook,
with ``write_files=False``: the table and plots in ``results_dir`` are left as they are); Debian's Chromium,
driven by Playwright, opens the page, waits for the browser widget (the run dropdown and the view
``<img>``), clicks "next ▶", picks a second run under "compare", waits after each change until the
``<img>`` shows a new picture and the info line names the new image / compare run, and saves a
full-page screenshot. Voilà and Chromium are always stopped.

What is missing (Chromium, Voilà, Playwright, a run with a checkpoint) and a widget that does not
render in time are one :class:`BrowserCheckError` that says what to do.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from rloss.data.io import atomic_path, output_folder
from rloss.study.browser import find_runs

__all__ = ["BrowserCheckError", "check_result_browser", "check_notebook_in_lab", "find_chromium", "browser_starts",
           "provision_browser", "lab_arguments", "CHROMIUM", "NOTEBOOK"]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, preferred: the system keeps it updated
APT_INSTALL = (("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", "chromium"))
PLAYWRIGHT_INSTALL = (sys.executable, "-m", "playwright", "install", "--no-shell", "chromium")
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "05_miou_table.ipynb"
# Wide enough for the compare view (7 panels of 2.4 in at 100 dpi = 1680 px) at its own size.
VIEWPORT = {"width": 1920, "height": 1080}
MAX_HEIGHT = 16_000  # pixels; Chromium's screenshots get unreliable beyond about 16k
LOG_LINES = 30  # lines of Voilà's log in an error message

# The browser's state in the page: its <img>, loaded, and the info line (an ipywidgets HTML).
_STATE_JS = """() => {
  const img = document.querySelector("img.widget-image");
  const info = document.querySelector(".widget-html-content");
  return {src: img ? img.src : null, loaded: !!(img && img.src && img.complete && img.naturalWidth > 0),
          info: info ? info.innerText.trim() : null};
}"""
# True once the <img> holds a loaded picture other than old_src and the info line contains want.
_CHANGED_JS = """([oldSrc, want]) => {
  const img = document.querySelector("img.widget-image");
  const info = document.querySelector(".widget-html-content");
  if (!img || !info) return false;
  const text = info.innerText;
  if (text.startsWith("error:")) return true;  // the widget reports a failure: stop waiting
  return img.src !== oldSrc && img.complete && img.naturalWidth > 0 && text.includes(want);
}"""
# The page's content height: Voilà's lab template scrolls an inner panel, not the document, so a
# "full page" screenshot needs a viewport as tall as that panel's content.
_CONTENT_HEIGHT_JS = """() => {
  let height = document.documentElement.scrollHeight;
  for (const el of document.querySelectorAll("*")) {
    const overflow = getComputedStyle(el).overflowY;
    if ((overflow === "auto" || overflow === "scroll") && el.scrollHeight > el.clientHeight + 1) {
      height = Math.max(height, el.getBoundingClientRect().top + window.scrollY + el.scrollHeight);
    }
  }
  return Math.ceil(height);
}"""
_BOX_JS = """() => {
  const img = document.querySelector("img.widget-image");
  const r = img.getBoundingClientRect();
  return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height,
          natural_width: img.naturalWidth, natural_height: img.naturalHeight};
}"""


class BrowserCheckError(RuntimeError):
    """The browser check could not run, or the widget did not behave; the message says what to do."""


def find_chromium() -> Path | None:
    """Debian's Chromium, else the one Playwright downloaded; None when there is neither."""
    if _executable(CHROMIUM):
        return CHROMIUM
    if importlib.util.find_spec("playwright") is None:
        return None
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as pw:
            downloaded = Path(pw.chromium.executable_path)  # where it is or would be; no download
    except PlaywrightError:
        return None
    return downloaded if _executable(downloaded) else None


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def browser_starts(path: Path, run=subprocess.run) -> str | None:
    """None when the Chromium at ``path`` renders a blank page headless; else why not, in one line
    (a downloaded Chromium can lack the system's libraries)."""
    with tempfile.TemporaryDirectory(prefix="rloss-chromium-") as profile:  # an empty profile
        try:
            done = run([str(path), *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--dump-dom", "about:blank"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{path} does not start ({type(exc).__name__})"
    if done.returncode == 0 and "<body" in done.stdout:
        return None
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    return f"{path} does not start (exit code {done.returncode}{': ' + errors[-1][:200] if errors else ''})"


def provision_browser(run=subprocess.run, find=find_chromium, which=shutil.which, euid=os.geteuid,
                      starts=browser_starts, ci: bool | None = None, log=print) -> tuple[str, Path | None]:
    """Makes a headless Chromium available for the browser tests and says in one line which.

    Returns ``(how, path)``: ``"present"`` (found, nothing installed), ``"apt"`` (Debian's package
    installed), ``"playwright"`` (Playwright's download) or ``"none"`` (path None). apt-get is
    used as root, or through ``sudo -n`` when sudo needs no password; Playwright's download is the
    fallback. A browser counts only if it starts (``starts``). ``ci`` (default: ``CI=true`` in the
    environment): "none" raises BrowserCheckError. ``run``, ``find``, ``which``, ``euid`` and
    ``starts`` are the commands it uses (replaceable in tests)."""
    ci = os.environ.get("CI", "").lower() == "true" if ci is None else ci
    tried = []
    found = find()
    if found is not None:
        problem = starts(found)
        if problem is None:
            log(f"browser: {found} (already installed)")
            return "present", found
        tried.append(problem)

    prefix = _apt_prefix(run, which, euid)
    if prefix is None:
        tried.append("apt-get: not available" if which("apt-get") is None
                     else "apt-get: needs root (or sudo without a password)")
    else:
        failed = next((c for c in APT_INSTALL if run([*prefix, *c], stdin=subprocess.DEVNULL).returncode != 0), None)
        found = find()
        problem = None if found is None else starts(found)
        if failed is None and found is not None and problem is None:
            log(f"browser: {found} (Debian's chromium, installed with {' '.join(prefix + ['apt-get'])})")
            return "apt", found
        tried.append(f"{' '.join([*prefix, *failed])} failed" if failed else problem or "apt-get installed no chromium")

    if importlib.util.find_spec("playwright") is None:
        tried.append("Playwright is not installed")
    else:
        done = run(list(PLAYWRIGHT_INSTALL), stdin=subprocess.DEVNULL).returncode == 0
        found = find()
        problem = None if found is None else starts(found)
        if done and found is not None and problem is None:
            log(f"browser: {found} (downloaded by Playwright)")
            return "playwright", found
        tried.append("playwright install chromium failed" if not done else problem or "Playwright installed no chromium")

    reason = "; ".join(tried)
    if ci:
        raise BrowserCheckError(f"no Chromium for the browser tests and CI=true ({reason})")
    log(f"browser: none installed ({reason}); the browser tests will be skipped")
    return "none", None


def _apt_prefix(run, which, euid) -> list[str] | None:
    """How apt-get can be run here: directly as root, through passwordless sudo, or not at all."""
    if which("apt-get") is None:
        return None
    if euid() == 0:
        return []
    if which("sudo") is not None and run(["sudo", "-n", "true"], stdin=subprocess.DEVNULL,
                                         capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def check_result_browser(results_dir, screenshot_path, study_names=None, port: int | None = None,
                         timeout_s: float = 180.0, compare_run: str | None = None,
                         chromium_path=None, notebook=NOTEBOOK) -> dict:
    """Serves notebook 05 on ``results_dir`` with Voilà, changes the browser's selection in headless
    Chromium and saves a full-page screenshot to ``screenshot_path`` (atomically).

    ``study_names``: None or run-name prefixes, as notebook 05 takes them; ``compare_run``: the run
    picked under "compare" (default: the second run, or the first when there is only one);
    ``chromium_path``: the browser (default: :func:`find_chromium`'s);
    ``timeout_s``: the longest wait for Voilà to run the notebook and for each change to show.
    Returns what was seen: the info line before and after each change, whether the view changed,
    the view's box in the screenshot and the screenshot's path and size."""
    results_dir = Path(results_dir).resolve()  # the notebook runs in a temporary folder
    screenshot_path = Path(screenshot_path)
    output_folder(screenshot_path.parent)  # a file in the way is found now, not after the browser ran
    study_names = None if study_names is None else ([study_names] if isinstance(study_names, str) else list(study_names))
    notebook = Path(notebook)
    runs = find_runs(results_dir, study_names)  # the user's input first: it does not depend on this machine
    if not runs:
        wanted = f" with a name starting with {', '.join(study_names)}" if study_names else ""
        raise BrowserCheckError(f"no run with a checkpoint under {results_dir}{wanted}: train one first "
                                "(e.g. make train-small), or pass --results")
    chromium_path = _check_prerequisites(chromium_path, notebook, "voila")
    if compare_run is None:
        compare_run = runs[1] if len(runs) > 1 else runs[0]
    elif compare_run not in runs:
        raise BrowserCheckError(f"compare run {compare_run!r} is not among the runs: {', '.join(runs)}")

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rloss-browser-check-") as tmp:
        tmp = Path(tmp)
        served = _prepare_notebook(notebook, tmp, results_dir, study_names)
        log_path = tmp / "voila.log"
        with _voila(served, port or _free_port(), log_path, timeout_s) as url:
            summary = _drive(url, chromium_path, compare_run, timeout_s, log_path)
        png = summary.pop("png")
    with atomic_path(screenshot_path) as part:
        part.write_bytes(png)
    width, height = _png_size(png)
    summary.update(runs=runs, run=runs[0], compare_run=compare_run, url=url, screenshot=str(screenshot_path),
                   screenshot_size=[width, height], screenshot_bytes=len(png),
                   seconds=round(time.monotonic() - start, 1))
    return summary


def lab_arguments(euid=os.geteuid) -> list[str]:
    """JupyterLab's options as ``make lab`` gives them: ``--allow-root`` only for root (Lab refuses
    root without it), and an encrypted kernel connection (no warning at each kernel start)."""
    return ["--no-browser", "--KernelManager.transport_encryption=auto"] + (["--allow-root"] if euid() == 0 else [])


def check_notebook_in_lab(results_dir, screenshot_path, port: int | None = None, timeout_s: float = 180.0,
                          chromium_path=None, notebook=NOTEBOOK) -> dict:
    """Opens notebook 05 in JupyterLab in headless Chromium, runs all its cells there (Run > Run All
    Cells) on ``results_dir`` and waits for the result browser widget to render; saves a screenshot
    of the page with the widget in view to ``screenshot_path``.

    JupyterLab runs on 127.0.0.1 with a random token, on a parameterized copy of the notebook in a
    temporary folder (``write_files=False``: ``results_dir`` is only read), its runtime files,
    settings and workspaces there too. Returns the widget's info line, whether its picture loaded,
    the number of error outputs, the picture's box in the screenshot and the screenshot's path and size."""
    results_dir = Path(results_dir).resolve()
    screenshot_path = Path(screenshot_path)
    notebook = Path(notebook)
    runs = find_runs(results_dir, None)
    if not runs:
        raise BrowserCheckError(f"no run with a checkpoint under {results_dir}: train one first "
                                "(e.g. make train-small), or pass --results")
    chromium_path = _check_prerequisites(chromium_path, notebook, "jupyterlab")

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rloss-lab-check-") as tmp:
        tmp = Path(tmp)
        (tmp / "notebooks").mkdir()  # Lab's root: the notebook alone
        served = _prepare_notebook(notebook, tmp / "notebooks", results_dir, None)
        with jupyterlab(served, tmp, timeout_s, port) as (url, log_path):
            summary = _drive_lab(url, chromium_path, timeout_s, log_path)
        png = summary.pop("png")
    with atomic_path(screenshot_path) as part:
        part.write_bytes(png)
    width, height = _png_size(png)
    summary.update(runs=runs, screenshot=str(screenshot_path), screenshot_size=[width, height],
                   screenshot_bytes=len(png), seconds=round(time.monotonic() - start, 1))
    return summary


@contextmanager
def jupyterlab(notebook: Path, tmp: Path, timeout_s: float, port: int | None = None):
    """JupyterLab serving ``notebook``'s folder on 127.0.0.1 (a random token) until the block
    ends, its runtime files, settings and workspaces under ``tmp``; yields the notebook's URL and
    the server's log."""
    import secrets

    port = port or _free_port()
    token = secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyter", "lab", *lab_arguments(), f"--port={port}",
               "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebook.parent}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    # No toast over the page (the news question): Lab's user settings, in the temporary folder too.
    settings = tmp / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text('{"fetchNews": "false", "doNotDisturbMode": true}')
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"), "IPYTHONDIR": str(tmp / "ipython")}
    log_path = tmp / "lab.log"
    with _serve("JupyterLab", command, notebook.parent, port, log_path, timeout_s, env=env):
        yield f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}", log_path


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _check_prerequisites(chromium_path, notebook: Path, server: str) -> Path:
    """Every missing piece named before anything starts; returns the browser to use."""
    if chromium_path is None:
        chromium_path = find_chromium()
        if chromium_path is None:
            raise BrowserCheckError(f"no Chromium (neither Debian's {CHROMIUM} nor Playwright's download): "
                                    "`make browser` installs one (Debian: apt-get install chromium)")
    chromium_path = Path(chromium_path)
    if not _executable(chromium_path):
        raise BrowserCheckError(f"Chromium not found at {chromium_path}: `make browser` installs one "
                                "(Debian: apt-get install chromium)")
    for module, what in (("playwright", "Playwright"), (server, server), ("papermill", "papermill")):
        if importlib.util.find_spec(module) is None:
            raise BrowserCheckError(f"{what} is not installed: pip install -c constraints.txt -e '.[dev]'")
    if not notebook.is_file():
        raise BrowserCheckError(f"notebook {notebook} not found")
    return chromium_path


def _prepare_notebook(notebook: Path, folder: Path, results_dir: Path, study_names) -> Path:
    """A copy of the notebook with its parameters cell set (papermill's injected cell), not run."""
    import papermill

    out = folder / notebook.name
    papermill.execute_notebook(
        str(notebook), str(out), parameters={"results_dir": str(results_dir), "study_names": study_names, "browser": True,
                    "write_files": False},
        prepare_only=True, kernel_name="python3", progress_bar=False, log_output=False,
    )
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page_failure(summary: str, console: list[str], server: str, log_path: Path, text: str = "") -> BrowserCheckError:
    """A failed page check: what failed, the page's last text, its console errors, the server's log."""
    parts = [summary]
    if text:
        parts.append(f"the page ends with:\n{text}")
    if console:
        parts.append("browser console errors:\n" + "\n".join(console[-10:]))
    parts.append(f"{server}'s log:\n{_log_tail(log_path)}")
    return BrowserCheckError("\n".join(parts))


def _log_tail(log_path: Path, lines: int = LOG_LINES) -> str:
    try:
        text = log_path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


@contextmanager
def _voila(notebook: Path, port: int, log_path: Path, timeout_s: float):
    """Voilà serving ``notebook`` on 127.0.0.1:port until the block ends; yields its URL."""
    command = [sys.executable, "-m", "voila", str(notebook), "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", "--Voila.port_retries=0",  # this port or a clear failure
               "--Voila.log_level=INFO", "--show_tracebacks=True"]
    with _serve("Voilà", command, notebook.parent, port, log_path, timeout_s):
        yield f"http://127.0.0.1:{port}/"


@contextmanager
def _serve(name: str, command: list[str], cwd: Path, port: int, log_path: Path, timeout_s: float, env=None):
    """``command`` running until the block ends, once it answers on 127.0.0.1:port; its output in log_path."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise BrowserCheckError(f"{name} exited with code {proc.returncode} before serving; "
                                        f"its log:\n{_log_tail(log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BrowserCheckError(f"{name} did not answer on port {port} within {timeout_s:.0f} s; "
                                        f"its log:\n{_log_tail(log_path)}")
            time.sleep(0.2)
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets the server shut its kernels down; SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def _chromium_page(chromium_path: Path, console: list[str]):
    """A page of a headless Chromium (closed afterwards) whose console errors go to ``console``."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=str(chromium_path), headless=True, args=list(CHROMIUM_ARGS),
                                         timeout=60_000)
        except PlaywrightError as exc:
            raise BrowserCheckError(f"Chromium at {chromium_path} did not start: {exc}") from None
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console.append(str(e)))
            yield page
        finally:
            browser.close()


def _drive(url: str, chromium_path: Path, compare_run: str, timeout_s: float, log_path: Path) -> dict:
    from playwright.sync_api import Error as PlaywrightError

    timeout_ms = timeout_s * 1000
    console: list[str] = []  # the page's errors, for a failure message

    def fail(what: str, page=None) -> BrowserCheckError:
        text = ""
        if page is not None:
            try:
                text = page.inner_text("body", timeout=2000).strip()[-1500:]
            except PlaywrightError:
                pass
        return _page_failure(f"the result browser {what} (timeout {timeout_s:.0f} s)", console,
                             "Voilà", log_path, text)

    with _chromium_page(chromium_path, console) as page:
        # Voilà runs the whole notebook before the page arrives: wait for it, not for "load".
        page.goto(url, wait_until="commit", timeout=timeout_ms)
        try:
            page.locator(".widget-dropdown select").first.wait_for(state="attached", timeout=timeout_ms)
            page.wait_for_function(_CHANGED_JS, arg=["", ""], timeout=timeout_ms)
        except PlaywrightError:
            raise fail("did not render (no run dropdown / view image)", page) from None
        first = _state(page, fail)

        after_next = None
        total = _image_count(first["info"])
        if total and total[1] > 1:
            want = f" {total[0] % total[1] + 1}/{total[1]} "  # "val 2/4": the next image, wrapping round
            page.locator("button.widget-button", has_text="next").first.click(timeout=timeout_ms)
            try:
                page.wait_for_function(_CHANGED_JS, arg=[first["src"], want], timeout=timeout_ms)
            except PlaywrightError:
                raise fail(f"did not move to the next image (info line {want.strip()!r})", page) from None
            after_next = _state(page, fail)

        before = after_next or first
        compare = page.locator(".widget-dropdown", has=page.locator("label", has_text="compare")).locator("select")
        compare.select_option(label=compare_run, timeout=timeout_ms)
        try:
            page.wait_for_function(_CHANGED_JS, arg=[before["src"], compare_run], timeout=timeout_ms)
        except PlaywrightError:
            raise fail(f"did not show compare run {compare_run!r}", page) from None
        final = _state(page, fail)
        height = min(page.evaluate(_CONTENT_HEIGHT_JS), MAX_HEIGHT)
        if height > VIEWPORT["height"]:
            page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        box = page.evaluate(_BOX_JS)
        png = page.screenshot(full_page=True, type="png", timeout=timeout_ms)
    return {
        "initial_info": first["info"],
        "after_next_info": after_next and after_next["info"],
        "final_info": final["info"],
        "image_changed_after_next": None if after_next is None else after_next["src"] != first["src"],
        "image_changed_after_compare": final["src"] != before["src"],
        "view_box": box,
        "png": png,
    }


def _drive_lab(url: str, chromium_path: Path, timeout_s: float, log_path: Path) -> dict:
    from playwright.sync_api import Error as PlaywrightError

    timeout_ms = timeout_s * 1000
    console: list[str] = []

    def fail(what: str) -> BrowserCheckError:
        return _page_failure(f"JupyterLab: {what} (timeout {timeout_s:.0f} s)", console, "JupyterLab", log_path)

    with _chromium_page(chromium_path, console) as page:
        page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
        try:  # the notebook open and its kernel started: the status bar says "Python 3 (ipykernel) | Idle"
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=timeout_ms)
            page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\|\s*Idle")).first.wait_for(
                state="visible", timeout=timeout_ms)
        except PlaywrightError:
            raise fail("the notebook did not open with an idle kernel") from None
        try:
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=timeout_ms)
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click(timeout=timeout_ms)
        except PlaywrightError:
            raise fail("no Run > Run All Cells menu") from None
        try:
            page.locator(".widget-dropdown select").first.wait_for(state="attached", timeout=timeout_ms)
            page.wait_for_function(_CHANGED_JS, arg=["", ""], timeout=timeout_ms)
        except PlaywrightError:
            raise fail("the result browser did not render (no run dropdown / view image)") from None
        state = page.evaluate(_STATE_JS)
        errors = page.locator("[data-mime-type='application/vnd.jupyter.error']").count()
        page.locator("img.widget-image").first.scroll_into_view_if_needed(timeout=timeout_ms)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        box = page.locator("img.widget-image").first.bounding_box()
        png = page.screenshot(type="png", timeout=timeout_ms)  # the viewport: the widget in view
    return {"info": state["info"], "image_loaded": state["loaded"], "error_outputs": errors,
            "view_box": box, "url": url.split("?")[0], "png": png}


def _state(page, fail) -> dict:
    state = page.evaluate(_STATE_JS)
    if (state["info"] or "").startswith("error:"):
        raise fail(f"shows an error: {state['info']}", page)
    return state


def _image_count(info: str | None) -> tuple[int, int] | None:
    """(position, count) from the info line's "val 2/4"; None if it has none."""
    match = re.search(r" (\d+)/(\d+) ", info or "")
    return (int(match[1]), int(match[2])) if match else None


def _png_size(png: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.size


# --------------------------------------------------------------------------------------------
# Command line: make browser-check, make browser
# --------------------------------------------------------------------------------------------


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python tools/browser_check.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", title="commands")
    commands.required = True
    check = commands.add_parser("check", help="notebook 05's result browser in headless Chromium (Voilà): a screenshot")
    check.add_argument("--results", default="results", help="results folder with the runs")
    check.add_argument("--out", help="screenshot PNG (default: RESULTS/result_browser.png)")
    check.add_argument("--study", nargs="+", metavar="NAME", help="only the runs of these studies")
    check.add_argument("--compare", metavar="RUN", help="the run picked under 'compare' (default: the second run)")
    check.add_argument("--port", type=int, help="port for Voilà on 127.0.0.1 (default: a free one)")
    check.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the page and each change")
    commands.add_parser("setup", help="headless Chromium for the browser tests: Debian's package "
                                      "(as root or with sudo), else Playwright's download (make browser)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``check`` or ``setup``; what is missing, what the page showed or a screenshot that cannot be
    written is one line, exit code 1 (as ``python -m rloss`` reports errors)."""
    import json

    from rloss.engine.errors import one_line

    args = build_parser().parse_args(argv)
    label = "rloss browser-check" if args.command == "check" else "rloss browser-setup"
    try:
        if args.command == "setup":
            provision_browser()
            return 0
        out = args.out or str(Path(args.results) / "result_browser.png")
        summary = check_result_browser(args.results, out, study_names=args.study, port=args.port,
                                       timeout_s=args.timeout, compare_run=args.compare)
    except (BrowserCheckError, ValueError, OSError) as exc:  # no browser, what the page showed, a bad folder
        print(f"{label}: {one_line(exc)}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
