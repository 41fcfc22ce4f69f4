"""People in a workshop room: who someone is, and what they may do to a run.

A participant joins with a name and gets a personal secret token (random; only its SHA-256 is
stored, in the store's `people` table). The token, kept in a cookie or in the person's own link,
is what makes someone that person: typing a name proves nothing, and a name already taken is
refused (case-insensitive). The instructor is whoever gives the secret in
OPTLAB_INSTRUCTOR_SECRET, set when the server starts and never put in a link.

`can_act(person, run)` is the one rule the pages and the CLI follow: participants cancel and
delete only their own runs, the instructor every run.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from optlab.store import Run, Store

NAME_MAX = 40
MIN_SECRET = 8           # an instructor secret shorter than this is ignored (and the page says so)
ROLES = ("participant", "instructor")
_NAME = re.compile(r"[^\W_]([\w .'-]*[^\W_])?")   # starts and ends with a letter or digit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS people (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    token_hash TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL DEFAULT 'participant',
    joined_at REAL NOT NULL
)
"""


class JoinError(ValueError):
    """A name that cannot be used (empty, too long, taken); the message says why."""


@dataclass(frozen=True)
class Person:
    name: str
    role: str = "participant"
    joined_at: float | None = None

    @property
    def is_instructor(self) -> bool:
        return self.role == "instructor"


def workshop_mode() -> bool:
    """OPTLAB_WORKSHOP=1 (set by `make workshop`): launching needs a joined person and runs are
    guarded by can_act. Otherwise the app serves one person and the sidebar name is a label."""
    return os.environ.get("OPTLAB_WORKSHOP", "0") == "1"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _table(store: Store) -> None:
    with store.connect() as db:
        db.execute(_SCHEMA)


def clean_name(name: str) -> str:
    """The name as it will be stored: spaces collapsed, 1..NAME_MAX letters, digits, spaces and . ' - _."""
    text = " ".join(str(name or "").split())
    if not text:
        raise JoinError("type a name to join")
    if len(text) > NAME_MAX:
        raise JoinError(f"a name is at most {NAME_MAX} characters")
    if not _NAME.fullmatch(text):
        # names reach pages that render Markdown (progress texts, captions): no markup characters
        raise JoinError("a name holds letters, digits, spaces and . ' - _ only")
    return text


def join(store: Store, name: str, role: str = "participant") -> tuple[Person, str]:
    """Register `name` and return the person with their secret token (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    name = clean_name(name)
    _table(store)
    token = secrets.token_urlsafe(24)
    now = time.time()
    try:
        with store.connect() as db:
            db.execute("INSERT INTO people (name, token_hash, role, joined_at) VALUES (?, ?, ?, ?)",
                       (name, _hash(token), role, now))
    except sqlite3.IntegrityError:
        raise JoinError(f"the name {name!r} is taken in this room: pick another "
                        "(or open your own link to come back as yourself)") from None
    return Person(name, role, now), token


def identify(store: Store, token: str | None) -> Person | None:
    """The person holding `token`, or None."""
    if not isinstance(token, str) or not token or len(token) > 200:
        return None
    _table(store)
    with store.connect() as db:
        row = db.execute("SELECT name, role, joined_at FROM people WHERE token_hash = ?", (_hash(token),)).fetchone()
    return Person(row["name"], row["role"], row["joined_at"]) if row else None


def people(store: Store) -> list[Person]:
    _table(store)
    with store.connect() as db:
        rows = db.execute("SELECT name, role, joined_at FROM people ORDER BY joined_at").fetchall()
    return [Person(r["name"], r["role"], r["joined_at"]) for r in rows]


def instructor_secret() -> str | None:
    """OPTLAB_INSTRUCTOR_SECRET when it is long enough to be a secret; None otherwise."""
    secret = os.environ.get("OPTLAB_INSTRUCTOR_SECRET", "")
    return secret if len(secret) >= MIN_SECRET else None


def is_instructor_secret(given: str | None) -> bool:
    secret = instructor_secret()
    return bool(secret and given) and hmac.compare_digest(secret.encode(), str(given).encode())


def promote(store: Store, person: Person, given_secret: str) -> Person:
    """Make `person` the instructor when `given_secret` is the server's instructor secret."""
    if not is_instructor_secret(given_secret):
        raise JoinError("that is not the instructor secret" if instructor_secret() else
                        f"this server has no instructor: start it with OPTLAB_INSTRUCTOR_SECRET "
                        f"(at least {MIN_SECRET} characters)")
    _table(store)
    with store.connect() as db:
        db.execute("UPDATE people SET role = 'instructor' WHERE name = ?", (person.name,))
    return Person(person.name, "instructor", person.joined_at)


def can_act(person: Person | None, run: Run) -> bool:
    """Whether `person` may cancel or delete `run`: their own runs, or every run for the instructor."""
    if person is None:
        return False
    return person.is_instructor or (bool(run.user) and run.user == person.name)


def refusal(person: Person | None, run: Run) -> str | None:
    """Why `person` may not act on `run` (None when they may)."""
    if can_act(person, run):
        return None
    if person is None:
        return "join the workshop first: only a run's owner or the instructor can cancel or delete it"
    owner = f"{run.user}'s" if run.user else "an unnamed person's"
    return f"run #{run.id} is {owner} run: only its owner or the instructor can cancel or delete it"
