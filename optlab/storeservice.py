"""The store over HTTP, for workers on other hosts than the store's (the nodes of a Ray cluster).

The store is SQLite in WAL mode, which every process must open on the host that holds it
(sqlite.org/wal.html: "WAL does not work over a network filesystem"). A scheduler that hands runs
to a Ray cluster therefore serves its store (`StoreService`, a thread in its process) and gives
each run it hands out a grant: the service's URL and a token that opens that run and no other.
A worker on another host writes through `RemoteStore`, which has the methods of `Store` a worker
and its ranks use; everything else (its run folder, data, compile caches) lives in a scratch
OPTLAB_HOME on its node. When the worker has ended, `python -m optlab.storeservice ship` sends the
run folder back as one tar stream (weights, traces, the worker's log, the ranks' files), and the
service unpacks it into the run's folder in the store. Paths the worker records (the weights, the
trace folder) name its scratch folder; the service rewrites them to the store's folder.

Nothing here needs more than the standard library. There is no TLS: the service is meant for the
cluster's own network, like Ray itself; the tokens (HMAC-SHA256 of the run id under a secret made
when the service starts) keep one run's worker out of the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from optlab.store import Run, Store, StoreError, optlab_home, run_folder

# The Store methods a worker (and a data-parallel run's ranks) call; each takes the run id first.
WORKER_CALLS = ("get", "update", "claim", "attach_worker", "heartbeat", "finish", "finish_if_running", "add_metric",
                "add_metrics", "add_event", "events", "metrics")
# Events the scheduler writes about a worker on another host, which the Profile page reads back
THROUGH_SERVICE = "it writes through the store service"
FOLDER_SHIPPED, FOLDER_KEPT = "run folder shipped", "run folder not shipped back"
ENV_URL, ENV_TOKEN, ENV_RUN = "OPTLAB_STORE_URL", "OPTLAB_STORE_TOKEN", "OPTLAB_STORE_RUN"
CALL_MAX_BYTES = 32 << 20              # one call's JSON (a run's step times are the largest)
RETRY_FOR_S = 60.0                     # a worker keeps trying a service it cannot reach this long
TIMEOUT_S = 30.0
_PATH = re.compile(r"^/v1/runs/(\d+)/(call/(\w+)|artifacts)$")


def upload_limit() -> int:
    """The largest run folder the service takes back, in bytes (OPTLAB_STORE_MAX_UPLOAD_MB)."""
    value = os.environ.get("OPTLAB_STORE_MAX_UPLOAD_MB", "").strip()
    if value and (not value.isdigit() or int(value) < 1):
        raise ValueError(f"OPTLAB_STORE_MAX_UPLOAD_MB must be a whole number >= 1, not {value!r}")
    return int(value or 8192) << 20


def run_token(secret: bytes, run_id: int) -> str:
    return hmac.new(secret, f"optlab run {int(run_id)}".encode(), hashlib.sha256).hexdigest()


def _rewrite(value: Any, old: str, new: str) -> Any:
    """`value` with every string's `old` folder replaced by `new` (a worker's scratch paths)."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _rewrite(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rewrite(v, old, new) for v in value]
    return value


def _encode(result: Any) -> Any:
    return dataclasses.asdict(result) if isinstance(result, Run) else result


# -- the service, in the scheduler's process --------------------------------------------------------
class StoreService:
    """Serves `store` to the workers of the runs it grants, on a thread of this process."""

    def __init__(self, store: Store, host: str = "0.0.0.0", port: int = 0, advertise: str | None = None):
        self.store = store
        self.secret = secrets.token_bytes(32)
        self.limit = upload_limit()
        self.server = ThreadingHTTPServer((host, port), _Handler)
        self.server.daemon_threads = True
        self.server.service = self
        self.port = self.server.server_address[1]
        self.url = f"http://{advertise or host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="optlab-store-service", daemon=True)
        self._thread.start()

    def grant(self, run_id: int) -> dict[str, str]:
        """What a worker on another host needs to write run `run_id`, and only it."""
        return {"url": self.url, "token": run_token(self.secret, run_id)}

    def allows(self, run_id: int, token: str) -> bool:
        return hmac.compare_digest(run_token(self.secret, run_id), token)

    def call(self, run_id: int, method: str, args: list, kwargs: dict, worker_home: str | None) -> Any:
        if method not in WORKER_CALLS:
            raise PermissionError(f"{method!r} is not a call the store service takes; it takes {', '.join(WORKER_CALLS)}")
        if worker_home:   # the worker's scratch folder in what it writes -> this store's folder
            old, new = str(Path(worker_home) / "runs") + os.sep, str(self.store.home / "runs") + os.sep
            args, kwargs = _rewrite(args, old, new), _rewrite(kwargs, old, new)
        return _encode(getattr(self.store, method)(run_id, *args, **kwargs))

    def unpack(self, run_id: int, stream, length: int) -> str:
        """Unpack a run folder's tar stream into the run's folder; returns what it held."""
        if length > self.limit:
            raise ValueError(f"the run folder is {length / 2**20:.0f} MiB, more than OPTLAB_STORE_MAX_UPLOAD_MB "
                             f"({self.limit >> 20} MiB) allows")
        folder = self.store.artifacts_dir(run_id)
        with tempfile.TemporaryFile(dir=folder) as spool:
            left = length
            while left:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    raise ValueError(f"the upload ended {left} bytes early")
                spool.write(chunk)
                left -= len(chunk)
            spool.seek(0)
            with tarfile.open(fileobj=spool, mode="r:*") as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                tar.extractall(folder, members=members, filter="data")   # no absolute paths, no "..", no links out
        size = sum(m.size for m in members)
        return f"{len(members)} file(s), {size / 2**20:.1f} MiB"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_version = "OptLabStore/1"

    def log_message(self, format: str, *args) -> None:   # noqa: A002 (the base class's name)
        pass   # a worker beats every second: the scheduler's log would be nothing else

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/v1/ping":
            self._reply(200, {"service": "optlab store"})
        else:
            self._reply(404, {"error": f"no such path: {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        self._serve(artifacts=False)

    def do_PUT(self) -> None:  # noqa: N802
        self._serve(artifacts=True)

    def _serve(self, artifacts: bool) -> None:
        service: StoreService = self.server.service
        match = _PATH.match(self.path)
        if match is None or artifacts != (match.group(2) == "artifacts"):
            self._reply(404, {"error": f"no such path: {self.command} {self.path}"})
            return
        run_id = int(match.group(1))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not service.allows(run_id, token):
            self._reply(403, {"error": f"this token does not open run #{run_id}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if artifacts:
                self._reply(200, {"result": service.unpack(run_id, self.rfile, length)})
                return
            if length > CALL_MAX_BYTES:
                raise ValueError(f"a call of {length} bytes is more than the {CALL_MAX_BYTES} the service takes")
            body = json.loads(self.rfile.read(length) or b"{}")
            result = service.call(run_id, match.group(3), body.get("args", []), body.get("kwargs", {}),
                                  self.headers.get("X-OptLab-Home"))
            self._reply(200, {"result": result})
        except PermissionError as e:
            self._reply(403, {"error": str(e)})
        except StoreError as e:            # busy, gone, read-only: the worker decides what that means
            self._reply(503, {"error": str(e), "type": type(e).__name__})
        except (ValueError, TypeError, tarfile.TarError) as e:
            self._reply(400, {"error": f"{type(e).__name__}: {e}"})
        except Exception as e:             # the service must outlive one bad call
            self._reply(500, {"error": f"{type(e).__name__}: {e}"})


_SERVICES: dict[Path, StoreService] = {}
_LOCK = threading.Lock()


def shared_service(store: Store, advertise: str) -> StoreService:
    """This process's service for `store` (one per OPTLAB_HOME): a scheduler that stops and
    starts again in this process keeps serving the workers it handed out. OPTLAB_STORE_PORT
    fixes its port (default: any free one), OPTLAB_STORE_BIND the address it listens on."""
    key = store.home.resolve()
    with _LOCK:
        if key not in _SERVICES:
            port = os.environ.get("OPTLAB_STORE_PORT", "0").strip() or "0"
            if not port.isdigit() or int(port) > 65535:
                raise ValueError(f"OPTLAB_STORE_PORT must be a port number (0: any free one), not {port!r}")
            _SERVICES[key] = StoreService(store, os.environ.get("OPTLAB_STORE_BIND", "0.0.0.0"), int(port), advertise)
        return _SERVICES[key]


def close_all() -> None:
    with _LOCK:
        while _SERVICES:
            _SERVICES.popitem()[1].close()


# -- the worker's side ------------------------------------------------------------------------------
class RemoteStore:
    """The Store a worker on another host writes through: one run's calls, sent to the service.
    Its `home` is the node's scratch folder, where the run folder is until it is shipped back."""

    def __init__(self, url: str, token: str, run_id: int, home: str | Path | None = None):
        self.url, self.token, self.run_id = url.rstrip("/"), token, int(run_id)
        self.home = Path(home) if home is not None else optlab_home()

    @property
    def where(self) -> str:
        return f"store service {self.url}, scratch {self.home}"

    def _request(self, path: str, data, content_type: str, method: str = "POST", length: int | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type,
                   "X-OptLab-Home": str(self.home)}
        if length is not None:
            headers["Content-Length"] = str(length)
        deadline = time.monotonic() + RETRY_FOR_S
        pause = 0.25
        while True:
            if hasattr(data, "seek"):
                data.seek(0)
            request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as reply:
                    return json.loads(reply.read())["result"]
            except urllib.error.HTTPError as e:
                try:
                    said = json.loads(e.read()).get("error") or e.reason
                except ValueError:
                    said = e.reason
                if e.code == 400:
                    raise ValueError(f"the store service refused it: {said}") from None
                raise StoreError(f"the store service at {self.url} answered {e.code}: {said}") from None
            except (urllib.error.URLError, OSError) as e:   # not reached (yet): try again for a while
                if time.monotonic() >= deadline:
                    reason = getattr(e, "reason", e)
                    raise StoreError(f"the store service at {self.url} cannot be reached: {reason}") from None
                time.sleep(pause)
                pause = min(4.0, 2 * pause)

    def _call(self, method: str, run_id: int, *args, **kwargs) -> Any:
        if int(run_id) != self.run_id:
            raise StoreError(f"this worker may write run #{self.run_id} only, not #{run_id}")
        body = json.dumps({"args": args, "kwargs": kwargs}).encode()
        return self._request(f"/v1/runs/{self.run_id}/call/{method}", body, "application/json")

    def get(self, run_id: int) -> Run | None:
        found = self._call("get", run_id)
        return Run(**found) if found is not None else None

    def artifacts_dir(self, run_id: int, create: bool = True) -> Path:
        return run_folder(self.home, run_id, create)

    def ship(self) -> str:
        """Send this run's folder to the store (one tar stream); returns what the service unpacked."""
        folder = self.artifacts_dir(self.run_id, create=False)
        with tempfile.TemporaryFile() as tar_file:
            with tarfile.open(fileobj=tar_file, mode="w:gz", compresslevel=1) as tar:
                for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                    tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
            length = tar_file.tell()
            return self._request(f"/v1/runs/{self.run_id}/artifacts", tar_file, "application/x-tar",
                                 method="PUT", length=length)


def _bind_calls() -> None:
    def make(name: str):
        def call(self, run_id: int, *args, **kwargs):
            return self._call(name, run_id, *args, **kwargs)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"Store.{name}, through the store service."
        return call
    for name in WORKER_CALLS:
        if name not in RemoteStore.__dict__:
            setattr(RemoteStore, name, make(name))


_bind_calls()


def worker_store() -> Store | RemoteStore:
    """The store a worker (or a rank) writes: through the service when the scheduler granted one
    (a node on another host), else the store in OPTLAB_HOME."""
    url = os.environ.get(ENV_URL)
    if url:
        return RemoteStore(url, os.environ.get(ENV_TOKEN, ""), int(os.environ.get(ENV_RUN, "0")))
    return Store(create=False)


def main(argv: list[str] | None = None) -> int:
    """`python -m optlab.storeservice ship`: send the granted run's folder back to the store."""
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["ship"] or not os.environ.get(ENV_URL):
        print(f"usage: {ENV_URL}=… {ENV_TOKEN}=… {ENV_RUN}=… python -m optlab.storeservice ship", file=sys.stderr)
        return 2
    store = worker_store()
    try:
        print(f"shipped {store.ship()} to {store.url}")
        return 0
    except (StoreError, ValueError, OSError) as e:
        print(f"run #{store.run_id}: its folder could not be shipped to {store.url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
