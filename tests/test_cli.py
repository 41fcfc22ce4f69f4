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
                 "--no-profile", "--json", "--image-size", "16", home=home)   # 16 px: 18 CPU-s, not 30
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
def test_bad_values_are_refused_before_anything_runs(isolated_home, capsys, args, message):
    from optlab.cli import main   # in this process: `python -m optlab` is this call (tests above run it as one)
    assert main(["run", *args]) == 2
    assert message in capsys.readouterr().err
    assert Store(isolated_home).list() == []


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
                 "--epochs", "1", "--workers", "0", "--no-profile", "--repeats", "3", "--json", "--image-size", "8",
                 home=tmp_path)
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


# -- a bad --config file is one line and exit code 2 ------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (None, "cannot read the config file"),
    ('{"seed": ', "not valid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('{"epochs": "two"}', "epochs must be a whole number"),
    ('{"epochs": null}', "epochs must be a whole number, not null"),
    ('{"channels_last": "yes"}', "channels_last must be true or false"),
    ('{"data_path": 5}', "data_path must be text or null"),
    ('{"seed": 1e23}', "seed must be a whole number"),
    ('{"seed": 4294967296}', "seed must be 0..4294967295"),
    (b"\xff\xfe{", "cannot read the config file"),
])
@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_bad_config_file_is_one_line_and_exit_code_2(tmp_path, command, content, message):
    path = tmp_path / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = optlab(command, "--config", str(path), home=tmp_path / "home")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "home" / "optlab.db").exists() or Store(tmp_path / "home").list() == []


# -- the store commands do not load torch ----------------------------------------------------------
STORE_COMMANDS = """
import sys
from optlab.cli import main
codes = [main(argv) for argv in (["submit", "--device", "cpu", "--user", "ada", "--label", "quick"],
                                 ["list"], ["show", "1"], ["show", "1", "--json"], ["status", "1"],
                                 ["status", "1", "--json"], ["cancel", "1"])]
print(codes, "torch" in sys.modules, file=sys.stderr)
"""


def test_submit_list_show_status_and_cancel_do_not_import_torch(tmp_path):
    env = dict(os.environ, OPTLAB_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", STORE_COMMANDS], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)
    assert out.stderr.splitlines()[-1] == "[0, 0, 0, 0, 0, 0, 0] False", out.stderr


# -- text from the store reaches the terminal as text --------------------------------------------------
def test_list_and_status_print_control_characters_as_escapes(tmp_path):
    from conftest import tiny_config
    store = Store(tmp_path)
    rid = store.submit(tiny_config())
    # a row written before names were checked, or by hand
    store.update(rid, user="\x1b[2J\x1b[31mmallory", label="line\n   99  done  forged", error="bad\x07bell",
                 log_tail="ok\n\x1b]0;title\x07")
    for argv in (["list"], ["status", str(rid)], ["show", str(rid)]):
        out = optlab(*argv, home=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "\\x1b[2J" in optlab("list", home=tmp_path).stdout
    status = optlab("status", str(rid), home=tmp_path).stdout
    assert "line\\n   99  done  forged" in status and "\\x1b]0;title\\x07" in status


def test_a_lost_store_is_one_line_until_a_person_creates_a_new_one(tmp_path):
    from conftest import tiny_config
    store = Store(tmp_path)
    first = store.submit(tiny_config())
    store.artifacts_dir(first)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"optlab.db{suffix}").unlink(missing_ok=True)
    for argv in (["list"], ["status", str(first)], ["submit", "--device", "cpu"]):
        out = optlab(*argv, home=tmp_path)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "optlab.db is gone" in out.stderr and "python -m optlab init" in out.stderr
    assert not (tmp_path / "optlab.db").exists()
    assert optlab("init", home=tmp_path).returncode == 0
    out = optlab("submit", "--device", "cpu", home=tmp_path)
    assert out.returncode == 0 and int(out.stdout) == first + 1


def test_compress_of_a_run_whose_data_set_is_not_here_is_one_line(store, monkeypatch, capsys):
    from conftest import tiny_config
    from optlab.cli import main
    monkeypatch.setenv("OPTLAB_DATA", str(store.home / "no-data"))
    rid = store.submit(tiny_config(dataset="mnist"))   # MNIST is not installed and is not downloaded here
    store.finish(rid, "done", summary={"weights_path": str(store.artifacts_dir(rid) / "model.pt")})
    assert main(["compress", str(rid), "--quantize", "dynamic", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mnist was not found") and err.count("\n") == 1
