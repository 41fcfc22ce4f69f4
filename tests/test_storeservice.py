"""The store service: a worker on another host writes its run, and only its run, through HTTP; its
scratch paths become the store's; its run folder comes back as one tar stream and cannot write
outside the run's folder. A real service on 127.0.0.1, a real store, no Ray (tests/test_ray.py
runs a worker through it on a Ray cluster)."""
import io
import json
import socket
import tarfile
import urllib.error
import urllib.request

import pytest

from conftest import tiny_config
from optlab import storeservice
from optlab.store import StoreError
from optlab.storeservice import RemoteStore, StoreService, worker_store


@pytest.fixture
def service(store):
    served = StoreService(store, "127.0.0.1")
    yield served
    served.close()


@pytest.fixture
def two_runs(store):
    first = store.submit(tiny_config())
    assert store.claim(first, worker_pid=4242)
    return first, store.submit(tiny_config(seed=1))


def remote(service, run_id, home):
    grant = service.grant(run_id)
    return RemoteStore(grant["url"], grant["token"], run_id, home)


def test_a_worker_writes_its_run_through_the_service_as_it_would_the_store(store, service, two_runs, tmp_path):
    run_id, _ = two_runs
    node = remote(service, run_id, tmp_path / "node")
    run = node.get(run_id)
    assert run.status == "running" and run.worker_pid == 4242 and run.config == store.get(run_id).config
    assert node.attach_worker(run_id, 4242) and not node.claim(run_id, 4242)   # claimed already: False, as in the store
    assert node.heartbeat(run_id, {"phase": "train", "step": 3}, "a log line") is False
    node.add_metrics(run_id, "telemetry", [{"t": 1.0, "util": 10.0}, {"t": 2.0, "util": float("nan")}])
    node.add_event(run_id, "a warning", level="warning")
    assert store.request_cancel(run_id) == "running"
    assert node.heartbeat(run_id) is True            # the cancel flag reaches the worker
    weights = node.artifacts_dir(run_id) / "model.pt"
    node.finish(run_id, "done", summary={"weights_path": str(weights), "images_per_s": 5.0,
                                         "files": [str(weights)], "trace_dir": None})
    run = store.get(run_id)
    assert run.status == "done" and run.progress == {"phase": "train", "step": 3} and run.log_tail == "a log line"
    assert run.summary["weights_path"] == str(store.artifacts_dir(run_id) / "model.pt") == run.summary["files"][0]
    rows = store.metrics(run_id, "telemetry")
    assert rows[0] == {"t": 1.0, "util": 10.0} and rows[1]["util"] != rows[1]["util"]   # NaN kept, as the store keeps it
    assert {"level": "warning", "message": "a warning"}.items() <= store.events(run_id)[-1].items()
    assert node.artifacts_dir(run_id) == tmp_path / "node" / "runs" / str(run_id)


def test_a_token_opens_its_own_run_only_and_only_the_calls_a_worker_makes(store, service, two_runs, tmp_path):
    first, second = two_runs
    node = remote(service, first, tmp_path)
    with pytest.raises(StoreError, match=f"may write run #{first} only, not #{second}"):
        node.update(second, status="done")
    stolen = RemoteStore(service.url, service.grant(first)["token"], second, tmp_path)   # run A's token, run B's id
    with pytest.raises(StoreError, match=f"answered 403: this token does not open run #{second}"):
        stolen.finish(second, "failed", error="not yours")
    assert store.get(second).status == "queued"

    def post(path, token, body=b"{}"):
        request = urllib.request.Request(service.url + path, data=body, method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        return refused.value.code, json.loads(refused.value.read())["error"]

    token = service.grant(second)["token"]
    code, said = post(f"/v1/runs/{second}/call/delete", token)
    assert code == 403 and "'delete' is not a call the store service takes" in said and store.get(second)
    assert post(f"/v1/runs/{second}/call/submit", token)[0] == 403
    assert post(f"/v1/runs/{second}/call/get", "")[0] == 403
    code, said = post(f"/v1/runs/{second}/call/update", token, json.dumps({"kwargs": {"id": 7}}).encode())
    assert code == 400 and "cannot update ['id']" in said
    with pytest.raises(ValueError, match="cannot update"):      # the client raises what the store would
        remote(service, second, tmp_path).update(second, colour="red")


def test_the_run_folder_is_shipped_back_into_the_runs_folder_and_nowhere_else(store, service, two_runs, tmp_path):
    run_id, _ = two_runs
    node = remote(service, run_id, tmp_path / "node")
    folder = node.artifacts_dir(run_id)
    (folder / "tb" / f"run{run_id}").mkdir(parents=True)
    (folder / "tb" / f"run{run_id}" / "host.pt.trace.json").write_text('{"traceEvents": []}')
    (folder / "worker.log").write_text("worker pid 1 runs\n")
    (folder / "model.pt").write_bytes(bytes(range(256)) * 64)
    said = node.ship()
    assert said == "3 file(s), 0.0 MiB"
    home = store.artifacts_dir(run_id)
    assert (home / "model.pt").read_bytes() == bytes(range(256)) * 64
    assert (home / "tb" / f"run{run_id}" / "host.pt.trace.json").read_text() == '{"traceEvents": []}'
    assert (home / "worker.log").read_text() == "worker pid 1 runs\n"

    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../outside.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    request = urllib.request.Request(f"{service.url}/v1/runs/{run_id}/artifacts", data=evil.getvalue(), method="PUT",
                                     headers={"Authorization": f"Bearer {service.grant(run_id)['token']}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and "outside" in json.loads(refused.value.read())["error"]
    assert not (store.home / "outside.txt").exists() and not (store.home.parent / "outside.txt").exists()


def test_a_service_that_cannot_be_reached_is_a_store_error_naming_it(monkeypatch, tmp_path):
    with socket.socket() as s:        # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(storeservice, "RETRY_FOR_S", 0.5)
    node = RemoteStore(f"http://127.0.0.1:{port}", "token", 1, tmp_path)
    with pytest.raises(StoreError, match=f"the store service at http://127.0.0.1:{port} cannot be reached"):
        node.heartbeat(1)


def test_a_worker_opens_the_service_only_when_its_task_granted_one(store, monkeypatch):
    assert worker_store().home == store.home and not isinstance(worker_store(), RemoteStore)
    monkeypatch.setenv("OPTLAB_STORE_URL", "http://10.0.0.1:4000")
    monkeypatch.setenv("OPTLAB_STORE_TOKEN", "t")
    monkeypatch.setenv("OPTLAB_STORE_RUN", "12")
    opened = worker_store()
    assert isinstance(opened, RemoteStore) and (opened.url, opened.run_id, opened.home) == (
        "http://10.0.0.1:4000", 12, store.home)
    monkeypatch.setenv("OPTLAB_STORE_MAX_UPLOAD_MB", "lots")
    with pytest.raises(ValueError, match="OPTLAB_STORE_MAX_UPLOAD_MB must be a whole number"):
        StoreService(store, "127.0.0.1")


def test_the_profile_page_says_a_trace_is_still_on_its_node(store):
    from optlab.profiling import why_no_trace
    run_id = store.submit(tiny_config(profile=True))
    store.finish(run_id, "done", summary={"images_per_s": 1.0})
    store.update(run_id, cluster="head:6379")
    assert "no trace files were found" in why_no_trace(store, store.get(run_id))   # a run on the store's host
    store.add_event(run_id, "handed to Ray cluster at head:6379, node 10.0.0.2 (Ray task pid 1, worker pid 2; "
                            "it writes through the store service, scratch /tmp/x)")
    assert why_no_trace(store, store.get(run_id)) == (
        "it ran on another host of the Ray cluster, and its run folder (with the trace) has not come back yet")
    store.add_event(run_id, "run folder not shipped back: its folder stays on node 10.0.0.2 in /tmp/x: disk full",
                    level="warning")
    assert why_no_trace(store, store.get(run_id)).endswith("stays on node 10.0.0.2 in /tmp/x: disk full")
