"""Lessons are data: every file in lessons/ validates, for the GPU and the CPU; a lesson launches
its runs as one sweep, and its results compare each change with the baseline on measured figures."""
import copy
import json

import pytest

from optlab import lessons
from optlab.fairuse import Refused
from optlab.lessons import LessonError
from optlab.runner import execute

ALL = lessons.load()
REQUIRED_TOPICS = ("mixed-precision", "channels-last", "input-pipeline", "batch-size", "pruning-quantization", "speedrun")


@pytest.mark.parametrize("lesson", ALL, ids=[l.id for l in ALL])
def test_every_lesson_file_is_valid_for_both_device_classes(lesson):
    assert lessons.parse(json.loads(lesson.path.read_text()), lesson.path) == lesson
    for cls in lessons.DEVICE_CLASSES:
        configs = lesson.configs(cls)
        assert 1 <= len(configs) <= 4
        for _, cfg in configs:
            cfg.validate(lessons._device(cls))
    assert all(cfg.device == "cpu" for _, cfg in lesson.configs("cpu"))     # sized for the CPU
    assert "CPU figures are not GPU figures" in lesson.expected["cpu"]["text"]


def test_the_workshop_topics_all_have_a_lesson():
    ids = [l.id for l in ALL]
    assert all(any(topic in i for i in ids) for topic in REQUIRED_TOPICS), ids


def _data(**changes):
    data = json.loads(ALL[0].path.read_text())
    data.pop("id")
    data["id"] = "t"
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, problem", [
    ({"runs": [{"label": "x", "changes": {"precision": "fp64"}}]}, "precision 'fp64' is not one of"),
    ({"runs": [{"label": "x", "changes": {"colour": "red"}}]}, "unknown setting"),
    ({"runs": []}, "a baseline and at most three changes"),
    ({"metric": "vibes"}, "metric 'vibes'"),
    ({"knobs": ["colour"]}, "not RunConfig settings"),
    ({"expected": {"gpu": {"verdict": "better", "text": "x", "source": ""}}}, "needs a verdict, a text and a source"),
    ({"runs": [{"label": "fp16", "changes": {"precision": "fp16"}}]}, "cpu run 'fp16': fp16 needs a GPU"),
])
def test_a_bad_lesson_is_refused_with_the_problem(changes, problem):
    with pytest.raises(LessonError, match=problem):
        lessons.parse(_data(**changes))


def test_a_missing_field_is_named():
    data = _data()
    del data["surprise"]
    with pytest.raises(LessonError, match="missing surprise"):
        lessons.parse(data)


def _tiny_lesson():
    data = _data(cpu={"device": "cpu", "model": "speednet", "limit_train": 256, "limit_test": 128, "batch_size": 32,
                      "image_size": 8,   # bf16 has no native kernels on this kind of CPU
                      "num_workers": 0, "profile": False})
    data["runs"] = [{"label": "fp32 (baseline)", "changes": {}}, {"label": "bf16", "changes": {"precision": "bf16"}}]
    return lessons.parse(data)


def test_a_lesson_launches_its_runs_and_reports_each_change_against_the_baseline(store):
    lesson = _tiny_lesson()
    sweep_id, ids = lessons.launch(store, lesson, "ada", "cpu")
    assert sweep_id.startswith("lesson-t-") and len(ids) == 2
    for run_id in ids:
        execute(store, run_id)
    [(group, runs)] = lessons.attempts(store, lesson, "ada").items()
    assert group == sweep_id and [r.label for r in runs] == ["fp32 (baseline)", "bf16"]
    [result] = lessons.results(lesson, runs)
    fp32, bf16 = (r.summary["train_images_per_s"] for r in runs)
    assert result["ratio"] == pytest.approx(bf16 / fp32) and result["device"] == "cpu"
    assert result["verdict"] in ("better", "worse", "within noise", "no interval")
    assert lessons.surprising(lesson, dict(result, verdict="better"), "cpu")   # cpu expects bf16 worse
    assert not lessons.surprising(lesson, dict(result, verdict="within noise"), "cpu")


def test_a_lesson_over_the_queue_limit_queues_nothing(store, monkeypatch):
    monkeypatch.setenv("OPTLAB_MAX_QUEUED", "1")
    with pytest.raises(Refused, match="the room allows 1 per person: these add 2"):
        lessons.launch(store, _tiny_lesson(), "ada", "cpu")
    assert store.list() == []
