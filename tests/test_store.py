import threading

from conftest import tiny_config
from optlab.store import Store


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
