"""bench/gpu_suite.py runs end to end on the CPU on tiny sizes: the GPU proof's code path is
exercised in CI even though its figures only mean something on a GPU."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suite_result(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "bench" / "gpu_suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    out = tmp_path_factory.mktemp("suite")
    code = suite.main(["--device", "cpu", "--tiny", "--out", str(out)])
    files = sorted(out.iterdir())
    return code, files, json.loads(next(f for f in files if f.suffix == ".json").read_text())


def test_every_section_runs_and_none_fails_on_the_cpu(suite_result):
    code, _, result = suite_result
    failed = {name: sec["error"][-400:] for name, sec in result["sections"].items() if sec.get("error")}
    assert failed == {} and code == 0
    assert set(result["sections"]) == {"env", "sync", "matrix", "loop_overhead", "speedrun", "profile",
                                       "auto_batch", "compression", "ddp", "background"}


def test_results_are_one_json_and_one_markdown_named_for_the_device_and_date(suite_result):
    _, files, result = suite_result
    assert [f.suffix for f in files] == [".json", ".md"]
    assert files[0].stem.startswith("cpu-" + result["date"])
    assert "Training matrix" in files[1].read_text()


def test_gpu_only_precisions_are_refused_with_the_reason_and_the_rest_measured(suite_result):
    rows = suite_result[2]["sections"]["matrix"]["result"]["rows"]
    refused = {r["config"]["precision"] if "config" in r else r["label"].split()[2]: r["error"]
               for r in rows if r["status"] == "refused"}
    assert set(refused) == {"fp16", "tf32"} and all("GPU" in why or "NVIDIA" in why for why in refused.values())
    done = [r for r in rows if r["status"] == "done"]
    assert done and all(r["images_per_s"] > 0 and r["device_label"].startswith("CPU") for r in done)
    assert all(r["quality"] == "thin" for r in done)   # three steps a run: marked, never passed off as solid


def test_the_sync_check_says_why_it_cannot_run_on_the_cpu(suite_result):
    assert "CPU" in suite_result[2]["sections"]["sync"]["result"]["skipped"]


def test_the_scaling_section_names_where_its_code_path_is_tested_on_the_cpu(suite_result):
    assert "tests/test_ddp.py" in suite_result[2]["sections"]["ddp"]["result"]["skipped"]


def test_the_background_run_goes_through_a_worker_process_with_telemetry(suite_result):
    bg = suite_result[2]["sections"]["background"]["result"]
    assert bg["status"] == "done" and bg["telemetry_rows"] > 0
    assert "cpu_pct" in bg["telemetry_fields"]


def test_compression_records_refusals_on_the_cpu_and_measures_what_can_run(suite_result):
    variants = suite_result[2]["sections"]["compression"]["result"]["models"]["vit_tiny"]["variants"]
    names = [v["name"] for v in variants]
    assert "baseline" in names
    measured = [v for v in variants if not v["error"]]
    assert all(v["latency_ms_p50"] > 0 for v in measured)
