"""The tamper-evident audit log in audit.db: who changed what, when, from where.

Every entry carries the SHA-256 of its own columns and, in `prev_hash`, the hash of the entry
before it, so each entry vouches for the whole log up to it. Editing, removing, inserting or
reordering entries breaks the chain at that point and `verify` names the first entry affected.
Removing the *last* entries would leave a shorter chain that is still whole, so after every commit
the newest (seq, hash) is also written to `audit.head` beside the database; `verify` compares the
tail of the log with it.

What this cannot catch: someone who can write to the data directory can recompute every hash and
rewrite `audit.head` too. Shipping `audit.head` (or `flowfuse audit export`) elsewhere from time to
time is what pins the log down against that.

Entries are appended through the database's `Writer`: the write function reads the last entry and
inserts the next one inside the same `BEGIN IMMEDIATE` transaction, so the web process and the
worker appending at the same moment still form one chain.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import itertools
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import schema
from .db import Database, file_lock, migrate

#: The `prev_hash` of entry 1.
GENESIS = "0" * 64
#: The columns of `entries` in table order; the hash covers all but the last.
COLUMNS = ("seq", "at", "tenant_id", "actor_type", "actor_id", "actor_label", "action", "target_type",
           "target_id", "ip", "user_agent", "outcome", "details", "prev_hash", "hash")
HASHED = COLUMNS[:-1]
ACTOR_TYPES = ("user", "api_key", "system", "anonymous")
OUTCOMES = ("ok", "refused", "failed")
ACTION = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
#: Details keys that may carry a secret, matched as parts of the lower-cased key (see `scrub`).
SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "value", "code", "authorization", "cookie")
INSERT = f"INSERT INTO entries ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def scrub(details: Any) -> Any:
    """`details` without any key, at any depth, whose name contains one of SECRET_WORDS.

    Callers must not put secrets in details at all; this is defence in depth for the day one slips
    through (a whole form or request body passed by mistake). It errs on the side of dropping:
    `status_code` and `api_key_id` go too, so name such details differently or use `target_id`.
    """
    if isinstance(details, dict):
        return {k: scrub(v) for k, v in details.items()
                if not any(word in str(k).lower() for word in SECRET_WORDS)}
    if isinstance(details, (list, tuple)):
        return [scrub(v) for v in details]
    return details


def entry(action: str, *, actor_type: str = "system", actor_id: str | None = None, actor_label: str | None = None,
          tenant_id: str | None = None, target_type: str | None = None, target_id: str | None = None,
          ip: str | None = None, user_agent: str | None = None, outcome: str = "ok",
          details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The columns of a new entry that its author decides; `seq`, `at` and the hashes are set when it
    is appended. `actor_label` is an email or a key's name, never a secret; `details` are scrubbed."""
    if not ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} must be dotted lower-case words, e.g. 'flow.update'")
    if actor_type not in ACTOR_TYPES:
        raise ValueError(f"audit actor_type {actor_type!r} must be one of {', '.join(ACTOR_TYPES)}")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r} must be one of {', '.join(OUTCOMES)}")
    if details is not None and not isinstance(details, dict):
        raise ValueError(f"audit details must be a dict, not {type(details).__name__}")
    # default=str: an odd value (a datetime, say) is recorded as text rather than losing the entry.
    encoded = json.dumps(scrub(details or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                         default=str)
    return {"tenant_id": tenant_id, "actor_type": actor_type, "actor_id": actor_id, "actor_label": actor_label,
            "action": action, "target_type": target_type, "target_id": target_id, "ip": ip,
            "user_agent": user_agent, "outcome": outcome, "details": encoded}


def canonical(row: Any) -> str:
    """The text an entry's hash is taken of: every column but `hash`, as compact JSON with sorted keys."""
    return json.dumps({c: row[c] for c in HASHED}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(row: Any) -> str:
    return hashlib.sha256(canonical(row).encode()).hexdigest()


def _appender(fields: dict[str, Any]) -> Callable[[sqlite3.Connection], tuple[int, str]]:
    """The write function that appends `fields` as the next entry, inside the writer's transaction.

    `at` is the append time, but never earlier than the entry before: time order and chain order
    then agree, which lets a time range be looked up as a range of seq.
    """
    def append(conn: sqlite3.Connection) -> tuple[int, str]:
        last = conn.execute("SELECT seq, at, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        now = time.time()
        if last is None:
            row = {**fields, "seq": 1, "at": now, "prev_hash": GENESIS}
        else:
            row = {**fields, "seq": last["seq"] + 1, "at": max(now, last["at"]), "prev_hash": last["hash"]}
        row["hash"] = entry_hash(row)
        conn.execute(INSERT, [row[c] for c in COLUMNS])
        return row["seq"], row["hash"]
    return append


@dataclass
class VerifyResult:
    """What `verify` found. `entries`: how many entries, from the first, are known to be sound;
    `first_bad_seq`: the first entry that was tampered with (None if the log is intact, or if the
    problem is with audit.head itself); `problem`: what is wrong, in words."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


def _span(first: int, last: int) -> str:
    return f"entry {first} was" if first == last else f"entries {first} to {last} were"


class AuditLog:
    """audit.db: append (`record`, `arecord`), check (`verify`), read (`query`, `export`)."""

    def __init__(self, path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000):
        migrate(path, schema.audit)
        self.path = path
        self.head_path = path.with_suffix(".head")
        self._fsync = synchronous.upper() == "FULL"
        self.db = Database(path, synchronous, busy_timeout_ms)
        #: (seq, hash) of the last entry `verify_since_last` found sound, and when it walked the whole log.
        self._verified: tuple[tuple[int, str], float] | None = None
        self._verified_lock = threading.Lock()

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.db.use_loop(loop)

    def close(self) -> None:
        self.db.close()

    # -- appending ---------------------------------------------------------------------------------
    def record(self, action: str, **fields: Any) -> int:
        """Append an entry (arguments as for `entry`) and wait for its commit; returns its seq."""
        seq, digest = self.db.write(_appender(entry(action, **fields)))
        self._anchor(seq, digest)
        return seq

    async def arecord(self, action: str, **fields: Any) -> int:
        """`record` for coroutines: entries appended at the same moment share one commit."""
        seq, digest = await self.db.awrite(_appender(entry(action, **fields)))
        self._anchor(seq, digest)
        return seq

    def _anchor(self, seq: int, digest: str) -> None:
        """Move audit.head forward to a committed entry (atomically: temp file, then rename).

        Appenders in several threads and processes finish in any order, so under a lock the head
        only ever moves forward: it is the newest entry known to be committed.
        """
        with file_lock(self.head_path.with_name(self.head_path.name + ".lock")):
            current, _ = self._read_head()
            if current is not None and current[0] >= seq:
                return
            temp = self.head_path.with_name(self.head_path.name + ".tmp")
            with open(temp, "w") as handle:
                handle.write(json.dumps({"seq": seq, "hash": digest}) + "\n")
                if self._fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temp, self.head_path)

    def _read_head(self) -> tuple[tuple[int, str] | None, str | None]:
        """(seq, hash) from audit.head, or None if there is none; second, why it is unreadable."""
        try:
            head = json.loads(self.head_path.read_text())
            seq, digest = head["seq"], head["hash"]
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if not isinstance(seq, int) or seq < 1 or not isinstance(digest, str) or len(digest) != 64:
            return None, f"it holds {head!r}, not the seq and hash of an entry"
        return (seq, digest), None

    # -- checking ----------------------------------------------------------------------------------
    def verify(self, start: tuple[int, str] | None = None) -> VerifyResult:
        """Walk the log in seq order and report the first entry that was edited, removed, inserted or
        reordered; then compare its end with audit.head to catch entries removed from the end.

        `start` = (seq, hash) of an entry already verified: walk only the entries after it (see
        `verify_since_last`)."""
        # The head first: it is written after each commit, so the snapshot read next reaches at least as far.
        head, unreadable = self._read_head()
        conn = self.db.read()
        last_seq, last_hash = start or (0, GENESIS)
        hash_at_head = last_hash if head is not None and head[0] == last_seq else None
        for row in conn.execute(f"SELECT {', '.join(COLUMNS)} FROM entries WHERE seq > ? ORDER BY seq", (last_seq,)):
            found = self._check(conn, row, last_seq, last_hash)
            if found is not None:
                bad_seq, problem = found
                return VerifyResult(False, max(bad_seq - 1, 0), bad_seq, problem)
            last_seq, last_hash = row["seq"], row["hash"]
            if head is not None and last_seq == head[0]:
                hash_at_head = last_hash
        where = f"audit.head ({self.head_path})"
        if unreadable:
            return VerifyResult(False, last_seq, None, f"{where} is unreadable ({unreadable}), so entries removed "
                                "from the end of the log would go unnoticed; restore it from a backup")
        if head is None:
            if last_seq == 0:
                return VerifyResult(True, 0)
            return VerifyResult(False, last_seq, None, f"{where} is missing, so entries removed from the end of "
                                "the log would go unnoticed; restore it from a backup")
        if head[0] > last_seq:
            return VerifyResult(False, last_seq, last_seq + 1, f"{_span(last_seq + 1, head[0])} removed from the "
                                f"end of the log (audit.head records entry {head[0]} as written)")
        if hash_at_head != head[1]:
            return VerifyResult(False, 0, head[0], f"entry {head[0]} is not the entry audit.head recorded: "
                                f"the log was rewritten up to entry {head[0]}, hashes and all")
        return VerifyResult(True, last_seq)

    def verify_since_last(self) -> tuple[VerifyResult, float]:
        """For pages: the whole log walked once per process, then only the entries added since (and
        audit.head), so a page view does not hash a log of millions of entries. Returns the result and
        when the whole log was last walked; a change to entries already walked shows at the next full
        walk (`flowfuse audit verify`, or a restart)."""
        with self._verified_lock:
            start, walked = self._verified or (None, time.time())
            found = self.verify(start)
            if not found.ok:
                self._verified = None
                return found, time.time()
            row = self.db.read().execute("SELECT seq, hash FROM entries WHERE seq=?", (found.entries,)).fetchone()
            self._verified = ((row["seq"], row["hash"]), walked) if row else None
            return found, walked

    def _check(self, conn: sqlite3.Connection, row: sqlite3.Row, last_seq: int,
               last_hash: str) -> tuple[int, str] | None:
        """(first bad seq, problem) if `row` does not follow the entry (last_seq, last_hash)."""
        seq, expected = row["seq"], last_seq + 1
        if seq < expected:  # only seq 0 or below can come first in seq order
            return seq, f"entry {seq} was inserted: entries are numbered from 1"
        if seq > expected:
            start = "the start of the log" if last_seq == 0 else f"entry {last_seq}"
            return expected, f"{_span(expected, seq - 1)} removed (the log jumps from {start} to entry {seq})"
        if entry_hash(row) != row["hash"]:
            original = self._written_as(conn, row)
            if original is None:
                return seq, f"entry {seq} was changed after it was written (its hash does not match its content)"
            if original < seq:
                return original, (f"{_span(original, seq - 1)} inserted (the entry now numbered {seq} "
                                  f"was written as entry {original})")
            return seq, (f"entry {seq} holds what was written as entry {original}: entries were reordered, "
                         "or removed and the later ones renumbered")
        if row["prev_hash"] != last_hash:
            before = "start the log" if seq == 1 else f"follow entry {last_seq}"
            return seq, (f"entry {seq} does not {before} (its prev_hash does not match): it was inserted, "
                         f"or the entry before it was replaced")
        return None

    @staticmethod
    def _written_as(conn: sqlite3.Connection, row: sqlite3.Row) -> int | None:
        """The seq this row's content was hashed with, if an entry was moved rather than edited.

        The hash covers `seq`, so every seq the log has had is tried (only after a mismatch: a
        million tries take about a second). The canonical text is built once, with the number swapped
        in: `"seq":-1` occurs nowhere else in it (quotes inside values are escaped).
        """
        before, after = canonical({**dict(row), "seq": -1}).split('"seq":-1', 1)
        top = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
        for seq in range(1, top + 2):
            text = f'{before}"seq":{seq}{after}'
            if seq != row["seq"] and hashlib.sha256(text.encode()).hexdigest() == row["hash"]:
                return seq
        return None

    # -- reading -----------------------------------------------------------------------------------
    def _seq_at(self, when: float) -> int | None:
        """The first seq appended at or after `when` (times never decrease along the chain)."""
        row = self.db.one("SELECT seq FROM entries WHERE at >= ? ORDER BY at, seq LIMIT 1", (when,))
        return row["seq"] if row else None

    def _actions_under(self, prefix: str) -> list[str]:
        """The distinct actions starting with `prefix`, hopping along the action index: one lookup
        per action, however many entries each has."""
        found: list[str] = []
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        while row := self.db.one("SELECT action FROM entries WHERE action > ? AND action < ? ORDER BY action LIMIT 1",
                                 (found[-1] if found else prefix, end)):
            found.append(row["action"])
        return found

    def _select(self, order: str, tenant_id: str | None = None, actor: str | None = None,
                action: str | None = None, target: str | None = None, since: float | None = None,
                until: float | None = None, before_seq: int | None = None) -> tuple[str, list[Any]] | None:
        """The SELECT of matching entries in seq order, and its parameters; None if nothing can match.

        A filter with several values (actor: an id or a label; 'flow.': each flow action) becomes one
        branch per value, each read from its index in seq order and merged by SQLite (MERGE (UNION)):
        a page then reads about `limit` rows per branch instead of sorting every match.
        """
        common: list[str] = []
        params: list[Any] = []
        for condition, value in (("tenant_id = ?", tenant_id), ("target_id = ?", target)):
            if value is not None:
                common.append(condition)
                params.append(value)
        if since is not None:
            first = self._seq_at(since)
            if first is None:
                return None
            common.append("seq >= ?")
            params.append(first)
        if until is not None and (end := self._seq_at(until)) is not None:
            before_seq = end if before_seq is None else min(before_seq, end)
        if before_seq is not None:
            common.append("seq < ?")
            params.append(before_seq)
        choices: list[list[tuple[str, str]]] = []
        if actor is not None:
            choices.append([("actor_id = ?", actor), ("actor_label = ?", actor)])
        if action is not None:
            actions = self._actions_under(action) if action.endswith(".") else [action]
            if not actions:
                return None
            choices.append([("action = ?", a) for a in actions])
        selects: list[str] = []
        values: list[Any] = []
        for branch in itertools.product(*choices):
            where = [condition for condition, _ in branch] + common
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            selects.append(f"SELECT {', '.join(COLUMNS)} FROM entries{clause}")
            values += [value for _, value in branch] + params
        return " UNION ".join(selects) + f" ORDER BY seq {order}", values

    def query(self, tenant_id: str | None = None, actor: str | None = None, action: str | None = None,
              target: str | None = None, since: float | None = None, until: float | None = None,
              before_seq: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Entries newest first. `actor` matches actor_id or actor_label; `action` ending in '.' is a
        prefix; `since` is inclusive and `until` exclusive (epoch seconds); the next page is
        `before_seq=<the last seq of this one>`."""
        found = self._select("DESC", tenant_id, actor, action, target, since, until, before_seq)
        if found is None:
            return []
        sql, params = found
        return [_as_dict(r) for r in self.db.query(sql + " LIMIT ?", [*params, limit])]

    def export(self, out: TextIO, fmt: str = "jsonl", since: float | None = None,
               tenant_id: str | None = None) -> int:
        """Write entries oldest first, as they are read (the log may not fit in memory); returns how many.

        jsonl: one object per line, `details` decoded. csv: a header row, then the columns as stored
        (`details` as its JSON text, an empty field for NULL). Either way `hash` can be recomputed
        from what is written (see `canonical`), so an auditor can check an export without FlowFuse.
        """
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"export format {fmt!r} must be jsonl or csv")
        found = self._select("ASC", tenant_id=tenant_id, since=since)
        rows: Any = [] if found is None else self.db.read().execute(*found)
        count = 0
        if fmt == "csv":
            writer = csv.writer(out)
            writer.writerow(COLUMNS)
            for count, row in enumerate(rows, 1):
                writer.writerow(tuple(row))
        else:
            for count, row in enumerate(rows, 1):
                out.write(json.dumps(_as_dict(row), ensure_ascii=False) + "\n")
        return count


def _as_dict(row: sqlite3.Row) -> dict[str, Any]:
    found = dict(row)
    found["details"] = json.loads(found["details"])
    return found
