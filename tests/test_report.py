"""The shareable HTML report, on two real tiny CPU runs (a Fashion-MNIST slice): one profiled, with
telemetry and compression variants, whose label and submitter are hostile HTML; one plain run with
another batch size. The report is opened in Chromium from a file:// URL with the network cut off."""
import json
import shutil
from pathlib import Path

import pytest

from conftest import built_once, tiny_config
from optlab import cli, report
from optlab.store import Store

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Each would change the page if it ever ran: a window variable and the document's title.
HOSTILE_LABEL = '<script>window.__xss = "label"; document.title = "pwned"</script>'
HOSTILE_USER = '<img src=x onerror="window.__xss=\'user\';document.title=\'pwned\'">'  # within 64 chars
QUICK_BENCH = {"method": "benchmark", "repeats": 3, "warmup": 1, "throughput_batch": 16, "throughput_repeats": 1,
               "batch_sizes": [1, 16]}

def make_shared_runs(tmp_path_factory):
    """One store per test session (see conftest.built_once) with run 1 (profiled, 2 epochs,
    telemetry sampled while it trained, two variants, hostile label and user) and run 2 (batch
    128, 1 epoch, no profile). 16 px images held in memory keep the pair quick on a busy 2-core
    machine."""
    def build(home):
        import torch

        from optlab.runner import execute
        from optlab.telemetry import TelemetrySampler
        store = Store(home)
        base = tiny_config(image_size=16, pipeline="gpu", limit_train=1024, limit_test=256, batch_size=64)
        first = store.submit(base.replace(profile=True, epochs=2, compress=[
            QUICK_BENCH, {"method": "prune_unstructured", "sparsity": 0.5, "finetune_steps": 1},
            {"method": "int8_dynamic"}]), user=HOSTILE_USER, label=HOSTILE_LABEL)
        sampler = TelemetrySampler(store, first, torch.device("cpu"), interval_s=0.25).start()
        try:
            execute(store, first)
        finally:
            sampler.stop()
        second = store.submit(base.replace(batch_size=128), user="grace")
        execute(store, second)
        for run_id in (first, second):
            assert store.get(run_id).status == "done", store.get(run_id).error

    return Store(built_once(tmp_path_factory, "shared-runs", build))


@pytest.fixture(scope="session")
def shared_runs(tmp_path_factory):
    return make_shared_runs(tmp_path_factory)


@pytest.fixture(scope="session")
def written(shared_runs, tmp_path_factory):
    store = shared_runs
    path = tmp_path_factory.mktemp("report") / "report.html"
    made = report.write_report(store, report.select_runs(store, [1, 2]), path)
    return path, made


# -- what the file holds --------------------------------------------------------------------------------
def test_the_report_draws_the_pages_charts_for_the_comparison_the_runs_profiles_and_variants(written):
    _, made = written
    assert made.figures[:5] == ["pareto", "speed-up", "memory", "accuracy curves", "knobs to outcomes"]
    for name in ("#1 training by epoch", "#1 telemetry", "#1 training profile: categories",
                 "#1 training profile: busy", "#1 training profile: host", "#1 inference profile: categories",
                 "#1 variants"):
        assert name in made.figures
    assert not [f for f in made.figures if f.startswith("#2 ") and "profile" in f]   # run 2 was not profiled


def test_plotly_is_inlined_once_and_every_chart_uses_it(written):
    from plotly.offline import get_plotlyjs
    path, made = written
    text = path.read_text()
    bundle = get_plotlyjs()
    assert text.count(bundle[:400]) == 1
    assert text.count("Plotly.newPlot(") == len(made.figures)
    outside_the_library = text.replace(bundle, "")
    assert "cdn.plot.ly" not in outside_the_library and "https://" not in outside_the_library
    assert len(text) < len(bundle) + 3 * 2**20     # the figures, not a copy of plotly.js per chart


def test_the_report_says_what_was_run_what_differs_and_how_it_was_measured(written, shared_runs):
    text = written[0].read_text()
    for heading in ("What was run", "What differs between the runs", "Device, driver and software",
                    "Headline figures", "Comparison", "How these were measured"):
        assert f">{heading}<" in text
    differs = text.split("What differs between the runs", 1)[1].split("</table>", 1)[0]
    assert "batch_size" in differs and "<td>64</td>" in differs and "<td>128</td>" in differs
    driver = shared_runs.get(1).summary["versions"]["nvidia_driver"]   # recorded with the run
    assert f"<td>{driver or 'none (no NVIDIA driver)'}</td>" in text
    assert "All figures are <b>CPU figures</b>" in text


def test_headline_figures_carry_their_interval_and_the_comparison_its_verdict(written, shared_runs):
    text = written[0].read_text()
    s = shared_runs.get(1).summary["throughput"]
    assert f"95 % interval {s['ci95'][0]:,.0f}–{s['ci95'][1]:,.0f}" in text
    assert f"steps p10–p90 {s['p10']:,.0f}–{s['p90']:,.0f}" in text
    assert "against #1: " in text and ("within noise" in text or "beyond noise" in text or "cannot tell" in text)


def test_a_run_recorded_before_intervals_says_no_interval(shared_runs):
    summary = dict(shared_runs.get(2).summary)
    del summary["throughput"]                                  # what runs from before stats.py hold
    value, spread, quality = report.throughput_text(summary)
    assert value.endswith("img/s") and spread == "no interval" and quality == "not recorded"


def test_the_profile_advice_and_variants_are_in_the_report(written, shared_runs):
    text = written[0].read_text()
    profile = shared_runs.get(1).summary["profile"]
    assert "Top CPU operators (self time)" in text
    assert f"<td>{profile['top'][0]['name']}</td>" in text
    assert "not a GPU figure" in text                         # the profile's own reason, on the CPU
    assert "These are CPU figures" in text and "Evidence" in text
    for variant in shared_runs.get(1).summary["variants"]:
        assert f"<td>{variant['name']}</td>" in text


def test_text_from_a_run_reaches_the_file_only_escaped(written):
    text = written[0].read_text()
    assert HOSTILE_LABEL not in text and HOSTILE_USER not in text
    assert "&lt;script&gt;window.__xss" in text                # the page shows it as text
    assert "\\u003cscript" not in text                          # and the charts' data holds it escaped too
    assert "&lt;script&gt;window.__xss" in text.split("Plotly.newPlot(", 1)[1]


@pytest.fixture(scope="session")
def tried(shared_runs, tmp_path_factory):
    """A copy of the shared store where run 2's advice was tried: child run 3, really trained."""
    from optlab import advisor
    from optlab.runner import execute
    home = tmp_path_factory.mktemp("tried") / "home"
    shutil.copytree(shared_runs.home, home)
    store = Store(home)
    parent = store.get(2)
    threshold = advisor.INPUT_WAIT_SHARE
    advisor.INPUT_WAIT_SHARE = 0.0          # so a rule with a change to try speaks on this CPU run
    try:
        [advice] = [a for a in advisor.advise(parent.summary, parent.config, parent.device) if a.tryable]
    finally:
        advisor.INPUT_WAIT_SHARE = threshold
    child = advisor.try_advice(store, parent, advice)
    execute(store, child)
    assert store.get(child).status == "done", store.get(child).error
    return store, child


def test_advice_that_was_tried_shows_predicted_against_measured(tried):
    from optlab import advisor
    store, child = tried
    text = report.build(store, [store.get(2)]).html
    outcome = advisor.advice_outcome(store, child)
    tried_part = text.split("Tried: predicted against measured", 1)[1].split("</table>", 1)[0]
    assert f"<td>#{child}</td>" in tried_part
    assert f"x{outcome['measured_factor']:.2f} train_images_per_s" in tried_part
    assert report.e(outcome["predicted"]) in tried_part


# -- in a browser, offline ---------------------------------------------------------------------------------
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM}")
def test_the_report_opens_offline_draws_every_chart_and_runs_no_script_from_a_label(written, tmp_path):
    from playwright.sync_api import sync_playwright
    path, made = written
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})

            def only_files(route):
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()
            page.route("**/*", only_files)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(made.figures)}",
                                   timeout=60_000)
            plots = page.locator(".js-plotly-plot")
            assert plots.count() == len(made.figures)
            drawn = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot'), "
                                  "p => p.querySelectorAll('.main-svg').length > 0 && p.data.length > 0)")
            assert all(drawn) and len(drawn) == len(made.figures)
            assert outside == [] and errors == []
            assert page.evaluate("window.__xss") is None
            assert page.title().startswith("OptLab report") and "pwned" not in page.title()
            assert HOSTILE_LABEL in page.inner_text("body")        # shown as the text it is
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            shutil.copy(tmp_path / "report.png", ARTIFACTS / "report.png")

            # printed: the navigation is hidden and every folded section opens
            page.emulate_media(media="print")
            page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
            assert page.locator("nav.toc").is_hidden()
            assert page.evaluate("Array.from(document.querySelectorAll('details')).every(d => d.open)")
        finally:
            browser.close()


# -- the command line and the pages ------------------------------------------------------------------------
def test_the_report_command_writes_one_file_for_runs_or_a_sweep(shared_runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPTLAB_HOME", str(shared_runs.home))
    out = tmp_path / "one.html"
    assert cli.main(["report", "2", "-o", str(out)]) == 0
    assert out.stat().st_size > 1_000_000 and "1 run(s)" in capsys.readouterr().out
    assert cli.main(["report", "--sweep", "no-such-sweep"]) == 2
    assert "no sweep 'no-such-sweep'" in capsys.readouterr().err
    assert cli.main(["report", "7"]) == 2
    assert "no run #7" in capsys.readouterr().err


def test_runs_compare_and_profile_offer_the_report(shared_runs, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    home = tmp_path / "pages"
    shutil.copytree(shared_runs.home, home)
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["user"] = "grace"          # the Runs page opens the visitor's own run: run 2
    at.run()
    for page in ("app_pages/runs.py", "app_pages/compare.py", "app_pages/profile.py"):
        at.switch_page(page).run()
        assert not at.exception, [x.value for x in at.exception]
        assert "Download report" in [b.label for b in at.get("download_button")], (page, [c.value for c in at.caption][:4], [e.value for e in at.error])
