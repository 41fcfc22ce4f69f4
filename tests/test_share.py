"""A run setup round-trips through a link; a broken link is a message."""
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from streamlit.testing.v1 import AppTest

from optlab import share
from optlab.config import PRESETS, ConfigError, RunConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_round_trips_through_a_link(name):
    cfg = PRESETS[name]
    url = share.link("http://192.0.2.7:8501", cfg)
    [value] = parse_qs(urlsplit(url).query)[share.PARAM]
    assert share.decode(value) == cfg


def test_a_setup_with_compression_steps_round_trips():
    cfg = RunConfig(compress=[{"method": "prune_unstructured", "sparsity": 0.3}], batch_size="auto")
    assert share.decode(share.encode(cfg)) == cfg


def test_defaults_are_left_out_of_the_link():
    assert share.encode(RunConfig()) == "{}"
    assert share.encode(RunConfig(precision="bf16")) == '{"precision":"bf16"}'


@pytest.mark.parametrize("text, why", [("{not json", "not readable"), ("[1]", "not a set of settings"),
                                       ('{"colour":"red"}', "unknown setting"), ('{"epochs":0}', "epochs must be")])
def test_a_broken_link_is_a_message(text, why):
    with pytest.raises(ConfigError, match=why):
        share.decode(text)


def _knob(at, kind, name):
    import re
    return next(w for w in getattr(at, kind) if re.fullmatch(f"lab_{name}_\\d+", w.key or ""))


def test_opening_a_shared_link_fills_the_lab_form(monkeypatch):
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    cfg = RunConfig(model="resnet18", precision="bf16", channels_last=True, epochs=3, device="cpu")
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params[share.PARAM] = share.encode(cfg)
    at.run()
    assert not at.exception
    assert _knob(at, "selectbox", "model").value == "resnet18"
    assert _knob(at, "button_group", "precision").value == "bf16"
    assert _knob(at, "toggle", "channels_last").value is True
    assert _knob(at, "number_input", "epochs").value == 3
    shown = next(c.value for c in at.code if "?setup=" in c.value)
    [value] = parse_qs(urlsplit(shown).query)[share.PARAM]
    assert share.decode(value) == cfg          # the page's own link gives the same setup back


def test_a_lesson_opened_in_the_lab_shows_its_knobs_until_asked_for_all(monkeypatch):
    from optlab import lessons
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    lesson = next(l for l in lessons.load() if "channels-last" in l.id)
    _, baseline = lesson.configs("cpu")[0]
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params[share.PARAM] = share.encode(baseline)
    at.query_params["lesson"] = lesson.id
    at.run()
    assert not at.exception
    assert _knob(at, "toggle", "channels_last").value is False
    with pytest.raises(StopIteration):
        _knob(at, "number_input", "epochs")                 # not a knob of this lesson: hidden
    at.button(key="room_unfocus").click().run()
    assert _knob(at, "number_input", "epochs").value == baseline.epochs
