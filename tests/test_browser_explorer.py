"""The embedding-alignment explorer in a real browser: JupyterLab on 127.0.0.1 (free port, token),
notebook 08 opened in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright's
Python client — no browser download), all cells run, a different item and then users selected,
and the neighbour table and the PCA map seen to change. Screenshot: outputs/browser/explorer.png.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = REPO / "notebooks" / "08_embedding_alignment_explorer.ipynb"
SHOTS = REPO / "outputs" / "browser"

if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="needs Playwright's Python client (pip install playwright)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A private JupyterLab serving a copy of notebook 08 (outputs cleared) from tmp_path."""
    nb = json.loads(NOTEBOOK.read_text())
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    (tmp_path / "explorer.ipynb").write_text(json.dumps(nb))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
                             f"--port={port}", f"--IdentityProvider.token={token}",
                             f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0",
                             "--LabApp.news_url=", "--ServerApp.open_browser=False",
                             *(["--allow-root"] if os.geteuid() == 0 else [])],  # CI containers run as root
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/explorer.ipynb?token={token}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_change(read, before, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = read()
        if now and now != before:
            return now
        time.sleep(0.3)
    raise AssertionError(f"no change within {timeout}s (still {str(before)[:80]!r})")


def test_explorer_in_chromium(lab):
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        try:
            page.goto(lab, timeout=90_000)
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            # a fresh JupyterLab asks which kernel to start: accept the preselected Python 3
            try:
                page.locator(".jp-Dialog .jp-mod-accept").click(timeout=30_000)
            except playwright_api.TimeoutError:
                pass  # no dialog: the kernel was started directly
            # the kernel must be idle before "Run All"
            page.wait_for_function("document.body.innerText.includes('(ipykernel) | Idle')", timeout=90_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            table, image = page.locator(".bdlm-neighbours"), page.locator(".bdlm-map")
            table.wait_for(state="visible", timeout=60_000)
            first_text = wait_change(lambda: table.inner_text(), "", 60)
            first_src = wait_change(lambda: image.get_attribute("src"), None, 60)
            assert "nearest under each space" in first_text and "LLM cos" in first_text

            # a different item: the 4th match of the (empty) search
            options = page.locator(".bdlm-select select option")
            chosen = options.nth(3).inner_text().replace("\xa0", " ")  # the widget pads with nbsp
            page.locator(".bdlm-select select").select_option(index=3)
            item_text = wait_change(lambda: table.inner_text(), first_text)
            assert chosen.split("  [")[0] in item_text
            item_src = wait_change(lambda: image.get_attribute("src"), first_src)

            # switch to users: the table and the map change again
            page.locator(".bdlm-kind button", has_text="user").click()
            user_text = wait_change(lambda: table.inner_text(), item_text)
            assert "user 0" in user_text
            wait_change(lambda: image.get_attribute("src"), item_src)
            user_src = image.get_attribute("src")
            page.locator(".bdlm-select select").select_option(index=5)
            assert "user 5" in wait_change(lambda: table.inner_text(), user_text)
            wait_change(lambda: image.get_attribute("src"), user_src)
            page.locator(".bdlm-status", has_text="user 5").wait_for(timeout=60_000)  # drawn last

            news = page.locator(".jp-Notification-Toast-Close, .jp-toast-button:has-text('No')")
            if news.count():
                news.first.click()
            image.scroll_into_view_if_needed()
            # the map really renders: the new PNG decoded to a non-empty image
            page.wait_for_function("el => el.complete && el.naturalWidth > 100", arg=image.element_handle(),
                                   timeout=30_000)
            page.wait_for_timeout(500)

            SHOTS.mkdir(parents=True, exist_ok=True)
            page.locator(".widget-vbox", has=page.locator(".bdlm-map")).first.screenshot(
                path=str(SHOTS / "explorer.png"))
            page.screenshot(path=str(SHOTS / "explorer_page.png"))
            assert (SHOTS / "explorer.png").stat().st_size > 10_000
            # the cells ran without an error output
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                has_text="Traceback").count() == 0
        except Exception:
            SHOTS.mkdir(parents=True, exist_ok=True)  # what the browser showed, for the failure report
            page.screenshot(path=str(SHOTS / "failure.png"))
            raise
        finally:
            browser.close()
    shutil.rmtree(SHOTS / "tmp", ignore_errors=True)
