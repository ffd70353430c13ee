"""01_locate's steering explorer in JupyterLab, in a real browser.

Starts JupyterLab on 127.0.0.1 (random token, throwaway Jupyter dirs, a temporary copy of
`notebooks/`), opens the notebook in Debian's Chromium through Playwright, runs every cell,
moves the layer slider and checks that the steered answer and the plotly chart follow it.
Screenshots go to `test-artifacts/browser/` and to the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
NOTEBOOK = "01_locate.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
SKIP_VARIABLE = "ASRU_LAB_SKIP_BROWSER"
# No network beyond the local server: without the resolver rule Chromium still calls Google.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
SERVER_START_S = 60
KERNEL_IDLE_S = 60
RUN_ALL_S = 180  # the notebook's small mode takes about a minute of kernel time
WIDGET_UPDATE_S = 60

# Prompts of the code cells and the tracebacks shown so far.
NOTEBOOK_STATE_JS = """() => ({
  prompts: [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim()),
  errors: [...document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.textContent).filter(t => t.includes('Traceback')),
})"""
PLOT_DATA_JS = """el => ({
  title: (el.layout.title && el.layout.title.text) || '',
  traces: el.data.map(t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)})),
})"""


def _sync_playwright():
    """Playwright's sync API, or a failure that says what to install (a skip only when asked)."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: the JupyterLab browser test is switched off")
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (run scripts/ensure_chromium.sh or apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]'; no `playwright install`)")
    if missing:
        pytest.fail(
            f"the browser test needs {' and '.join(missing)}; "
            f"set {SKIP_VARIABLE}=1 to skip it on a machine without them",
            pytrace=False,
        )
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:
        # a stale server on this port would answer in place of ours
        if s.connect_ex(("127.0.0.1", port)) == 0:
            pytest.fail(f"port {port} on 127.0.0.1 is already in use", pytrace=False)
    return port


def _get(url: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


@contextmanager
def jupyterlab(root: Path, home: Path) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1 serving `root`; yields (base URL, token)."""
    port, token = _free_port(), secrets.token_hex(16)
    dirs = {name: home / name for name in ("config", "data", "runtime", "ipython", "settings")}
    for path in dirs.values():
        path.mkdir(parents=True)
    news = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}
    (dirs["settings"] / "overrides.json").write_text(json.dumps(news))
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "ASRU_LAB_SMALL": "1",  # the kernel runs the notebook's small mode
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        f"--LabApp.app_settings_dir={dirs['settings']}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = home / "jupyterlab.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited with code {server.returncode}:\n"
                    + log_path.read_text()[-3000:],
                    pytrace=False,
                )
            try:
                _get(f"{base}/api/status?token={token}")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"JupyterLab did not answer within {SERVER_START_S} s:\n"
                        + log_path.read_text()[-3000:],
                        pytrace=False,
                    )
                time.sleep(0.5)
        yield base, token
    finally:
        # Kernels run in sessions of their own: shut them down through the server first.
        try:
            for kernel in json.loads(_get(f"{base}/api/kernels?token={token}")):
                _get(f"{base}/api/kernels/{kernel['id']}?token={token}", method="DELETE")
        except OSError:
            pass
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def _steered_layer(text: str) -> int:
    found = re.search(r"steered \(layer (\d+), alpha", text)
    assert found, f"no steered answer in the explorer: {text!r}"
    return int(found.group(1))


def test_steering_explorer_follows_the_layer_slider(tmp_path):
    sync_playwright = _sync_playwright()
    from playwright.sync_api import expect

    root = tmp_path / "notebooks"
    shutil.copytree(
        REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "outputs")
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def screenshot(page, name: str) -> None:
        page.screenshot(path=str(tmp_path / name))
        shutil.copy(tmp_path / name, ARTIFACTS / name)

    with jupyterlab(root, tmp_path / "jupyter") as (base, token), sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        status = page.locator("#jp-main-statusbar")
        try:
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}", timeout=60_000)
            # the notebook toolbar says idle before the kernel is ready; the status bar does not
            idle = re.compile(r"ipykernel\)\s*\|\s*Idle")
            expect(status).to_contain_text(idle, timeout=KERNEL_IDLE_S * 1000)

            started = time.monotonic()
            page.get_by_role("menuitem", name="Run", exact=True).click(timeout=10_000)
            page.locator("[data-command='runmenu:run-all']").click(timeout=10_000)
            deadline = time.monotonic() + RUN_ALL_S
            while True:
                state = page.evaluate(NOTEBOOK_STATE_JS)
                assert not state["errors"], "a cell failed:\n" + state["errors"][0][-2000:]
                prompts = state["prompts"]
                if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                    break
                assert time.monotonic() < deadline, (
                    f"Run All did not finish within {RUN_ALL_S} s; prompts {prompts}"
                )
                time.sleep(1)
            expect(status).to_contain_text(idle, timeout=KERNEL_IDLE_S * 1000)
            print(f"Run All: {time.monotonic() - started:.0f} s")  # shown when the test fails

            explorer = page.locator(".jp-OutputArea-output").filter(
                has=page.locator(".widget-slider")
            )
            answers = explorer.locator(".widget-html")
            expect(answers).to_contain_text("steered (layer", timeout=WIDGET_UPDATE_S * 1000)
            plot = explorer.locator(".js-plotly-plot")
            plot.wait_for(state="attached", timeout=WIDGET_UPDATE_S * 1000)
            before_text = answers.inner_text()
            before_plot = plot.evaluate(PLOT_DATA_JS)
            before_layer = _steered_layer(before_text)
            assert [t["name"] for t in before_plot["traces"]] == ["unsteered", "steered"]
            assert f"layer {before_layer}" in before_plot["title"]

            explorer.evaluate("el => el.scrollIntoView({block: 'center'})")
            slider = explorer.locator(".widget-slider").filter(
                has=page.locator(".widget-label", has_text=re.compile(r"^layer$"))
            )
            readout = slider.locator(".widget-readout")
            handle = slider.locator(".noUi-handle")
            handle.focus()
            handle.press("ArrowRight")
            try:  # at the last layer ArrowRight does nothing: go one down instead
                expect(readout).not_to_have_text(str(before_layer), timeout=2_000)
            except AssertionError:
                handle.press("ArrowLeft")
                expect(readout).not_to_have_text(str(before_layer), timeout=5_000)
            layer = int(readout.inner_text())

            expect(answers).to_contain_text(
                f"steered (layer {layer}, alpha", timeout=WIDGET_UPDATE_S * 1000
            )
            deadline = time.monotonic() + WIDGET_UPDATE_S
            while f"layer {layer}," not in plot.evaluate(PLOT_DATA_JS)["title"]:
                assert time.monotonic() < deadline, "the plotly chart did not follow the slider"
                time.sleep(0.5)
            after_plot = plot.evaluate(PLOT_DATA_JS)
            assert _steered_layer(answers.inner_text()) == layer != before_layer
            assert after_plot["traces"] != before_plot["traces"]
            unsteered, steered = (t["y"] for t in after_plot["traces"])
            assert all(0 <= p <= 1 for p in unsteered + steered)
            assert sum(steered) <= 1 + 1e-6

            explorer.evaluate("el => el.scrollIntoView({block: 'center'})")
            screenshot(page, "01_locate_explorer.png")
        except Exception as error:
            bar = "unreadable"
            with suppress(Exception):  # the page may be gone; keep the original error
                bar = repr(status.inner_text(timeout=5_000))
                screenshot(page, "01_locate_failure.png")
            raise AssertionError(
                f"{error}\nstatus bar: {bar}; screenshot: {ARTIFACTS / '01_locate_failure.png'}"
            ) from error
        finally:
            browser.close()
