"""SQLite files: connections with the project's pragmas, numbered migrations, and one writer each.

Every write to a database goes through its `Writer`: one thread that owns the only write
connection of this process, takes whatever writes are waiting, runs them in one `BEGIN IMMEDIATE`
transaction (each inside its own savepoint, so one failing write does not undo the others) and
commits once. That is group commit: under load a single fsync-free commit carries hundreds of
writes, and callers never contend for the lock. Reads use a per-thread connection; WAL lets them
run beside the writer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

log = logging.getLogger("flowfuse.db")
T = TypeVar("T")


def connect(path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (released by the OS if the holder dies)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(path: Path, migrations: sqlite_utils.Migrations) -> list[str]:
    """Apply pending migrations under a file lock; returns the names applied."""
    with file_lock(path.with_name(path.name + ".migrate.lock")):
        conn = connect(path)
        try:
            db = sqlite_utils.Database(conn)
            pending = [m.name for m in migrations.pending(db)]
            migrations.apply(db)
            return pending
        finally:
            conn.close()


def pending_migrations(path: Path, migrations: sqlite_utils.Migrations) -> list[str]:
    if not path.exists():
        return [m.name for m in migrations._migrations]
    conn = connect(path)
    try:
        return [m.name for m in migrations.pending(sqlite_utils.Database(conn))]
    finally:
        conn.close()


class _Job:
    __slots__ = ("fn", "future", "loop", "result", "error")

    def __init__(self, fn, future, loop):
        self.fn, self.future, self.loop = fn, future, loop
        self.result = self.error = None


class Writer:
    """The one writer of a database in this process (see the module docstring)."""

    def __init__(self, path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000, max_batch: int = 512):
        self.path = path
        self._conn = connect(path, synchronous, busy_timeout_ms)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._thread = threading.Thread(target=self._loop, name=f"writer:{path.name}", daemon=True)
        self._thread.start()
        self.commits = 0
        self.writes = 0

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Job(fn, future, None))
        return future

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in the next group transaction and wait for the commit (threads)."""
        return self.submit(fn).result()

    async def awrite(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Like `write`, for coroutines: the event loop is not blocked while waiting."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(fn, future, loop))
        return await future

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)
        self._conn.close()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in batch:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.fn(conn)
                    conn.execute("RELEASE job")
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    job.error = exc
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(batch)
        except Exception as exc:  # the transaction itself failed (disk full, I/O error)
            log.exception("write transaction on %s failed", self.path.name)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in batch:
                job.error, job.result = exc, None
        by_loop: dict[Any, list[_Job]] = {}
        for job in batch:
            if job.loop is None:
                if job.error is not None:
                    job.future.set_exception(job.error)
                else:
                    job.future.set_result(job.result)
            else:
                by_loop.setdefault(job.loop, []).append(job)
        for loop, jobs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, jobs)
            except RuntimeError:
                pass  # that loop has closed; nobody is waiting any more


def _settle(jobs: list[_Job]) -> None:
    for job in jobs:
        if job.future.done():
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)


class Database:
    """One SQLite file: its writer and per-thread read connections."""

    def __init__(self, path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000, max_batch: int = 512):
        self.path = path
        self._opts = (synchronous, busy_timeout_ms)
        self._local = threading.local()
        self._writer: Writer | None = None
        self._max_batch = max_batch
        self._lock = threading.Lock()

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = Writer(self.path, *self._opts, max_batch=self._max_batch)
        return self._writer

    def read(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, *self._opts)
            self._local.conn = conn
        return conn

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        return self.read().execute(sql, params).fetchall()

    def one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        return self.read().execute(sql, params).fetchone()

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self.writer.write(fn)

    async def awrite(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self.writer.awrite(fn)

    def execute(self, sql: str, params: Any = ()) -> int:
        """One write statement through the writer; returns the number of rows changed."""
        return self.write(lambda c: c.execute(sql, params).rowcount)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
