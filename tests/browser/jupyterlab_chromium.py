"""JupyterLab in Debian's Chromium, for the browser tests.

`open_notebook` starts JupyterLab on 127.0.0.1 (random token, throwaway Jupyter dirs, a
temporary copy of `notebooks/`, the notebooks' small mode), opens one notebook in Chromium
through Playwright (the system browser; never `playwright install`) and waits for its kernel.
On a failure it saves a screenshot and adds the status bar to the error. Screenshots go to
`test-artifacts/browser/` and to the test's tmp_path.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "browser"
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
# the notebook toolbar says idle before the kernel is ready; the status bar does not
KERNEL_IDLE = re.compile(r"ipykernel\)\s*\|\s*Idle")

# Prompts of the code cells and the tracebacks shown so far.
NOTEBOOK_STATE_JS = """() => ({
  prompts: [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim()),
  errors: [...document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.textContent).filter(t => t.includes('Traceback')),
})"""


def sync_playwright_or_fail():
    """Playwright's sync API, or a failure that says what to install (a skip only when asked)."""
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(f"{SKIP_VARIABLE}=1: the browser tests are switched off")
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
def jupyterlab(
    root: Path, home: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """A JupyterLab server on 127.0.0.1 serving `root`, its kernels in the notebooks' small
    mode with `env` added to their environment; yields (base URL, token)."""
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
        **(env or {}),
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


class NotebookPage:
    """A notebook open in JupyterLab: its Playwright `page` and the status bar locator."""

    def __init__(self, page, shots: Path) -> None:
        self.page = page
        self.status = page.locator("#jp-main-statusbar")
        self.shots = shots

    def screenshot(self, name: str) -> Path:
        """Saves the page as `name` in the test's tmp_path and in test-artifacts/browser/;
        returns the artifact's path."""
        self.page.screenshot(path=str(self.shots / name))
        return Path(shutil.copy(self.shots / name, ARTIFACTS / name))

    def wait_until_idle(self) -> None:
        from playwright.sync_api import expect

        expect(self.status).to_contain_text(KERNEL_IDLE, timeout=KERNEL_IDLE_S * 1000)

    def run_all(
        self, timeout_s: float, poll_s: float = 1.0, on_poll: Callable[[], None] | None = None
    ) -> float:
        """Runs every cell (Run > Run All Cells) and waits until each has its execution count,
        failing on the first traceback; `on_poll` is called at every look, `poll_s` apart.
        Returns the seconds it took."""
        started = time.monotonic()
        self.page.get_by_role("menuitem", name="Run", exact=True).click(timeout=10_000)
        self.page.locator("[data-command='runmenu:run-all']").click(timeout=10_000)
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.page.evaluate(NOTEBOOK_STATE_JS)
            assert not state["errors"], "a cell failed:\n" + state["errors"][0][-2000:]
            if on_poll is not None:
                on_poll()
            prompts = state["prompts"]
            if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                break
            assert time.monotonic() < deadline, (
                f"Run All did not finish within {timeout_s} s; prompts {prompts}"
            )
            time.sleep(poll_s)
        self.wait_until_idle()
        seconds = time.monotonic() - started
        print(f"Run All: {seconds:.0f} s")  # shown when the test fails
        return seconds


@contextmanager
def open_notebook(
    notebook: str, tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[NotebookPage]:
    """`notebooks/<notebook>` open in JupyterLab in Chromium, its kernel idle (`env` is added
    to the kernel's environment). A failure inside saves `<stem>_failure.png` and names it."""
    sync_playwright = sync_playwright_or_fail()
    root = tmp_path / "notebooks"
    shutil.copytree(
        REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "outputs")
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    failure = f"{Path(notebook).stem}_failure.png"

    with jupyterlab(root, tmp_path / "jupyter", env) as (base, token), sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        lab = NotebookPage(browser.new_page(viewport={"width": 1280, "height": 1400}), tmp_path)
        try:
            lab.page.goto(f"{base}/lab/tree/{notebook}?token={token}", timeout=60_000)
            lab.wait_until_idle()
            yield lab
        except Exception as error:
            bar = "unreadable"
            with suppress(Exception):  # the page may be gone; keep the original error
                bar = repr(lab.status.inner_text(timeout=5_000))
                lab.screenshot(failure)
            raise AssertionError(
                f"{error}\nstatus bar: {bar}; screenshot: {ARTIFACTS / failure}"
            ) from error
        finally:
            browser.close()
