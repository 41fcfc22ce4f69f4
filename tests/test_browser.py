"""The pages in a real browser: `streamlit run app.py`, headless Chromium through Playwright.

* the whole loop, with the app's scheduler: the Lab's estimate, a tiny two-run sweep launched from
  the form, Compare following that sweep's progress until its charts draw, the Runs page;
* on a store of runs that really trained: links to missing things, the precision control at
  three window widths, point labels that do not overlap, titles that fit, the first visit; a sweep
  of repeats on Compare: the verdict in words and the error bars.

With OPTLAB_SCREENSHOTS=1, screenshots go to tests/artifacts/ (git-ignored) and the test's tmp folder."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
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


@contextmanager
def app_server(home: Path, log_path: Path, scheduler: bool):
    """`streamlit run app.py` on `home` in its own session; its URL while the block runs."""
    port = free_port()
    log = open(log_path, "wb")
    env = dict(os.environ, OPTLAB_HOME=str(home), OPTLAB_SCHEDULER="1" if scheduler else "0")
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
                raise RuntimeError("streamlit did not start:\n" + log_path.read_text())
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)   # its own session: the server, and nothing of ours
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    # A page that failed shows visitors only "an error" (showErrorDetails = none): the server's log
    # has the traceback, and a test that met one must say so.
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_path.read_text(errors="replace"))   # Streamlit colours it
    assert "Traceback" not in text, text[text.index("Traceback"):][-6000:]


@pytest.fixture
def server(isolated_home, tmp_path):
    with app_server(isolated_home, tmp_path / "streamlit.log", scheduler=True) as url:
        yield url


@pytest.fixture(scope="module")
def trained_server(tmp_path_factory):
    """The app (no scheduler) on a store of runs that really trained on Fashion-MNIST: six tiny runs
    alike but for one knob each (two sweeps), one of them compressed, one run cancelled, and before
    them a sweep of two settings that train identically, two repeats each, run interleaved."""
    from conftest import tiny_config
    from optlab.runner import execute
    from optlab.store import Store
    from optlab.sweeps import expand, submit_sweep
    home = tmp_path_factory.mktemp("trained-server")
    store = Store(home)
    base = tiny_config(limit_train=128, limit_test=128, batch_size=32)
    repeated, ids = submit_sweep(store, expand(base.replace(limit_test=64, repeats=2),
                                               {"target_accuracy": [0.5, 0.6]}), user="browser test")
    _, more = submit_sweep(store, expand(base, {"num_workers": [0, 1, 2]}))
    ids += more
    _, more = submit_sweep(store, expand(base, {"image_size": [20, 24]}))
    bench = {"method": "benchmark", "repeats": 3, "warmup": 1, "throughput_batch": 16, "throughput_repeats": 1,
             "batch_sizes": [1]}
    ids += more + [store.submit(base.replace(compress=[bench, {"method": "prune_unstructured", "finetune_steps": 1},
                                                       {"method": "int8_dynamic"}]))]
    for run_id in ids:             # in the order queued: the repeats interleaved (A B A B)
        execute(store, run_id)
    cancelled = store.submit(base)
    store.request_cancel(cancelled)
    with app_server(home, tmp_path_factory.mktemp("log") / "streamlit.log", scheduler=False) as url:
        yield url, store, repeated


SCREENSHOTS = os.environ.get("OPTLAB_SCREENSHOTS") == "1"


def shoot(page, name, tmp_path):
    """The whole page, for a person to look at (`OPTLAB_SCREENSHOTS=1`; they cost CI time and nobody
    looks at CI's): Streamlit scrolls inside its main panel, so grow the window to fit it."""
    if not SCREENSHOTS:
        return
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


# How many runs a speed-vs-accuracy chart draws (its labelled traces' points), once Plotly has drawn it.
DRAWN_RUNS = "(g => g && g.data ? g.data.filter(t => t.mode === 'markers+text').reduce((n, t) => n + t.x.length, 0) : -1)"


def label_overlaps(plot) -> dict:
    """Drawn point labels of one Plotly chart that overlap each other, from their boxes on screen, and
    how many labels the figure placed (non-empty texts of its labelled traces)."""
    return plot.evaluate("""g => {
        const boxes = [...g.querySelectorAll('.scatterlayer .textpoint text')]
            .map(t => t.getBoundingClientRect()).filter(b => b.width > 0);
        let overlaps = 0;
        for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
            const a = boxes[i], b = boxes[j];
            if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++;
        }
        const placed = g.data.filter(t => t.mode === 'markers+text')
            .reduce((n, t) => n + (t.text || []).filter(x => x).length, 0);
        return {labels: boxes.length, placed, overlaps};
    }""")


def titles_fit(plot) -> bool:
    """Every title and subtitle line of a chart lies inside the chart."""
    return plot.evaluate("""g => {
        const frame = g.querySelector('.main-svg').getBoundingClientRect();
        return [...g.querySelectorAll('.gtitle, .gtitle-subtitle')].every(t => {
            const b = t.getBoundingClientRect();
            return b.left >= frame.left - 1 && b.right <= frame.right + 1;
        });
    }""")


def options_fit(group) -> bool:
    """Every option of a segmented control is whole and inside the control's column."""
    return group.evaluate("""g => {
        const column = (g.closest('[data-testid="stColumn"]') || g).getBoundingClientRect();
        return g.scrollWidth <= g.clientWidth + 1 && [...g.querySelectorAll('[role="radio"]')].every(b => {
            const r = b.getBoundingClientRect();
            return r.width > 0 && r.left >= column.left - 1 && r.right <= column.right + 1
                && b.scrollWidth <= b.clientWidth + 1;
        });
    }""")


def launch_browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def test_launch_a_sweep_and_follow_it_to_its_charts(server, tmp_path, isolated_home):
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)   # the first render imports torch; the machine is shared
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(120_000)
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

            # 32 steps of 16 images at 16 px: a few seconds a run, and steps enough to measure
            set_number(page, "Training images", 512)
            set_number(page, "Test images", 128)
            set_number(page, "Image size (px)", 16)
            set_number(page, "Epochs", 1)
            set_number(page, "Loader workers", 0)
            batch = page.get_by_label("Batch size", exact=True)
            batch.fill("16")
            batch.press("Tab")
            page.get_by_text("Profile a few steps", exact=True).click()   # this test reads no profile
            expect(page.get_by_label("Profile a few steps", exact=True)).not_to_be_checked()
            # before anything is queued: how long it takes here, and how many steps
            expect(page.get_by_text(re.compile(r"About \d+ (s|min) on this CPU · 32 steps in all"))).to_be_visible()
            expect(page.get_by_text(re.compile(r"^From timing \d+ training steps? of speednet here"))).to_be_visible()
            knob = page.get_by_label("Knob 1")
            knob.click()
            page.keyboard.type("Random seed")      # the list is long: filter it, then take the match
            page.keyboard.press("Enter")
            values = page.get_by_label("Values 1", exact=True)
            values.fill("0, 1")
            values.press("Tab")
            expect(page.get_by_text(re.compile(r"Launch sweep: 2 runs, about \d+ (s|min) in all"))).to_be_visible()
            shoot(page, "lab.png", tmp_path)
            page.get_by_role("button", name="Launch sweep").click()
            expect(page.get_by_text(re.compile(r"Sweep sweep-\w+ queued: 2 runs \(#1–#2\)"))).to_be_visible()

            page.get_by_role("link", name="Compare these runs").click()
            expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
            expect(page.get_by_text(re.compile(r"[01] of 2 runs done"))).to_be_visible()
            expect(page.locator(".js-plotly-plot")).to_have_count(0)       # nothing but this sweep
            shoot(page, "compare-progress.png", tmp_path)
            # no reload: the page follows the sweep until both runs are drawn
            expect(page.get_by_text(re.compile(r"of 2 runs done"))).to_have_count(0, timeout=420_000)
            pareto = page.locator(".js-plotly-plot").first
            expect(pareto).to_be_visible()
            page.wait_for_function(DRAWN_RUNS + "(document.querySelector('.js-plotly-plot')) === 2")
            assert label_overlaps(pareto)["overlaps"] == 0
            shoot(page, "compare.png", tmp_path)

            page.goto(server.rstrip("/") + "/runs?run=1")
            expect(page.get_by_role("heading", name="Run #1 · done")).to_be_visible()
            expect(page.get_by_text("Training progress")).to_be_visible()   # the loss curve outlives the run
            page.reload()
            expect(page.get_by_role("heading", name="Run #1 · done")).to_be_visible()   # the address keeps the run
            shoot(page, "runs.png", tmp_path)
        finally:
            browser.close()

    from optlab.store import Store
    runs = Store(isolated_home).list(newest_first=False)
    assert [r.status for r in runs] == ["done", "done"] and {r.user for r in runs} == {"browser test"}
    assert [r.config["seed"] for r in runs] == [0, 1] and len({r.sweep_id for r in runs}) == 1
    assert (runs[0].config["limit_train"], runs[0].config["epochs"], runs[0].config["batch_size"]) == (512, 1, 16)
    assert runs[0].summary["device"] == "cpu" and runs[0].summary["train_images_per_s"] > 0
    assert [r.config["profile"] for r in runs] == [False, False]


def test_links_widths_labels_and_first_visit_on_runs_that_trained(trained_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, store, _ = trained_server
    cancelled = store.list(status="cancelled")[0].id
    expect.set_options(timeout=120_000)
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            # First visit after a server start: the navigation and a line saying what is loading come
            # at once, before PyTorch has loaded (the Lab's heading comes after it).
            page.goto(url)
            expect(page.get_by_text("Starting OptLab: loading PyTorch")).to_be_visible(timeout=10_000)
            expect(page.get_by_role("link", name="Runs", exact=True)).to_be_visible(timeout=1_000)
            shoot(page, "first-visit.png", tmp_path)
            expect(page.get_by_role("heading", name="Lab", exact=True)).to_be_visible()
            expect(page.get_by_text("Starting OptLab: loading PyTorch")).to_have_count(0)

            # A link to something that is not there says so, and shows nothing else.
            for path, message in [("runs?run=999", "There is no run 999 in this store"),
                                  ("profile?run=999", "There is no run 999 in this store"),
                                  (f"profile?run={cancelled}",
                                   f"Run #{cancelled} has no profile: it was cancelled before it started"),
                                  ("compare?sweep=nope", "There is no sweep nope in this store")]:
                page.goto(f"{url}/{path}")
                expect(page.get_by_text(message)).to_be_visible()
                main = page.locator('[data-testid="stMain"]')
                for thing in (".js-plotly-plot", '[data-testid="stDataFrame"]', '[data-testid="stSelectbox"]'):
                    expect(main.locator(thing)).to_have_count(0)
                shoot(page, f"missing-{path.split('?')[0]}-{path.rsplit('=', 1)[-1]}.png", tmp_path)

            # The Lab's choice controls keep every option whole at common window widths.
            for width in (1024, 1280, 1400):
                page.set_viewport_size({"width": width, "height": 1000})
                page.goto(url)
                expect(page.get_by_text("Before you launch")).to_be_visible()
                for control in ("Precision", "Input pipeline", "Device"):
                    assert options_fit(page.get_by_role("radiogroup", name=control)), (control, width)
                shoot(page, f"lab-{width}.png", tmp_path)

            # Compare six runs: labels that do not overlap, titles that fit, at two widths.
            for width in (1024, 1400):
                page.set_viewport_size({"width": width, "height": 1000})
                page.goto(f"{url}/compare")
                page.get_by_text("Runs I pick").click()
                plots = page.locator(".js-plotly-plot")
                expect(plots.first).to_be_visible()
                expect(page.get_by_text("Compressed variants")).to_be_visible()
                pareto = plots.first
                page.wait_for_function(DRAWN_RUNS + "(document.querySelector('.js-plotly-plot')) === 6")
                found = label_overlaps(pareto)
                # every label the chart placed is drawn, none overlaps; how many fit depends on how
                # the six runs' figures spread (under load they can crowd into a third of the width)
                assert found["overlaps"] == 0 and found["labels"] == found["placed"] >= 2, found
                variants = plots.last
                assert label_overlaps(variants)["overlaps"] == 0
                for n in range(plots.count()):
                    assert titles_fit(plots.nth(n)), n
                shoot(page, f"compare-{width}.png", tmp_path)
        finally:
            browser.close()


def test_compare_with_repeated_runs_shows_error_bars_and_the_noise_verdict(trained_server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from optlab import views

    url, store, sweep_id = trained_server
    runs = store.list(sweep_id=sweep_id, newest_first=False)
    assert [(r.status, r.repeat_index) for r in runs] == [("done", 1), ("done", 1), ("done", 2), ("done", 2)]
    rows = views.figure_rows(runs)
    [verdict] = views.speed_verdicts(rows, rows[0])
    assert verdict["verdict"] == "within noise"
    expect.set_options(timeout=60_000)
    with sync_playwright() as p:
        browser = launch_browser(p)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/compare?sweep={sweep_id}")
            expect(page.get_by_role("heading", name="Is it a difference?")).to_be_visible()
            # the same training twice: the page says so in words, naming the baseline
            expect(page.get_by_text(f"not distinguishable from {rows[0]['label']} at this spread")).to_be_visible()
            expect(page.locator(".js-plotly-plot")).to_have_count(6)
            # error bars drawn by Plotly: the throughput, speed-up and memory charts
            for title in ("Training throughput", "Training speed-up", "Peak memory"):
                chart = page.locator(".js-plotly-plot", has_text=title)
                expect(chart.locator("path.yerror").first).to_be_attached()
            shoot(page, "compare-repeats.png", tmp_path)
        finally:
            browser.close()
