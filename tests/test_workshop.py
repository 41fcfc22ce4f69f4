"""The Workshop page and the room's rules in the pages, driven with AppTest on real stores."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import tiny_config
from optlab import people

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    monkeypatch.setenv("OPTLAB_WORKSHOP", "1")
    monkeypatch.setenv("OPTLAB_INSTRUCTOR_SECRET", "room-secret-42")

    def start(page=None, me=None):
        at = AppTest.from_file(APP, default_timeout=60)
        if me:
            at.query_params["me"] = me
        at.run()
        if page:
            at.switch_page(page)
            at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return start


def test_joining_on_the_workshop_page_names_the_sidebar(app, store):
    at = app("app_pages/workshop.py")
    at.text_input(key="room_name").input("Ada")
    at.button[0].click().run()
    assert [p.name for p in people.people(store)] == ["Ada"]
    name = at.sidebar.text_input(key="user")
    assert name.value == "Ada" and name.disabled
    assert any("workshop?me=" in c.value for c in at.code)


def test_a_taken_name_is_refused_on_the_page(app, store):
    people.join(store, "Ada")
    at = app("app_pages/workshop.py")
    at.text_input(key="room_name").input("ada")
    at.button[0].click().run()
    assert "taken" in at.error[0].value
    assert len(people.people(store)) == 1


def test_a_personal_link_makes_a_new_session_that_person(app, store):
    _, token = people.join(store, "Grace")
    at = app(me=token)
    assert at.sidebar.text_input(key="user").value == "Grace"
    assert "me" not in at.query_params          # the key leaves the address bar


def test_without_joining_the_sidebar_offers_to_join_and_no_name_can_be_typed(app):
    at = app()
    assert not [w for w in at.sidebar.text_input if w.key == "user"]
    assert any("Join the workshop" in c.value for c in at.sidebar.caption)


def _runs_page_on(app, store, token, run_id):
    at = app("app_pages/runs.py", me=token)
    at.selectbox(key="runs_selected").set_value(run_id).run()
    return at


def test_a_participant_cannot_cancel_another_persons_run(app, store):
    theirs = store.submit(tiny_config(), user="Grace")
    _, token = people.join(store, "Ada")
    at = _runs_page_on(app, store, token, theirs)
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert "Grace's run" in at.error[0].value
    assert store.get(theirs).status == "queued"


def test_a_participant_cancels_their_own_run(app, store):
    mine = store.submit(tiny_config(), user="Ada")
    _, token = people.join(store, "Ada")
    at = _runs_page_on(app, store, token, mine)
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert not at.error and store.get(mine).status == "cancelled"


def test_the_instructor_cancels_anyones_run(app, store):
    theirs = store.submit(tiny_config(), user="Grace")
    boss, token = people.join(store, "Lin")
    people.promote(store, boss, "room-secret-42")
    at = _runs_page_on(app, store, token, theirs)
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert not at.error and store.get(theirs).status == "cancelled"


# -- lessons, limits, the board, the instructor -------------------------------------------------------------
def test_a_lesson_launches_its_runs_in_one_click(app, store):
    from optlab import lessons
    _, token = people.join(store, "Ada")
    at = app("app_pages/workshop.py", me=token)
    at.selectbox(key="room_lesson").set_value("2-channels-last").run()
    at.button(key="room_launch").click().run()
    runs = store.list(user="Ada", newest_first=False)
    assert [r.label for r in runs] == ["NCHW (baseline)", "channels_last"]
    assert runs[1].config["channels_last"] and runs[0].config["device"] == "cpu"
    assert runs[0].sweep_id.startswith("lesson-2-channels-last-")
    assert "Queued 2 runs" in at.success[-1].value
    assert lessons.progress(store, lessons.load()[1])["launched"] == 1


def test_the_per_person_limit_refuses_a_lesson_with_the_reason(app, store, monkeypatch):
    monkeypatch.setenv("OPTLAB_MAX_QUEUED", "2")
    _, token = people.join(store, "Ada")
    at = app("app_pages/workshop.py", me=token)
    at.selectbox(key="room_lesson").set_value("4-batch-size").run()
    at.button(key="room_launch").click().run()
    assert "Nothing was queued: Ada has 0 run(s) waiting and the room allows 2 per person: these add 3" in at.error[0].value
    assert store.list() == []


def test_without_joining_a_lesson_is_refused(app, store):
    at = app("app_pages/workshop.py")
    at.button(key="room_launch").click().run()
    assert "join the workshop first" in at.error[0].value and store.list() == []


def test_only_the_instructor_sees_the_instructor_view_and_pauses_the_queue(app, store):
    from optlab import fairuse
    _, ada = people.join(store, "Ada")
    assert "Instructor" not in [t.label for t in app("app_pages/workshop.py", me=ada).tabs]
    boss, token = people.join(store, "Lin")
    people.promote(store, boss, "room-secret-42")
    store.submit(tiny_config(), user="Ada")
    at = app("app_pages/workshop.py", me=token)
    assert "Instructor" in [t.label for t in at.tabs]
    at.button(key="room_pause").click().run()
    assert fairuse.paused(store).endswith("Lin")
    queue = next(d for d in at.dataframe if "expected start" in d.value.columns)
    assert list(queue.value["person"]) == ["Ada"] and list(queue.value["expected start"]) == ["unknown"]


def test_a_participant_sees_their_place_in_the_queue(app, store):
    store.submit(tiny_config(), user="Grace")
    mine = store.submit(tiny_config(), user="Ada")
    _, token = people.join(store, "Ada")
    at = app("app_pages/workshop.py", me=token)
    table = next(d for d in at.dataframe if "expected start" in d.value.columns).value
    assert list(table["place"]) == [2] and list(table["run"])[0].startswith(f"#{mine} ")
    assert list(table["estimated length"]) == ["no estimate"]
    assert "no finished run of speednet" in list(table["estimate from"])[0]


def test_the_instructor_pins_a_lessons_settings_for_every_participants_lab(app, store):
    boss, boss_token = people.join(store, "Lin")
    people.promote(store, boss, "room-secret-42")
    _, ada = people.join(store, "Ada")
    at = app("app_pages/workshop.py", me=boss_token)
    at.selectbox(key="room_pin").set_value("2-channels-last").run()
    lab = app(me=ada)                                              # Ada's Lab
    keys = [w.key or "" for w in lab.toggle] + [w.key or "" for w in lab.number_input]
    assert any(k.startswith("lab_channels_last_") for k in keys)
    assert not any(k.startswith("lab_epochs_") for k in keys)
    assert "The instructor shows the settings" in " ".join(c.value for c in lab.caption)
    boss_lab = app(me=boss_token)                                  # the instructor still sees everything
    assert any((w.key or "").startswith("lab_epochs_") for w in boss_lab.number_input)
