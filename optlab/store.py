"""The store: SQLite (WAL) under OPTLAB_HOME, the single source of truth.

The UI reads only the store; workers write only the store and their run's artifact folder
(OPTLAB_HOME/runs/<id>/). Every call opens its own short connection and every write is one
short transaction, so threads and processes can share one store; claims are atomic UPDATEs.

A store is created on the first start (an OPTLAB_HOME with no trace of a store) or when a person
asks (`Store(create=True)`, `python -m optlab init`), never by opening it: a database that has
disappeared while its marker file or run folders remain is a StoreMissing error naming the file,
and connections open the file without creating it (SQLite would otherwise make a new, empty one).
Run ids never point into a folder a lost store left behind. A read-only OPTLAB_HOME can be read
(`readonly=True`); writing to it is a StoreReadOnly error.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from optlab.config import ConfigError, RunConfig, text_problem

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    status TEXT NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    sweep_id TEXT,
    repeat_group TEXT,
    repeat_index INTEGER,
    parent_id INTEGER,
    label TEXT,
    config TEXT NOT NULL,
    device TEXT,
    summary TEXT,
    error TEXT,
    progress TEXT,
    log_tail TEXT,
    worker_pid INTEGER,
    heartbeat_at REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    t REAL NOT NULL,
    step INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, kind);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL,
    t REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id);
CREATE TABLE IF NOT EXISTS tunings (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    user TEXT NOT NULL DEFAULT '',
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    note TEXT,
    confirm_ids TEXT
);
"""

_JSON_COLUMNS = ("config", "device", "summary", "progress", "origin")

# Columns added after the first release: (name, declaration). Stores created before them get
# them by ALTER TABLE when opened, so an existing OPTLAB_HOME keeps working.
_ADDED_COLUMNS = (
    ("repeat_group", "TEXT"),      # runs of one config repeated to measure its spread (optlab.repeats)
    ("repeat_index", "INTEGER"),
    ("origin", "TEXT"),            # JSON: where an imported run came from (optlab.bundle); NULL for local runs
    ("origin_key", "TEXT"),        # that origin as one string, so a re-imported run is found, not duplicated
    ("cluster", "TEXT"),           # the Ray cluster a run was handed to (its address); NULL: a process on this machine
)
DATABASE = "optlab.db"
MARKER = "store.json"        # written when the store is created: a store lived here
BUSY_TIMEOUT_S = 30          # how long a call waits for another process's write to end
USER_MAX, LABEL_MAX = 64, 200


class StoreError(RuntimeError):
    """The store cannot be used as asked; the message names the file and what to do."""


class StoreMissing(StoreError):
    """The database is not there (deleted, moved), or there never was one and none may be made."""


class StoreReadOnly(StoreError):
    """A write to a store on a read-only OPTLAB_HOME."""


def run_folder(home: Path, run_id: int, create: bool = True) -> Path:
    """Where a run's artifacts live under an OPTLAB_HOME (a store's, or a Ray node's scratch one)."""
    path = Path(home) / "runs" / str(int(run_id))
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def optlab_home() -> Path:
    return Path(os.environ.get("OPTLAB_HOME", "~/.optlab")).expanduser()


@dataclass
class Run:
    id: int
    status: str
    created_at: float
    config: dict
    user: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    sweep_id: str | None = None
    repeat_group: str | None = None  # runs of the same config repeated to measure its spread
    repeat_index: int | None = None  # 1..n within the group, in submission order
    parent_id: int | None = None
    label: str | None = None
    device: dict | None = None
    summary: dict | None = None
    error: str | None = None
    progress: dict | None = None
    log_tail: str | None = None
    worker_pid: int | None = None
    heartbeat_at: float | None = None
    cancel_requested: int = 0
    origin: dict | None = None
    origin_key: str | None = None
    cluster: str | None = None       # the Ray cluster running it: its worker_pid is a pid on another node
    extra: dict = field(default_factory=dict)

    @property
    def run_config(self) -> RunConfig:
        return RunConfig.from_dict(self.config)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def title(self) -> str:
        c = self.config
        return self.label or f"#{self.id} {c['model']} {c['precision']} bs={c['batch_size']}"


class Store:
    def __init__(self, home: str | Path | None = None, *, create: bool | None = None, readonly: bool = False):
        """Open the store in `home` (default OPTLAB_HOME).

        create: None (default) makes a new store only on the first start, when `home` holds no
        trace of one; True makes one even where a store was lost (a person asked: ids continue
        after the last run folder); False never makes one. readonly: open without writing, for
        commands that only read; they then work on a read-only OPTLAB_HOME.
        """
        self.home = Path(home) if home else optlab_home()
        self.path = self.home / DATABASE
        self.readonly = readonly
        if not self.path.exists():
            self._create(create)
        if not readonly:
            with self.connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                _migrate(db)
            if not (self.home / MARKER).exists():
                self._write_marker()   # a store made before markers existed

    # -- opening ---------------------------------------------------------------------------------------
    def _traces(self) -> list[str]:
        """What shows that a store lived here before: its marker file, its run folders."""
        return [str(p) for p in (self.home / MARKER, self.home / "runs") if p.exists()]

    def _missing(self) -> StoreMissing:
        traces = self._traces()
        if traces:
            return StoreMissing(
                f"the store {self.path} is gone ({' and '.join(traces)} remain{'s' if len(traces) == 1 else ''}): "
                "restore the file from a backup, or start a new, empty store with `python -m optlab init` "
                "(new run ids continue after the last run folder)")
        return StoreMissing(f"there is no store at {self.path}; `python -m optlab init` creates one "
                            "(so does the first run or submit)")

    def _create(self, create: bool | None) -> None:
        if create is False or (create is None and self._traces()) or (self.readonly and not self._writable()):
            raise self._missing()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._uri("rwc"), uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                self._continue_ids(db)
            finally:
                db.close()
            self._write_marker()
        except (OSError, sqlite3.Error) as e:
            if not self._writable():
                raise StoreReadOnly(f"cannot create the store {self.path}: {self._nearest_dir()} is read-only") from None
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise StoreError(f"cannot create the store {self.path}: {reason}") from None

    def _continue_ids(self, db: sqlite3.Connection) -> None:
        """Ids start after the highest run folder, so a new store never writes into a lost one's."""
        top = self._highest_folder_id()
        if top:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'runs'", (top,)).rowcount == 0:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?)", (top,))
            db.execute("COMMIT")

    def _highest_folder_id(self) -> int:
        try:
            return max((int(p.name) for p in (self.home / "runs").iterdir() if p.name.isdigit()), default=0)
        except OSError:
            return 0

    def _write_marker(self) -> None:
        try:
            (self.home / MARKER).write_text(json.dumps({
                "database": DATABASE, "created_at": time.time(),
                "note": "OptLab's store lives here; if the database disappears, OptLab stops instead of "
                        "starting an empty one"}) + "\n")
        except OSError:
            pass   # a read-only home keeps what it has

    def _writable(self) -> bool:
        return os.access(self._nearest_dir(), os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))

    def _nearest_dir(self) -> Path:
        path = self.home
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    def _uri(self, mode: str) -> str:
        path = urllib.parse.quote(os.path.abspath(self.path))
        return f"file:{path}?mode=ro&immutable=1" if mode == "immutable" else f"file:{path}?mode={mode}"

    def _open(self) -> sqlite3.Connection:
        # Never mode=rwc here: opening must not create an empty database where one vanished.
        # A WAL database on a read-only file system opens only as immutable (no -shm can be made).
        modes = ("ro", "immutable") if self.readonly else ("rw",)
        for mode in modes:
            db = None
            try:
                db = sqlite3.connect(self._uri(mode), uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
                db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                return db
            except sqlite3.Error as e:
                if db is not None:
                    db.close()
                if mode == modes[-1] or getattr(e, "sqlite_errorname", "") != "SQLITE_CANTOPEN":
                    raise self._explain(e) from None
        raise AssertionError("unreachable")

    def _explain(self, e: sqlite3.Error) -> Exception:
        """A StoreError a person can act on, for the SQLite errors that have a cause outside OptLab."""
        name = getattr(e, "sqlite_errorname", "") or ""
        if not self.path.exists():
            return self._missing()
        if name.startswith("SQLITE_READONLY") or (name.startswith("SQLITE_CANTOPEN") and not self._writable()):
            return StoreReadOnly(f"the store {self.path} is read-only ({self._nearest_dir()} cannot be written): "
                                 "list, show and status work; to run, queue or cancel, use a writable OPTLAB_HOME")
        if name.startswith("SQLITE_FULL"):
            return StoreError(f"no space left on the disk of {self.home}: the store {self.path} cannot grow; "
                              "free some space (old runs' folders under runs/ hold the weights and traces)")
        if name.startswith("SQLITE_BUSY"):
            return StoreError(f"the store {self.path} stayed locked for {BUSY_TIMEOUT_S} s by another process "
                              "(a stopped or hung OptLab process?); try again")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return StoreError(f"the store {self.path} is damaged ({e}); restore it from a backup")
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR")):
            return StoreError(f"cannot open the store {self.path}: {e}")
        return e

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = self._open()
        db.row_factory = sqlite3.Row
        if not self.readonly:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield db
        except sqlite3.Error as e:
            if db.in_transaction:
                db.rollback()
            error = self._explain(e)
            if error is e:
                raise
            raise error from None
        finally:
            db.close()

    def write_locked(self, timeout_s: float = 1.0) -> bool:
        """Whether another process holds the store's write lock: no write can start within `timeout_s`."""
        db = sqlite3.connect(self._uri("rw"), uri=True, timeout=timeout_s, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return False
        except sqlite3.Error as e:
            if getattr(e, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                return True
            raise self._explain(e) from None
        finally:
            db.close()

    # -- runs ------------------------------------------------------------------------------------
    def submit(self, config: RunConfig, *, user: str = "", sweep_id: str | None = None,
               parent_id: int | None = None, label: str | None = None, status: str = "queued",
               worker_pid: int | None = None, repeat_group: str | None = None,
               repeat_index: int | None = None) -> int:
        """Queue a run (or record one that starts now, status='running', in process `worker_pid`).
        The config, the name and the label are checked first (ConfigError); the new id never
        names a run folder that already exists. A config with repeats > 1 is queued as a group by
        optlab.repeats.submit."""
        config.validate()
        if status == "queued":   # the room's limits (optlab.fairuse): raises Refused with the reason
            from optlab.fairuse import admit
            admit(self, config, user)
        check_name("name", user or "", USER_MAX)
        if label is not None:
            check_name("label", label, LABEL_MAX)
        now = time.time()
        row = (now, status, user or "", sweep_id, parent_id, label, config.to_json(), worker_pid,
               now if status == "running" else None, now if worker_pid else None, repeat_group, repeat_index)
        insert = ("INSERT INTO runs (created_at, status, user, sweep_id, parent_id, label, config, worker_pid, "
                  "started_at, heartbeat_at, repeat_group, repeat_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            run_id = int(db.execute(insert, row).lastrowid)
            if self.artifacts_dir(run_id, create=False).exists():
                # A folder left by a store that was lost: move the ids past every folder.
                db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'runs'",
                           (self._highest_folder_id(),))
                run_id = int(db.execute(insert, row).lastrowid)
            db.execute("COMMIT")
        return run_id

    def get(self, run_id: int) -> Run | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return _to_run(row) if row else None

    def list(self, *, status: str | tuple[str, ...] | None = None, user: str | None = None,
             sweep_id: str | None = None, ids: list[int] | None = None, limit: int | None = None,
             newest_first: bool = True, repeat_group: str | None = None,
             parent_id: int | None = None) -> list[Run]:
        where, args = [], []
        if status:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if sweep_id is not None:
            where.append("sweep_id = ?")
            args.append(sweep_id)
        if repeat_group is not None:
            where.append("repeat_group = ?")
            args.append(repeat_group)
        if parent_id is not None:
            where.append("parent_id = ?")
            args.append(int(parent_id))
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args += [int(i) for i in ids]
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY id " + ("DESC" if newest_first else "ASC")
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self.connect() as db:
            return [_to_run(r) for r in db.execute(sql, args).fetchall()]

    def update(self, run_id: int, **fields: Any) -> None:
        if not fields:
            return
        bad = set(fields) - set(Run.__dataclass_fields__) - {"extra"}
        if bad or "id" in fields:
            raise ValueError(f"cannot update {sorted(bad | ({'id'} & set(fields)))}")
        values = [json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.connect() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values, int(run_id)))

    def claim(self, run_id: int, worker_pid: int | None = None) -> bool:
        """queued -> running, atomically: True for exactly one caller."""
        with self.connect() as db:
            cur = db.execute("UPDATE runs SET status = 'running', started_at = ?, worker_pid = ?, "
                             "heartbeat_at = ? WHERE id = ? AND status = 'queued'",
                             (time.time(), worker_pid, time.time(), int(run_id)))
            return cur.rowcount == 1

    def finish(self, run_id: int, status: str, *, summary: dict | None = None, error: str | None = None) -> None:
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a finished status: {FINISHED}")
        fields = {"status": status, "finished_at": time.time(), "error": error}
        if summary is not None:
            fields["summary"] = summary
        self.update(run_id, **fields)

    # -- the queue (used by optlab.scheduler and optlab.worker) ----------------------------------
    def fair_queue(self) -> list[Run]:
        """Queued runs in the order the scheduler hands them out: FIFO within a submitter,
        round-robin across submitters. Each round, submitters with fewer runs in flight go
        first, then the one served longest ago (never served first), then the oldest run."""
        with self.connect() as db:
            db.execute("BEGIN")  # one snapshot for both reads
            queued = [_to_run(r) for r in db.execute("SELECT * FROM runs WHERE status = 'queued' ORDER BY id")]
            stats = {r["user"]: (r["running"], r["last_start"] or 0.0) for r in db.execute(
                "SELECT user, SUM(status = 'running') AS running, MAX(started_at) AS last_start "
                "FROM runs WHERE started_at IS NOT NULL GROUP BY user")}
            db.execute("COMMIT")
        rank: dict[str, int] = {}
        first: dict[str, int] = {}
        keyed = []
        for run in queued:
            rank[run.user] = rank.get(run.user, -1) + 1
            first.setdefault(run.user, run.id)
            keyed.append((rank[run.user], run))
        turn = {u: stats.get(u, (0, 0.0)) + (first[u],) for u in first}
        return [run for _, run in sorted(keyed, key=lambda kr: (kr[0], turn[kr[1].user]))]

    def next_queued_fair(self) -> Run | None:
        queue = self.fair_queue()
        return queue[0] if queue else None

    def request_cancel(self, run_id: int) -> str | None:
        """Cancel atomically: a queued run becomes cancelled at once; a running run gets
        cancel_requested (its worker and the scheduler stop it). Returns the run's status after
        the call ('cancelled', 'running', or the finished status it already had); None if missing."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if row is None:
                db.execute("ROLLBACK")
                return None
            status = row["status"]
            if status == "queued":
                db.execute("UPDATE runs SET status = 'cancelled', cancel_requested = 1, finished_at = ?, "
                           "error = 'cancelled before it started' WHERE id = ?", (time.time(), int(run_id)))
                status = "cancelled"
            elif status == "running":
                db.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (int(run_id),))
            db.execute("COMMIT")
            return status

    def attach_worker(self, run_id: int, pid: int) -> bool:
        """A worker takes a claimed run: True only if it is running and not held by another pid."""
        with self.connect() as db:
            cur = db.execute("UPDATE runs SET worker_pid = ?, heartbeat_at = ? WHERE id = ? AND status = 'running' "
                             "AND (worker_pid IS NULL OR worker_pid = ?)", (pid, time.time(), int(run_id), pid))
            return cur.rowcount == 1

    def heartbeat(self, run_id: int, progress: dict | None = None, log_tail: str | None = None) -> bool:
        """Record that the worker is alive (and its latest progress / log lines).
        Returns True when a cancel was requested."""
        with self.connect() as db:
            db.execute("UPDATE runs SET heartbeat_at = ?, progress = COALESCE(?, progress), "
                       "log_tail = COALESCE(?, log_tail) WHERE id = ?",
                       (time.time(), json.dumps(progress) if progress is not None else None, log_tail, int(run_id)))
            row = db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        return bool(row and row["cancel_requested"])

    def finish_if_running(self, run_id: int, status: str, *, error: str | None = None, **fields: Any) -> bool:
        """running -> `status` only if the run is still running (a worker that finished its run
        itself keeps its own outcome). True if this call changed it."""
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a finished status: {FINISHED}")
        fields = {"status": status, "finished_at": time.time(), "error": error, **fields}
        values = [json.dumps(v) if k in _JSON_COLUMNS and v is not None else v for k, v in fields.items()]
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.connect() as db:
            cur = db.execute(f"UPDATE runs SET {sets} WHERE id = ? AND status = 'running'", (*values, int(run_id)))
            return cur.rowcount == 1

    def delete(self, run_id: int) -> None:
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            for table, column in (("metrics", "run_id"), ("events", "run_id"), ("runs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (int(run_id),))
            db.execute("COMMIT")
        shutil.rmtree(self.artifacts_dir(run_id, create=False), ignore_errors=True)

    @property
    def where(self) -> str:
        return f"store {self.home}"

    def artifacts_dir(self, run_id: int, create: bool = True) -> Path:
        return run_folder(self.home, run_id, create)

    # -- metrics and events ------------------------------------------------------------------------
    def add_metric(self, run_id: int, kind: str, data: dict, step: int | None = None) -> None:
        self.add_metrics(run_id, kind, [data], [step])

    def add_metrics(self, run_id: int, kind: str, rows: list[dict], steps: list[int | None] | None = None) -> None:
        now = time.time()
        steps = steps or [None] * len(rows)
        with self.connect() as db:
            db.executemany("INSERT INTO metrics (run_id, kind, t, step, data) VALUES (?, ?, ?, ?, ?)",
                           [(int(run_id), kind, row.get("t", now), s, json.dumps(row)) for row, s in zip(rows, steps)])

    def metrics(self, run_id: int, kind: str) -> list[dict]:
        with self.connect() as db:
            rows = db.execute("SELECT data FROM metrics WHERE run_id = ? AND kind = ? ORDER BY rowid",
                              (int(run_id), kind)).fetchall()
        return [json.loads(r["data"]) for r in rows]

    def add_event(self, run_id: int, message: str, level: str = "info") -> None:
        with self.connect() as db:
            db.execute("INSERT INTO events (run_id, t, level, message) VALUES (?, ?, ?, ?)",
                       (int(run_id), time.time(), level, message))

    def events(self, run_id: int) -> list[dict]:
        with self.connect() as db:
            rows = db.execute("SELECT t, level, message FROM events WHERE run_id = ? ORDER BY rowid",
                              (int(run_id),)).fetchall()
        return [dict(r) for r in rows]


def _migrate(db: sqlite3.Connection) -> None:
    have = {row["name"] for row in db.execute("PRAGMA table_info(runs)")}
    for name, declaration in _ADDED_COLUMNS:
        if name not in have:
            try:
                db.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")
            except sqlite3.OperationalError as e:   # another process added it between our look and now
                if "duplicate column" not in str(e):
                    raise
    db.execute("CREATE INDEX IF NOT EXISTS runs_origin_key ON runs(origin_key)")


def check_name(what: str, text: str, limit: int) -> None:
    """A submitter's name or a run's label: plain text of at most `limit` characters."""
    if not isinstance(text, str):
        raise ConfigError(f"the {what} must be text, not {type(text).__name__}")
    problem = text_problem(text, limit)
    if problem:
        raise ConfigError(f"the {what} {problem}")


def _to_run(row: sqlite3.Row) -> Run:
    d = dict(row)
    for k in _JSON_COLUMNS:
        if d.get(k) is not None:
            d[k] = json.loads(d[k])
    # a column this code does not know (a newer store) goes to `extra` instead of failing
    known = Run.__dataclass_fields__
    extra = {k: d.pop(k) for k in list(d) if k not in known}
    return Run(**d, extra=extra)
