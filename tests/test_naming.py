"""Names and words the pages show: runs named for what sets them apart, settings in words, typed
text kept as text, durations and counts as people say them, and the log without library chatter."""
import re

import pytest

from conftest import tiny_config
from optlab import naming, views
from optlab.store import Run


def run(run_id, status="done", **changes):
    return Run(id=run_id, status=status, created_at=0.0, config=tiny_config(**changes).to_dict())


def test_runs_that_differ_only_in_workers_compression_or_size_get_different_names():
    base = dict(batch_size=128, num_workers=2, image_size=None)     # native size, the default
    runs = [run(4, **base), run(3, **dict(base, num_workers=0)),
            run(2, **dict(base, compress=[{"method": "prune_unstructured", "sparsity": 0.5}])),
            run(1, **dict(base, image_size=8))]
    names = views.run_names(runs)
    assert names == {4: "speednet fp32 bs=128", 3: "speednet fp32 bs=128 · 0 workers",
                     2: "speednet fp32 bs=128 · pruned 50%", 1: "speednet fp32 bs=128 · 8 px"}


def test_the_gpu_pipeline_is_named_for_what_it_does_on_each_device():
    assert naming.knob_word("pipeline", "gpu", "cpu") == "data in memory"
    assert naming.knob_word("pipeline", "gpu", "cuda") == "data on the GPU"
    assert naming.knob_word("pipeline", "cpu", "cpu") == "DataLoader"


def test_compression_steps_read_as_words_not_internal_names():
    steps = [{"method": "benchmark"}, {"method": "prune_unstructured", "sparsity": 0.3}, {"method": "export_onnx"},
             {"method": "int8_static"}]
    assert naming.steps_name(steps) == "pruned 30% + ONNX + int8 static"
    assert naming.method_title("prune_unstructured") == "unstructured pruning"


def test_sweep_labels_use_the_same_words():
    from optlab.sweeps import expand
    [a, b] = expand(tiny_config(), {"precision": ["fp32", "bf16"]})
    assert (a.label, b.label) == ("fp32", "bf16")


@pytest.mark.parametrize("typed", ["![x](http://example.invalid/x.png)", ":red[loud] **bold** <b>x</b>",
                                   "# heading", "1. list", "$x^2$", ":material/delete:"])
def test_typed_text_is_escaped_for_markdown(typed):
    escaped = views.md_text(typed)
    assert escaped.replace("\\", "") == typed                            # the same characters, escaped
    assert re.findall(r"(?<!\\)[`*_\[\]<>!|~$]", escaped) == []         # nothing left for Markdown to act on
    assert not re.search(r"(?<!\\):\S", escaped)                         # no :directive[...] or :icon:
    assert not re.match(r"\s*\d*[#>+.)-]", escaped)                       # no heading, list or quote


def test_plain_messages_stay_readable_after_escaping():
    assert views.md_text("epochs must be 1..1000, not 0") == "epochs must be 1..1000, not 0"
    assert views.md_text("fp16: fp16 needs a GPU") == "fp16: fp16 needs a GPU"


@pytest.mark.parametrize("seconds, words", [(45, "45 s"), (89.6, "90 s"), (2822, "47 min"), (3900, "1 h 05 min")])
def test_durations_read_in_the_unit_people_use(seconds, words):
    assert views.duration(seconds) == words


def test_counts_are_singular_for_one():
    assert (views.count(1, "run"), views.count(7, "run"), views.count(1, "step")) == ("1 run", "7 runs", "1 step")


def test_the_log_tail_leaves_out_profiler_and_cuda_probe_chatter():
    tail = "\n".join([
        "10:55:08 train: epoch 1/1 step 1/16 loss 2.291 30 img/s ETA 63 s",
        "USDT:2026-11-23 10:55:18 7324:7324 SyncActivityProfilerHandler.cpp:39] profiler_start",
        "ERROR:2026-11-23 10:55:25 7324:7324 DeviceProperties.cpp:56] gpuGetDeviceCount failed with code 35",
        "ERROR:2026-11-23 10:55:25 7324:7324 CuptiActivityApi.cpp:99] a real profiler error",
        "10:58:39 run #3 done"])
    kept, hidden = views.log_lines(tail)
    assert hidden == 2
    assert kept.splitlines() == ["10:55:08 train: epoch 1/1 step 1/16 loss 2.291 30 img/s ETA 63 s",
                                 "ERROR:2026-11-23 10:55:25 7324:7324 CuptiActivityApi.cpp:99] a real profiler error",
                                 "10:58:39 run #3 done"]


def test_a_run_says_how_it_ended_without_repeating_itself():
    cancelled = run(7, status="cancelled")
    cancelled.error = "cancelled before it started"
    assert views.how_it_ended(cancelled) == "was cancelled before it started"
    assert views.why_no_telemetry(cancelled) == "it never started (cancelled before it started)"
    failed = run(8, status="failed")
    failed.error, failed.started_at = "out of memory at batch size 512", 1.0
    assert views.how_it_ended(failed) == "failed: out of memory at batch size 512"


def test_a_run_left_out_of_a_chart_says_which_figure_it_lacks_and_why():
    thin = run(1)
    thin.summary = {"train_images_per_s": None, "steps": 8, "steady_steps": 0, "warmup_steps": 2,
                    "profiled_steps_excluded": 6, "test_accuracy": 0.09, "accuracy_applies": True}
    random_labels = run(2)
    random_labels.summary = {"train_images_per_s": 900.0, "test_accuracy": None, "accuracy_applies": False}
    assert views.unmeasured([thin, random_labels, run(3)]) == [
        "#1 has no training throughput (all 8 steps were warm-up (2) or profiled (6): give it more steps)",
        "#2 has no accuracy (random labels)", "#3 has no training throughput (not measured) and no accuracy "
        "(not measured)"]
