import json
import os
import subprocess
import sys

import pytest
import torch

from optlab.cli import JSON_FIELDS
from optlab.store import Store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def optlab(*args, home):
    env = dict(os.environ, OPTLAB_HOME=str(home), OPTLAB_DOWNLOAD="0")
    return subprocess.run([sys.executable, "-m", "optlab", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = optlab("run", "--model", "speednet", "--dataset", "fashion-mnist", "--epochs", "1",
                 "--limit-train", "2048", "--limit-test", "500", "--batch-size", "64", "--device", "cpu", "--workers", "0",
                 "--no-profile", "--json", home=home)
    return home, out


def test_run_json_carries_every_promised_field(cli_run):
    _, out = cli_run
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for field in JSON_FIELDS:
        assert field in result, field
    assert result["status"] == "done" and result["device"] == "cpu"
    assert result["test_accuracy"] > 0.3
    assert result["train_images_per_s"] > 0 and result["step_ms_p90"] >= result["step_ms_p50"]
    assert result["batch_size"] == 64


def test_list_and_show_read_the_store(cli_run):
    home, out = cli_run
    rid = json.loads(out.stdout)["id"]
    listing = optlab("list", home=home)
    assert listing.returncode == 0 and f"{rid:>5}  done" in listing.stdout
    shown = optlab("show", str(rid), home=home)
    assert "train throughput" in shown.stdout and "CPU:" in shown.stdout
    assert json.loads(optlab("show", str(rid), "--json", home=home).stdout)["id"] == rid


@pytest.mark.parametrize("args, message", [
    (["--model", "alexnet"], "choose one of"),
    (["--precision", "fp16", "--device", "cpu"], "fp16 needs a GPU"),
    (["--batch-size", "0"], "batch size must be"),
    pytest.param(["--device", "cuda"], "no GPU is visible", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="a GPU is visible here, so cuda is a valid choice")),
])
def test_bad_values_are_refused_before_anything_runs(tmp_path, args, message):
    out = optlab("run", *args, home=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr
    assert Store(tmp_path).list() == []


def test_show_of_a_missing_run_says_so(tmp_path):
    out = optlab("show", "999", home=tmp_path)
    assert out.returncode == 2 and "no run #999" in out.stderr


def test_submit_takes_the_same_compression_flags_as_run(tmp_path):
    out = optlab("submit", "--device", "cpu", "--prune", "unstructured:0.5", "--quantize", "int8-static",
                 "--user", "ada", home=tmp_path)
    assert out.returncode == 0, out.stderr
    (run,) = Store(tmp_path).list()
    assert run.status == "queued" and run.user == "ada"
    methods = [s["method"] for s in run.config["compress"]]
    assert "prune_unstructured" in methods and "int8_static" in methods


def test_run_with_repeats_prints_one_object_with_every_repeat_the_central_value_and_the_spread(tmp_path):
    out = optlab("run", "--device", "cpu", "--limit-train", "128", "--limit-test", "64", "--batch-size", "32",
                 "--epochs", "1", "--workers", "0", "--no-profile", "--repeats", "3", "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)                       # one JSON object, nothing else on stdout
    runs = Store(tmp_path).list(newest_first=False)
    assert result["ids"] == [r.id for r in runs] and len(runs) == 3
    assert [r["repeat_index"] for r in result["repeats"]] == [1, 2, 3]
    assert {r.repeat_group for r in runs} == {result["repeat_group"]}
    speed = result["figures"]["train_images_per_s"]
    per_run = [r["train_images_per_s"] for r in result["repeats"]]
    assert speed["values"] == per_run and speed["n"] == 3
    assert speed["value"] == pytest.approx(sum(per_run) / 3)
    assert speed["ci95"][0] <= speed["value"] <= speed["ci95"][1] and speed["basis"] == "between repeats"
    assert speed["cv"] is not None and result["status"] == "done" and result["device"] == "cpu"
    for key in ("step_ms_p50", "peak_memory_mb", "test_accuracy", "time_to_target_s"):
        assert key in result["figures"]
    shown = optlab("show", str(runs[1].id), home=tmp_path)
    assert "repeats" in shown.stdout and "95 % interval between repeats" in shown.stdout


def test_show_marks_a_thin_throughput(cli_run):
    home, out = cli_run
    result = json.loads(out.stdout)
    shown = optlab("show", str(result["id"]), home=home).stdout
    assert "95 % within-run interval" in shown
    assert ("THIN:" in shown) == (result["summary"]["throughput"]["quality"] == "thin")
