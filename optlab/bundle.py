"""Bundles: finished runs packed into one zip file that another OptLab imports.

    optlab-bundle.json          what the bundle holds and where it was written (host, store folder)
    runs/<id>/run.json          the run: config, device, summary (profile and variants included), status, ...
    runs/<id>/metrics.json      every metric row: per-epoch figures, progress history, telemetry, step
                                times, variants, advice
    runs/<id>/events.json       the run's events
    runs/<id>/traces/<file>     profiler traces (export --traces)
    runs/<id>/model.pt          the trained weights, a state dict of tensors (export --weights)

A bundle comes from someone else's machine, so `import_bundle` trusts none of it. Every member
name is matched against the layout above (so no name can leave the target folder: no absolute
path, no `..`, no links or devices), every size is capped while it is read (not taken from the
zip's own header), every record is JSON checked against its schema (optlab.bundle_schema), and
weights are read only with `torch.load(weights_only=True)`; nothing is unpickled. A bundle that
fails any check is refused with the reason, and nothing of it is imported: its files are staged
in a folder of their own and its rows written in one SQLite transaction, and only when all of
that succeeded are the folders renamed into place and the transaction committed.

Imported runs are new rows marked with their origin (host, store, run id, when imported), so
Compare can show a colleague's runs beside one's own; importing the same runs again finds them
by that origin and adds nothing.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from optlab import bundle_schema as schema
from optlab.store import FINISHED, Run, Store

MANIFEST = "optlab-bundle.json"
MiB = 2**20

# The only member names a bundle may hold; anything else is refused by name.
_RUN_FILE = re.compile(r"runs/([1-9][0-9]{0,11})/(run\.json|metrics\.json|events\.json|model\.pt)")
_TRACE_FILE = re.compile(r"runs/([1-9][0-9]{0,11})/traces/([A-Za-z0-9][A-Za-z0-9_.-]{0,150}\.pt\.trace\.json(?:\.gz)?)")
_RECORDS = ("run.json", "metrics.json", "events.json")


@dataclass(frozen=True)
class Limits:
    """Largest sizes an import accepts, in bytes (after decompression)."""
    record: int = 64 * MiB         # one JSON member (a run, its metrics, its events)
    trace: int = 64 * MiB          # one profiler trace, decompressed
    weights: int = 512 * MiB       # one model.pt
    total: int = 1024 * MiB        # everything in the bundle together
    members: int = 10_000


LIMITS = Limits()


class BundleError(ValueError):
    """A bundle that cannot be written or is refused on import; the message says why."""


@dataclass
class ImportResult:
    imported: list[tuple[int, int]] = field(default_factory=list)   # (id in the bundle, new id here)
    skipped: list[tuple[int, int]] = field(default_factory=list)    # (id in the bundle, run already here)
    origin: dict = field(default_factory=dict)

    def message(self) -> str:
        parts = []
        if self.imported:
            parts.append("imported " + ", ".join(f"#{new} (was #{old})" for old, new in self.imported))
        if self.skipped:
            parts.append("already here " + ", ".join(f"#{here} (was #{old})" for old, here in self.skipped))
        where = f"{self.origin.get('host', '?')}:{self.origin.get('store', '?')}"
        return f"From {where}: " + ("; ".join(parts) or "no runs")


# -- export -------------------------------------------------------------------------------------------
_RUN_FIELDS = ("id", "status", "created_at", "started_at", "finished_at", "user", "sweep_id", "parent_id",
               "label", "config", "device", "summary", "error", "log_tail", "origin")


def run_record(run: Run) -> dict:
    return {k: getattr(run, k) for k in _RUN_FIELDS}


def metric_rows(store: Store, run_id: int) -> list[dict]:
    """Every metric row of a run, every kind, in the order they were written."""
    with store.connect() as db:
        rows = db.execute("SELECT kind, t, step, data FROM metrics WHERE run_id = ? ORDER BY rowid",
                          (int(run_id),)).fetchall()
    return [{"kind": r["kind"], "t": r["t"], "step": r["step"], "data": json.loads(r["data"])} for r in rows]


def _trace_files(store: Store, run: Run) -> list[Path]:
    from optlab.profiling import run_trace_dir, trace_files
    return trace_files(run_trace_dir(store, run))


def export_bundle(store: Store, run_ids: list[int], path: str | Path, *, traces: bool = False,
                  weights: bool = False, limits: Limits = LIMITS) -> dict:
    """Write the finished runs `run_ids` to the zip at `path` (replaced atomically).

    Returns what was written: {"path", "runs", "bytes", "left_out": [reasons]}. Raises
    BundleError for a run that does not exist or has not finished, or a member over the limits
    an import would apply (the bundle would be refused at the other end)."""
    if not run_ids:
        raise BundleError("name at least one run to export")
    runs = []
    for run_id in dict.fromkeys(int(i) for i in run_ids):
        run = store.get(run_id)
        if run is None:
            raise BundleError(f"no run #{run_id} in {store.home}")
        if run.status not in FINISHED:
            raise BundleError(f"run #{run_id} is {run.status}: only finished runs can be exported")
        runs.append(run)
    members: dict[str, bytes] = {}
    left_out: list[str] = []
    for run in runs:
        prefix = f"runs/{run.id}/"
        members[prefix + "run.json"] = _json(run_record(run))
        members[prefix + "metrics.json"] = _json(metric_rows(store, run.id))
        members[prefix + "events.json"] = _json(store.events(run.id))
        if traces:
            files = _trace_files(store, run)
            if not files:
                left_out.append(f"run #{run.id}: no trace files")
            for f in files:
                members[prefix + "traces/" + f.name] = f.read_bytes()
        if weights:
            model = store.artifacts_dir(run.id, create=False) / "model.pt"
            if model.is_file():
                members[prefix + "model.pt"] = model.read_bytes()
            else:
                left_out.append(f"run #{run.id}: no weights (model.pt) in its folder")
    manifest = {"format": "optlab-bundle", "version": 1, "created_at": time.time(),
                "origin": {"host": socket.gethostname(), "store": str(store.home)},
                "runs": [r.id for r in runs], "traces": traces, "weights": weights}
    members = {MANIFEST: _json(manifest), **members}
    for name, data in members.items():
        limit = _limit_for(name, limits)
        if len(data) > limit:
            raise BundleError(f"{name} is {_size(len(data))}, over the {_size(limit)} an import accepts")
    if sum(len(d) for d in members.values()) > limits.total:
        raise BundleError(f"the bundle would hold more than {_size(limits.total)}, which an import refuses; "
                          "export fewer runs or leave out traces and weights")
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                # .pt and .gz are compressed already
                kind = zipfile.ZIP_STORED if name.endswith((".pt", ".gz")) else zipfile.ZIP_DEFLATED
                info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, data, compress_type=kind)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return {"path": str(path), "runs": [r.id for r in runs], "bytes": path.stat().st_size, "left_out": left_out}


def _json(value) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _limit_for(name: str, limits: Limits) -> int:
    if name.endswith("model.pt"):
        return limits.weights
    if "/traces/" in name:
        return limits.trace
    return limits.record


# -- reading and checking a bundle ---------------------------------------------------------------------
@dataclass
class _Run:
    record: dict
    metrics: list[dict]
    events: list[dict]
    files: dict[str, bytes]       # path under the run's folder -> bytes


def _check_name(info: zipfile.ZipInfo) -> str:
    """The member's name if it is a plain file at an allowed place; else BundleError saying why."""
    name = info.filename
    shown = json.dumps(name)[:200]
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise BundleError(f"member {shown} has an absolute path")
    if "\\" in name:
        raise BundleError(f"member {shown} uses backslashes in its path")
    if ".." in name.split("/"):
        raise BundleError(f"member {shown} climbs out of its folder with '..'")
    if "\x00" in name:
        raise BundleError(f"member {shown} has a NUL byte in its name")
    if info.is_dir():
        raise BundleError(f"member {shown} is a folder entry; a bundle holds files only")
    mode = info.external_attr >> 16
    # unix zips record the file type with the mode (some writers leave the type bits out: a plain file)
    if info.create_system == 3 and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise BundleError(f"member {shown} is {kind}; a bundle holds regular files only")
    if info.flag_bits & 0x1:
        raise BundleError(f"member {shown} is encrypted")
    if name != MANIFEST and not _RUN_FILE.fullmatch(name) and not _TRACE_FILE.fullmatch(name):
        raise BundleError(f"member {shown} is not part of a bundle's layout (optlab-bundle.json, "
                          "runs/<id>/run.json|metrics.json|events.json|model.pt, runs/<id>/traces/*.pt.trace.json[.gz])")
    return name


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's bytes, never more than `limit` (the zip's recorded size is not trusted)."""
    if info.file_size > limit:
        raise BundleError(f"member {info.filename} is {_size(info.file_size)}, over the limit of {_size(limit)}")
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
        raise BundleError(f"member {info.filename} is damaged ({e})") from None
    if len(data) > limit:
        raise BundleError(f"member {info.filename} is larger than the limit of {_size(limit)}")
    return data


def _size(n: int) -> str:
    return f"{n / MiB:,.1f} MiB" if n >= MiB else f"{n / 1024:,.1f} KiB"


def _parse_json(name: str, data: bytes):
    if data[:1] == b"\x80":
        raise BundleError(f"{name} is a Python pickle, not JSON: bundles hold JSON only and nothing is unpickled")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{name} is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None


def _check_weights(name: str, data: bytes) -> None:
    """A state dict of tensors, read with weights_only=True (no code can run); else refused."""
    import pickle

    import torch
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise BundleError(f"{name} is not a plain state dict of tensors; refused without running it "
                          f"(torch.load weights_only=True: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise BundleError(f"{name} holds a {type(state).__name__}, not a state dict of named tensors")


def _check_trace(name: str, data: bytes, limit: int) -> None:
    if name.endswith(".gz"):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
                data = f.read(limit + 1)
        except (OSError, EOFError) as e:
            raise BundleError(f"{name} is not a readable gzip file ({e})") from None
        if len(data) > limit:
            raise BundleError(f"{name} decompresses to more than the limit of {_size(limit)}")
    trace = _parse_json(name, data)
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise BundleError(f"{name} is not a profiler trace (a JSON object with a traceEvents list)")


def read_bundle(source: str | Path | bytes, limits: Limits = LIMITS) -> tuple[dict, dict[int, _Run]]:
    """(manifest, runs by their id in the bundle), every member checked; BundleError if any fails."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"not a bundle: {e}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.members:
            raise BundleError(f"the bundle has {len(infos)} members, more than the {limits.members} allowed")
        names = [_check_name(i) for i in infos]
        seen = set()
        for n in names:
            if n in seen:
                raise BundleError(f"member {n} appears twice")
            seen.add(n)
        if MANIFEST not in seen:
            raise BundleError(f"no {MANIFEST}: this zip was not written by `python -m optlab export`")
        total = 0
        data: dict[str, bytes] = {}
        for info in infos:
            data[info.filename] = _read(zf, info, _limit_for(info.filename, limits))
            total += len(data[info.filename])
            if total > limits.total:
                raise BundleError(f"the bundle holds more than {_size(limits.total)}")
    manifest = _parse_json(MANIFEST, data.pop(MANIFEST))
    _checked(lambda: schema.check(manifest, schema.MANIFEST), MANIFEST)
    listed = manifest["runs"]
    if len(set(listed)) != len(listed):
        raise BundleError(f"{MANIFEST} lists a run twice")
    runs: dict[int, _Run] = {}
    for run_id in listed:
        prefix = f"runs/{run_id}/"
        for record in _RECORDS:
            if prefix + record not in data:
                raise BundleError(f"{prefix + record} is missing (the manifest lists run {run_id})")
        record = _parse_json(prefix + "run.json", data[prefix + "run.json"])
        _checked(lambda: schema.check(record, schema.RUN), prefix + "run.json")
        if record["id"] != run_id:
            raise BundleError(f"{prefix}run.json holds run {record['id']}, not {run_id}")
        metrics = _parse_json(prefix + "metrics.json", data[prefix + "metrics.json"])
        events = _parse_json(prefix + "events.json", data[prefix + "events.json"])
        _checked(lambda: schema.check(metrics, schema.ListOf(schema.Obj({}))), prefix + "metrics.json")
        for i, row in enumerate(metrics):
            _checked(lambda: schema.check_metric(row, f"[{i}]"), prefix + "metrics.json")
        _checked(lambda: schema.check(events, schema.ListOf(schema.EVENT)), prefix + "events.json")
        runs[run_id] = _Run(record, metrics, events, {})
    for name, blob in data.items():
        match = _RUN_FILE.fullmatch(name) or _TRACE_FILE.fullmatch(name)
        run_id = int(match.group(1))
        if run_id not in runs:
            raise BundleError(f"member {name} belongs to run {run_id}, which {MANIFEST} does not list")
        if name.endswith("model.pt"):
            _check_weights(name, blob)
            runs[run_id].files["model.pt"] = blob
        elif "/traces/" in name:
            _check_trace(name, blob, limits.trace)
            runs[run_id].files["traces/" + match.group(2)] = blob
    return manifest, runs


def _checked(fn, name: str) -> None:
    try:
        fn()
    except schema.SchemaError as e:
        raise BundleError(f"{name}: {e}") from None


# -- importing ------------------------------------------------------------------------------------------
def origin_of(record: dict, manifest: dict) -> dict:
    """Where a run in a bundle was first measured: its own recorded origin when it had been
    imported before (so passing a bundle on never makes a second copy), else the exporter's."""
    if record.get("origin"):
        o = record["origin"]
        return {k: o[k] for k in ("host", "store", "run_id", "created_at") if k in o}
    return {"host": manifest["origin"]["host"], "store": manifest["origin"]["store"], "run_id": record["id"],
            "created_at": record["created_at"]}


def origin_key(origin: dict) -> str:
    text = json.dumps([origin["host"], origin["store"], origin["run_id"], repr(float(origin["created_at"]))])
    return hashlib.sha256(text.encode()).hexdigest()


def _already_here(db, store: Store, origin: dict, key: str) -> int | None:
    row = db.execute("SELECT id FROM runs WHERE origin_key = ?", (key,)).fetchone()
    if row:
        return int(row["id"])
    if origin["host"] == socket.gethostname() and Path(origin["store"]) == Path(store.home):
        # a bundle brought back to the store that wrote it: the run is here already, as itself
        row = db.execute("SELECT id, created_at FROM runs WHERE id = ?", (origin["run_id"],)).fetchone()
        if row and repr(float(row["created_at"])) == repr(float(origin["created_at"])):
            return int(row["id"])
    return None


def _localise(summary: dict | None, folder: Path, run_id: int, files: dict) -> dict | None:
    """Paths recorded on the other machine point nowhere here: point them at the imported files,
    or drop them."""
    if not summary:
        return summary
    summary = dict(summary)
    summary["weights_path"] = str(folder / "model.pt") if "model.pt" in files else None
    traces = any(name.startswith("traces/") for name in files)
    summary["trace_dir"] = str(folder / "tb" / f"run{run_id}") if traces else None
    for key in ("profile", "profile_inference"):
        if summary.get(key):
            summary[key] = {k: v for k, v in summary[key].items() if k != "trace_file"}
    if summary.get("variants"):
        summary["variants"] = [{**v, "artifact": None} if v.get("artifact") else v for v in summary["variants"]]
    return summary


def import_bundle(store: Store, source: str | Path | bytes, *, name: str | None = None,
                  limits: Limits = LIMITS) -> ImportResult:
    """Import every run of the bundle at `source` (a path or its bytes) that is not here yet.

    All or nothing: BundleError with the reason, and the store unchanged, for a bundle that fails
    any check. `name` is what the origin records as the bundle (default: the file's name)."""
    manifest, runs = read_bundle(source, limits)
    bundle_name = name or (Path(source).name if not isinstance(source, bytes) else "upload")
    result = ImportResult(origin=dict(manifest["origin"]))
    staging = store.home / f".import-{uuid.uuid4().hex[:12]}"
    placed: list[tuple[Path, Path]] = []
    try:
        for run_id, run in runs.items():   # files first, in a folder of their own
            for relative, blob in run.files.items():
                # traces wait in tb/staged/ until the run's id here names their folder
                target = staging / str(run_id) / (f"tb/staged/{relative.split('/', 1)[1]}"
                                                  if relative.startswith("traces/") else relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(blob)
        now = time.time()
        with store.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                new_ids: dict[int, int] = {}
                for run_id in sorted(runs):   # parents before the children that name them
                    run = runs[run_id]
                    origin = origin_of(run.record, manifest)
                    key = origin_key(origin)
                    here = _already_here(db, store, origin, key)
                    if here is not None:
                        new_ids[run_id] = here
                        result.skipped.append((run_id, here))
                        continue
                    new_ids[run_id] = new = _insert(db, run, origin, key, manifest, bundle_name, now, new_ids, store)
                    result.imported.append((run_id, new))
                    source_folder = staging / str(run_id)
                    if source_folder.exists():
                        target = store.artifacts_dir(new, create=False)
                        if target.exists():
                            raise BundleError(f"{target} exists already; move it away and import again")
                        traces = source_folder / "tb" / "staged"
                        if traces.exists():
                            traces.rename(traces.with_name(f"run{new}"))
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source_folder.rename(target)
                        placed.append((target, source_folder))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                for target, back in reversed(placed):   # the folders go back to staging, then away
                    target.rename(back)
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _insert(db, run: _Run, origin: dict, key: str, manifest: dict, bundle_name: str, now: float,
            new_ids: dict[int, int], store: Store) -> int:
    r = run.record
    origin = {**origin, "exported_at": manifest["created_at"], "imported_at": now, "bundle": bundle_name}
    parent = new_ids.get(r["parent_id"]) if r.get("parent_id") is not None else None
    cur = db.execute(
        "INSERT INTO runs (created_at, started_at, finished_at, status, user, sweep_id, parent_id, label, config, "
        "device, error, log_tail, origin, origin_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r["created_at"], r.get("started_at"), r.get("finished_at"), r["status"], r["user"], r.get("sweep_id"),
         parent, r.get("label"), json.dumps(r["config"], sort_keys=True),
         json.dumps(r["device"]) if r.get("device") is not None else None, r.get("error"), r.get("log_tail"),
         json.dumps(origin), key))
    new = int(cur.lastrowid)
    folder = store.artifacts_dir(new, create=False)
    summary = _localise(r.get("summary"), folder, new, run.files)
    db.execute("UPDATE runs SET summary = ? WHERE id = ?", (json.dumps(summary) if summary is not None else None, new))
    rows = []
    for m in run.metrics:
        data = m["data"]
        if m["kind"] == "advice" and data.get("parent_id") is not None:
            # the parent's id here, or none when it stayed behind (its recorded figure is kept)
            data = {**data, "parent_id": new_ids.get(data["parent_id"])}
        rows.append((new, m["kind"], m["t"], m.get("step"), json.dumps(data)))
    db.executemany("INSERT INTO metrics (run_id, kind, t, step, data) VALUES (?, ?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO events (run_id, t, level, message) VALUES (?, ?, ?, ?)",
                   [(new, e["t"], e["level"], e["message"]) for e in run.events])
    db.execute("INSERT INTO events (run_id, t, level, message) VALUES (?, ?, 'info', ?)",
               (new, now, f"imported from {origin['host']}:{origin['store']} run #{origin['run_id']} "
                          f"(bundle {bundle_name})"))
    return new


def import_upload(store: Store, data: bytes, name: str) -> tuple[bool, str]:
    """(imported?, what happened) for a bundle uploaded on a page; a refusal is a message, not an error."""
    try:
        return True, import_bundle(store, data, name=name).message()
    except BundleError as e:
        return False, str(e)
