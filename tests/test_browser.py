"""The whole loop in a real browser: `streamlit run app.py` with its scheduler, headless Chromium
through Playwright. Launch a tiny CPU run from the Lab form, watch it finish on the Runs page,
open Compare. Screenshots go to tests/artifacts/ (git-ignored) and the test's tmp folder."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(isolated_home, tmp_path):
    port = free_port()
    log = open(tmp_path / "streamlit.log", "wb")
    env = dict(os.environ, OPTLAB_HOME=str(isolated_home), OPTLAB_SCHEDULER="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text())
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)   # its own session: the server, and nothing of ours
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def shoot(page, name, tmp_path):
    """The whole page: Streamlit scrolls inside its main panel, so grow the window to fit it."""
    width = page.viewport_size["width"]
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('section, div'), e => e.scrollHeight))")
    page.set_viewport_size({"width": width, "height": min(max(height, 1000), 8000)})
    page.wait_for_timeout(800)   # plots re-lay out for the new size
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(tmp_path / name), full_page=True)
    shutil.copy(tmp_path / name, ARTIFACTS / name)
    page.set_viewport_size({"width": width, "height": 1000})


def set_number(page, label, value):
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def test_launch_watch_and_compare_a_tiny_cpu_run(server, tmp_path, isolated_home):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)   # the first render imports torch
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            # A shared link as the fresh server's first request still gets the app's navigation.
            page.goto(server.rstrip("/") + "/compare")
            expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
            expect(page.get_by_label("Your name", exact=True)).to_be_visible()
            page.goto(server)
            expect(page.get_by_role("heading", name="Lab", exact=True)).to_be_visible()
            expect(page.get_by_text("No GPU on this server")).to_be_visible()
            name = page.get_by_label("Your name", exact=True)
            name.fill("browser test")
            name.press("Enter")

            set_number(page, "Training images", 512)
            set_number(page, "Test images", 256)
            set_number(page, "Epochs", 1)
            set_number(page, "Loader workers", 0)
            batch = page.get_by_label("Batch size", exact=True)
            batch.fill("64")
            batch.press("Tab")
            shoot(page, "lab.png", tmp_path)
            page.get_by_role("button", name="Launch run").click()
            expect(page.get_by_text("Run #1 queued.")).to_be_visible()

            page.get_by_role("link", name="Watch run #1 on the Runs page").click()
            expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
            # the page refreshes itself until the run is done
            expect(page.get_by_role("heading", name="Run #1 · done")).to_be_visible(timeout=90_000)
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            shoot(page, "runs.png", tmp_path)

            page.get_by_role("link", name="Compare", exact=True).click()
            expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
            expect(page.locator(".js-plotly-plot")).to_have_count(4)   # one run: no knobs to relate
            expect(page.get_by_text("CPU figures", exact=False)).to_be_visible()
            shoot(page, "compare.png", tmp_path)
        finally:
            browser.close()

    from optlab.store import Store
    [run] = Store(isolated_home).list()
    assert run.status == "done" and run.user == "browser test"
    assert (run.config["limit_train"], run.config["epochs"], run.config["batch_size"]) == (512, 1, 64)
    assert run.summary["device"] == "cpu" and run.summary["train_images_per_s"] > 0


def test_compare_with_repeated_runs_shows_error_bars_and_the_noise_verdict(server, tmp_path, isolated_home):
    from playwright.sync_api import expect, sync_playwright

    from conftest import tiny_config
    from optlab import views
    from optlab.store import Store
    from optlab.sweeps import expand, submit_sweep

    # Two settings that train identically (only the accuracy target differs), two repeats each,
    # queued interleaved; the server's scheduler (started by the first page view) runs them.
    store = Store(isolated_home)
    base = tiny_config(limit_train=128, limit_test=64, batch_size=32, repeats=2)
    sweep_id, ids = submit_sweep(store, expand(base, {"target_accuracy": [0.5, 0.6]}), user="browser test")
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(server)
            expect(page.get_by_role("heading", name="Lab", exact=True)).to_be_visible()
            deadline = time.monotonic() + 400
            while any(store.get(i).status in ("queued", "running") for i in ids):
                assert time.monotonic() < deadline, [(i, store.get(i).status) for i in ids]
                time.sleep(1)
            runs = [store.get(i) for i in ids]
            assert [r.status for r in runs] == ["done"] * 4, [r.error for r in runs]
            assert sorted(runs, key=lambda r: r.started_at) == runs        # run in the interleaved order
            rows = views.figure_rows(sorted(runs, key=lambda r: r.id))
            [verdict] = views.speed_verdicts(rows, rows[0])

            page.goto(f"{server.rstrip('/')}/compare?sweep={sweep_id}")
            expect(page.get_by_role("heading", name="Is it a difference?")).to_be_visible()
            # the same training twice: the page says so in words, naming the baseline
            expect(page.get_by_text(f"not distinguishable from {rows[0]['label']} at this spread")).to_be_visible()
            assert verdict["verdict"] == "within noise"
            expect(page.locator(".js-plotly-plot")).to_have_count(6)
            # error bars drawn by Plotly: the throughput, speed-up and memory charts
            for title in ("Training throughput", "Training speed-up against", "Peak memory during training"):
                chart = page.locator(".js-plotly-plot", has_text=title)
                expect(chart.locator("path.yerror").first).to_be_attached()
            shoot(page, "compare-repeats.png", tmp_path)
        finally:
            browser.close()
