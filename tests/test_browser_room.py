"""A small room in a real browser: two people in separate browser contexts and the instructor in a
third, against `streamlit run app.py` in workshop mode with its scheduler. Names survive a reload,
a lesson's runs train and reach the room board, a participant is refused when deleting another's
run, the instructor is allowed, a shared-setup link fills the Lab form. With OPTLAB_SCREENSHOTS=1, screenshots go to tests/artifacts/ (git-ignored)."""
import json
from pathlib import Path

import pytest

from test_browser import CHROMIUM, CHROMIUM_ARGS, server, shoot  # noqa: F401  (server is a fixture)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "room-secret-42"


@pytest.fixture
def room(monkeypatch, tmp_path):
    """Workshop mode with the channels_last lesson sized down to seconds on the CPU."""
    folder = tmp_path / "lessons"
    folder.mkdir()
    data = json.loads((ROOT / "lessons" / "2-channels-last.json").read_text())
    data["cpu"].update(limit_train=256, limit_test=128, batch_size=32, num_workers=0, image_size=16)
    (folder / data["id"]).with_suffix(".json").write_text(json.dumps(data))
    monkeypatch.setenv("OPTLAB_LESSONS", str(folder))
    monkeypatch.setenv("OPTLAB_WORKSHOP", "1")
    monkeypatch.setenv("OPTLAB_INSTRUCTOR_SECRET", SECRET)
    return folder


def join(browser, url, name):
    from playwright.sync_api import expect
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url + "/workshop")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_text(f"You are {name}")).to_be_visible()
    expect(page.get_by_label("Your name", exact=True)).to_have_value(name)
    # the cookie is written by a script the page runs after it draws "You are …": a goto before
    # that script ran opens a session that does not know this person (CI's load showed it)
    page.wait_for_function("document.cookie.includes('optlab_token=')")
    return page


def test_a_room_of_two_people_and_the_instructor(room, server, tmp_path, isolated_home):
    from playwright.sync_api import expect, sync_playwright
    from optlab.store import Store

    expect.set_options(timeout=60_000)
    store = Store(isolated_home)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ada = join(browser, server, "Ada")
            expect(ada.get_by_text("workshop?me=")).to_be_visible()
            ada.reload()                                   # the cookie brings her back
            expect(ada.get_by_label("Your name", exact=True)).to_have_value("Ada")
            ada.get_by_role("button", name="Launch this lesson's runs").click()
            expect(ada.get_by_text("Queued 2 runs")).to_be_visible()
            expect(ada.get_by_text("channels_last against the baseline")).to_be_visible(timeout=180_000)
            shoot(ada, "room_lesson.png", tmp_path)
            ada.get_by_role("tab", name="Room board").click()
            expect(ada.locator(".js-plotly-plot").first).to_be_visible()
            shoot(ada, "room_board.png", tmp_path)

            grace = join(browser, server, "Grace")
            expect(grace.get_by_label("Your name", exact=True)).to_have_value("Grace")
            grace.goto(server + "/runs?run=1")
            expect(grace.get_by_role("heading", name="Run #1 · done")).to_be_visible()
            grace.get_by_role("button", name="Delete").click()
            grace.get_by_role("button", name="Delete for good").click()
            expect(grace.get_by_text("run #1 is Ada's run: only its owner or the instructor")).to_be_visible()
            shoot(grace, "room_refused.png", tmp_path)
            assert store.get(1) is not None

            lin = join(browser, server, "Lin")
            lin.get_by_text("Instructor", exact=True).click()
            lin.get_by_label("Instructor secret", exact=True).fill(SECRET)
            lin.get_by_role("button", name="I am the instructor").click()
            expect(lin.get_by_role("tab", name="Instructor")).to_be_visible()
            lin.get_by_role("tab", name="Instructor").click()
            expect(lin.get_by_text("Lesson progress")).to_be_visible()
            lin.wait_for_timeout(2000)                     # the tables draw on a canvas after the text
            shoot(lin, "room_instructor.png", tmp_path)
            lin.goto(server + "/runs?run=1")
            expect(lin.get_by_role("heading", name="Run #1 · done")).to_be_visible()
            lin.get_by_role("button", name="Delete").click()
            lin.get_by_role("button", name="Delete for good").click()
            # gone; the page then opens none of Ada's runs for Lin, who has none of her own
            expect(lin.get_by_text("No run of yours yet under this name")).to_be_visible()

            # a shared setup: Grace opens the link Lin's Lab shows for a setup, and her form fills
            from optlab import share
            from optlab.config import RunConfig
            # a setup the Lab's estimate times in a moment (bf16 has no native kernels on this CPU)
            setup = RunConfig(model="speednet", batch_size=32, epochs=3, device="cpu")
            grace.goto(share.link(server, setup))
            expect(grace.get_by_text("The form holds the setup from the link you opened.")).to_be_visible()
            expect(grace.get_by_label("Epochs", exact=True)).to_have_value("3")
            shoot(grace, "room_shared_setup.png", tmp_path)
        finally:
            browser.close()
    assert store.get(1) is None and store.get(2).user == "Ada"
