import os
import subprocess
import sys
import threading

import pytest

from conftest import tiny_config
from optlab.config import ConfigError
from optlab.store import Store, StoreMissing


def test_submit_get_update_and_list(store):
    a = store.submit(tiny_config(), user="ada")
    b = store.submit(tiny_config(precision="bf16"), user="bob", sweep_id="s1")
    assert store.get(a).status == "queued" and store.get(a).user == "ada"
    assert store.get(b).run_config.precision == "bf16"
    store.update(a, summary={"train_images_per_s": 123.0}, progress={"phase": "train"})
    assert store.get(a).summary == {"train_images_per_s": 123.0}
    assert [r.id for r in store.list()] == [b, a]
    assert [r.id for r in store.list(sweep_id="s1")] == [b]
    assert [r.id for r in store.list(user="ada")] == [a]


def test_finish_and_delete_remove_everything(store):
    rid = store.submit(tiny_config())
    store.add_metric(rid, "epoch", {"epoch": 1})
    store.add_event(rid, "hello")
    (store.artifacts_dir(rid) / "model.pt").write_bytes(b"x")
    store.finish(rid, "done", summary={"x": 1})
    assert store.get(rid).finished and store.get(rid).finished_at
    store.delete(rid)
    assert store.get(rid) is None and store.metrics(rid, "epoch") == [] and store.events(rid) == []
    assert not store.artifacts_dir(rid, create=False).exists()


def test_store_uses_wal_and_survives_reopening(store):
    rid = store.submit(tiny_config())
    with store.connect() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Store(store.home).get(rid).id == rid


def test_a_claim_succeeds_exactly_once_across_threads(store):
    rid = store.submit(tiny_config())
    wins = []
    threads = [threading.Thread(target=lambda: wins.append(store.claim(rid))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and store.get(rid).status == "running"


def test_a_store_from_before_the_origin_columns_is_migrated_when_opened(tmp_path):
    import sqlite3
    from optlab import store as store_module
    home = tmp_path / "old"
    home.mkdir()
    old_schema = store_module._SCHEMA   # the tables as the first release created them: no origin columns
    assert "origin" not in old_schema
    with sqlite3.connect(home / "optlab.db") as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO runs (created_at, status, config) VALUES (1.0, 'done', ?)", (tiny_config().to_json(),))
    store = Store(home)
    [run] = store.list()
    assert run.status == "done" and run.origin is None and run.origin_key is None
    with store.connect() as db:
        columns = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
    assert {"origin", "origin_key"} <= columns
    store.update(run.id, origin={"host": "elsewhere"})
    assert Store(home).get(run.id).origin == {"host": "elsewhere"}


# -- a store is made on purpose, never by opening it -----------------------------------------------
def remove_database(home):
    for suffix in ("", "-wal", "-shm"):
        (home / f"optlab.db{suffix}").unlink(missing_ok=True)


def test_the_first_start_creates_the_store_and_marks_it(isolated_home):
    assert not isolated_home.exists()
    store = Store()
    assert store.path.exists() and (isolated_home / "store.json").exists()
    assert store.list() == []


def test_a_store_that_vanished_is_an_error_naming_the_file_and_no_empty_store_appears(store):
    rid = store.submit(tiny_config())
    store.artifacts_dir(rid)
    remove_database(store.home)
    for call in (lambda: store.get(rid), lambda: store.submit(tiny_config()), lambda: Store(store.home),
                 lambda: Store(store.home, readonly=True)):
        with pytest.raises(StoreMissing, match=str(store.path)):
            call()
    assert not store.path.exists()


def test_a_new_store_made_on_request_never_reuses_a_lost_stores_run_folders(store):
    ids = [store.submit(tiny_config()) for _ in range(3)]
    for rid in ids:
        (store.artifacts_dir(rid) / "model.pt").write_bytes(b"old weights")
    remove_database(store.home)
    again = Store(store.home, create=True)
    new = again.submit(tiny_config())
    assert new == max(ids) + 1 and not again.artifacts_dir(new, create=False).exists()


def test_an_id_whose_run_folder_already_exists_is_skipped(store):
    (store.home / "runs" / "1").mkdir(parents=True)
    (store.home / "runs" / "2").mkdir()
    assert store.submit(tiny_config()) == 3


def test_names_and_labels_are_limited_and_refuse_control_characters(store):
    for kwargs in ({"user": "a" * 65}, {"label": "x" * 201}, {"label": "ok\nforged row"},
                   {"user": "\x1b]8;;http://evil\x07click"}, {"label": "\u202eevil"}):
        with pytest.raises(ConfigError):
            store.submit(tiny_config(), **kwargs)
    assert store.list() == []
    rid = store.submit(tiny_config(), user="Zoë", label="bf16 + channels_last — try 2 ✓")
    assert store.get(rid).label == "bf16 + channels_last — try 2 ✓"


def test_a_config_with_a_wrong_type_is_never_stored(store):
    with pytest.raises(ConfigError, match="channels_last"):
        store.submit(tiny_config(channels_last="yes"))
    assert store.list() == []


# -- a read-only OPTLAB_HOME -------------------------------------------------------------------------
def read_only(home, *argv):
    """`python -m optlab ARGV` with `home` mounted read-only (a private mount namespace)."""
    script = f'mount --bind -o ro "$0" "$0" && exec "$1" -m optlab "${{@:2}}"'
    return subprocess.run(["unshare", "-m", "bash", "-c", script, str(home), sys.executable, *argv],
                          capture_output=True, text=True, timeout=60, env=os.environ)


@pytest.fixture
def read_only_home(store):
    probe = subprocess.run(["unshare", "-m", "mount", "--bind", "-o", "ro", str(store.home), str(store.home)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a read-only folder here: {probe.stderr.strip()}")
    return store


def test_reading_commands_work_on_a_read_only_store(read_only_home):
    store = read_only_home
    rid = store.submit(tiny_config(), user="ada", label="kept")
    listing = read_only(store.home, "list")
    assert listing.returncode == 0, listing.stderr
    assert f"{rid:>5}  queued" in listing.stdout
    for argv in (["show", str(rid)], ["status", str(rid), "--json"]):
        out = read_only(store.home, *argv)
        assert out.returncode == 0 and out.stderr == "", out.stderr


def test_writing_commands_on_a_read_only_store_say_so_in_one_line(read_only_home):
    store = read_only_home
    rid = store.submit(tiny_config())
    for argv in (["submit", "--device", "cpu"], ["cancel", str(rid)]):
        out = read_only(store.home, *argv)
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "read-only" in out.stderr and "Traceback" not in out.stderr
    assert store.get(rid).status == "queued" and len(store.list()) == 1
