"""Memory figures: one definition each, each labelled, measured per phase (an earlier, larger
phase never shows up in a later one's peak)."""
import pytest
import torch

from conftest import tiny_config
from optlab.memory import LABELS, PhasePeak, headline_memory, reset_process_peak
from optlab.runner import execute

CPU = torch.device("cpu")


@pytest.mark.skipif(not reset_process_peak(), reason="this kernel does not let a process reset its VmHWM")
def test_a_phase_peak_leaves_out_what_an_earlier_phase_allocated():
    earlier = PhasePeak(CPU).start()
    big = torch.ones(200 * 2**20, dtype=torch.uint8)               # 200 MB, touched
    big_phase = earlier.figures()
    del big
    later = PhasePeak(CPU).start()
    small = torch.ones(10 * 2**20, dtype=torch.uint8)
    small_phase = later.figures()
    del small
    assert small_phase["process_peak_method"].startswith("VmHWM")
    assert small_phase["process_peak_mb"] < big_phase["process_peak_mb"] - 150


def test_a_cpu_run_labels_every_memory_figure_and_keeps_the_old_keys(store):
    rid = store.submit(tiny_config(pipeline="cpu", num_workers=1))
    execute(store, rid)
    s = store.get(rid).summary
    memory = s["memory"]
    assert set(memory["labels"]) == {"process_peak_mb", "process_tree_peak_mb"}
    assert len(set(memory["labels"].values())) == 2                  # distinct definitions
    assert memory["device_peak_allocated_mb"] is None and memory["device_peak_reserved_mb"] is None
    assert memory["process_tree_peak_mb"] >= memory["process_peak_mb"] > 0
    assert s["peak_memory_mb"] == memory["process_peak_mb"] and s["memory_kind"] == "host_rss"
    value, label = headline_memory(s)
    assert value == memory["process_peak_mb"] and label == LABELS["process_peak_mb"]


def test_every_label_names_what_it_measures_and_they_differ():
    assert len(set(LABELS.values())) == len(LABELS)
    assert "loader workers not" in LABELS["process_peak_mb"] and "DataLoader workers" in LABELS["process_tree_peak_mb"]
    assert "allocated" in LABELS["device_peak_allocated_mb"] and "reserved" in LABELS["device_peak_reserved_mb"]


def test_runs_stored_before_labels_keep_their_old_meaning():
    assert headline_memory({"peak_memory_mb": 900.0, "memory_kind": "cuda_allocator"}) == (900.0, "GPU allocator peak")
    value, label = headline_memory({"peak_memory_mb": 1545.0, "memory_kind": "host_rss"})
    assert value == 1545.0 and "since it started" in label
