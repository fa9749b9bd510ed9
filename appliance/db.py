"""SQLite files: connections with the project's pragmas, numbered migrations, and one writer each.

Every write to a database goes through its `Writer`, which owns the only write connection of
this process, takes whatever writes are waiting, runs them in one `BEGIN IMMEDIATE` transaction
and commits once (if one write fails, the batch is redone with a savepoint each, so the failure
undoes only that write). That is group commit: under load a single fsync-free commit carries hundreds of
writes, and callers never contend for the lock. Reads use a per-thread connection; WAL lets them
run beside the writer.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import datetime
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import sqlite_utils

log = logging.getLogger("flowfuse.db")
T = TypeVar("T")


class DiskFull(sqlite3.OperationalError):
    """A write failed because the disk (or the database's size limit) is full: SQLite rolled the
    transaction back, so nothing stored before is harmed. Writes succeed again once space is freed."""


def disk_full(exc: BaseException, path: Path) -> BaseException:
    """`exc` as DiskFull when it is SQLite's SQLITE_FULL, else `exc` itself."""
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, DiskFull) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL):
        full = DiskFull(f"no space left to write {path.name} (disk full): new executions cannot be stored until "
                        f"space is freed on the file system of {path.parent}; what is already stored is intact")
        full.sqlite_errorcode = sqlite3.SQLITE_FULL
        return full
    return exc


#: For tests of a full disk: "runs.db=300" caps that file at 300 pages in every writer of the process
#: (PRAGMA max_page_count), so that SQLite fails with SQLITE_FULL as on a full file system.
PAGE_LIMIT_ENV = "FLOWFUSE_TEST_MAX_PAGES"


def _page_limit(path: Path) -> int | None:
    name, _, pages = os.environ.get(PAGE_LIMIT_ENV, "").partition("=")
    return int(pages) if name == path.name and pages.isdigit() else None


def connect(path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (released by the OS if the holder dies)."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class NewerDataDirectory(RuntimeError):
    """A database holds migrations this binary does not know: it was written by a newer FlowFuse."""


def unknown_migrations(db: sqlite_utils.Database, migrations: sqlite_utils.Migrations) -> list[str]:
    """Migrations applied to the database that are not in `migrations` (a newer binary applied them)."""
    known = {m.name for m in migrations._migrations}
    return [m.name for m in migrations.applied(db) if m.name not in known]


def refuse_newer(path: Path, unknown: list[str]) -> NewerDataDirectory:
    return NewerDataDirectory(
        f"{path} was migrated by a newer FlowFuse (migrations this binary does not know: {', '.join(unknown)}); "
        "start the newer binary again, or restore a backup taken before the upgrade (see <data_dir>/backups)")


def check_known(path: Path, migrations: sqlite_utils.Migrations) -> None:
    """Raise NewerDataDirectory if the database at `path` holds migrations this binary does not know."""
    if not path.exists():
        return
    conn = connect(path)
    try:
        unknown = unknown_migrations(sqlite_utils.Database(conn), migrations)
    finally:
        conn.close()
    if unknown:
        raise refuse_newer(path, unknown)


def backup_to(conn: sqlite3.Connection, dest: Path) -> Path:
    """A consistent copy of the open database at `dest` (SQLite's online backup API), readable by its owner only."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    os.close(fd)
    target = sqlite3.connect(partial)
    try:
        conn.backup(target)
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, opened without -wal/-shm
    finally:
        target.close()
    os.replace(partial, dest)
    return dest


def migrate(path: Path, migrations: sqlite_utils.Migrations, backup_dir: Path | None = None) -> list[str]:
    """Apply pending migrations under a file lock; returns the names applied.

    Refuses (NewerDataDirectory) a database that holds migrations this code does not know. With
    `backup_dir`, a database that already holds data is first copied to
    `<backup_dir>/<name>-<UTC timestamp>-before-<first pending migration>.db`.
    """
    with file_lock(path.with_name(path.name + ".migrate.lock")):
        conn = connect(path)
        try:
            db = sqlite_utils.Database(conn)
            unknown = unknown_migrations(db, migrations)
            if unknown:
                raise refuse_newer(path, unknown)
            pending = [m.name for m in migrations.pending(db)]
            if pending and backup_dir is not None and migrations.applied(db):
                stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
                dest = backup_to(conn, backup_dir / f"{path.stem}-{stamp}-before-{pending[0]}.db")
                log.warning("backed up %s to %s before applying migrations %s", path.name, dest, ", ".join(pending))
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


class CommitHook(Protocol):
    """Work that rides in every write transaction of a database (the usage meter of runs.db)."""

    def write(self, conn: sqlite3.Connection) -> None:
        """Called inside each transaction, after its writes. If it raises, the writes are redone one
        by one and the transaction commits without this hook's part."""

    def committed(self) -> None:
        """Called after a transaction in which `write` succeeded has committed."""


class _Job:
    __slots__ = ("fn", "future", "rows", "result", "error")

    def __init__(self, fn, future, rows=()):
        self.fn, self.future, self.rows = fn, future, rows
        self.result = self.error = None

    def run(self, conn: sqlite3.Connection) -> None:
        for sql, params in self.rows:
            conn.executemany(sql, params)
        self.result = self.fn(conn) if self.fn is not None else None


class Writer:
    """The one writer of a database in this process (see the module docstring).

    In a process with an event loop (web, worker) the writer is bound to that loop: every
    write, from a coroutine or from another thread, is queued, and one callback on the loop
    runs all queued writes in one transaction. Coroutines that reach a commit point during the
    same loop iteration share that commit, and no thread hand-off sits on the hot path.
    Without a loop (the CLI) a thread does the same.
    """

    def __init__(self, path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000, max_batch: int = 512,
                 loop: asyncio.AbstractEventLoop | None = None, hooks: list[CommitHook] | None = None):
        self.path = path
        self.hooks = hooks if hooks is not None else []
        self._conn = connect(path, synchronous, busy_timeout_ms)
        self._max_batch = max_batch
        self._loop = loop
        self._pending: collections.deque[_Job] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._closed = False
        self.commits = self.writes = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._checkpointer: Checkpointer | None = None
        self._loop_thread: int | None = None  # the loop's thread, learned on its first write
        self.full: str | None = None  # the last DiskFull message, until there is room again (_has_room)
        self._full_pages = 0
        limit = _page_limit(path)
        if limit is not None:
            self._conn.execute(f"PRAGMA max_page_count={limit}")
        if loop is not None:  # keep checkpoints (and their fsync) off the loop: see Checkpointer
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            self._conn.execute("PRAGMA journal_size_limit=67108864")  # the WAL shrinks back after a burst
            self._checkpointer = Checkpointer(path, synchronous, busy_timeout_ms)
        if loop is None:
            self._thread = threading.Thread(target=self._thread_loop, name=f"writer:{path.name}", daemon=True)
            self._thread.start()

    def _on_loop(self) -> bool:
        """True on the thread that runs the bound loop (compared by thread id: asyncio's own
        get_running_loop() makes a getpid() system call, which showed in profiles of the hot path)."""
        if self._loop is None:
            return False
        if self._loop_thread is None:
            try:
                if asyncio.get_running_loop() is not self._loop:
                    return False
            except RuntimeError:
                return False
            self._loop_thread = threading.get_ident()
        return threading.get_ident() == self._loop_thread

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the writer of {self.path.name} is closed")
            self._pending.append(job)
            if self._scheduled:
                return
            self._scheduled = True
        if self._loop is None:
            self._wake.set()
        elif self._on_loop():
            self._loop.call_soon(self._flush)
        else:
            self._loop.call_soon_threadsafe(self._flush)

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue(_Job(fn, future))
        return future

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in the next group transaction and wait for the commit (not on the loop)."""
        if self._loop is not None and self._on_loop():
            raise RuntimeError("write() would block the event loop that commits it; use awrite()")
        return self.submit(fn).result()

    def awrite(self, fn: Callable[[sqlite3.Connection], T] | None,
               rows: list[tuple[str, list[tuple]]] = ()) -> asyncio.Future:
        """Like `write`, for coroutines: `await` it to wait for the commit without blocking the loop.

        `rows` are (INSERT statement, parameter tuples) run before `fn`; the rows of all writes
        in a batch that share a statement go to SQLite in one executemany.
        (A plain function returning the future, not a coroutine: one frame less to resume per commit.)
        """
        loop = self._loop if threading.get_ident() == self._loop_thread or self._on_loop() \
            else asyncio.get_running_loop()
        future = loop.create_future()
        self._enqueue(_Job(fn, future, rows))
        return future

    def close(self) -> None:
        """Commit what is queued, then close. Call when the loop (if any) no longer runs callbacks."""
        with self._lock:
            self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.stop()
        if self._thread is not None:
            self._wake.set()
            self._thread.join(timeout=10)
        while self._pending:
            self._flush()
        if self.hooks:  # what was reported after the last transaction (see CommitHook)
            self._run_batch([])
        self._conn.close()

    def _thread_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._flush():
                pass
            if self._closed:
                return

    def _flush(self) -> bool:
        """Run up to max_batch queued writes in one transaction; True if more are waiting."""
        with self._lock:
            batch = [self._pending.popleft() for _ in range(min(self._max_batch, len(self._pending)))]
            more = bool(self._pending)
            self._scheduled = more
        if batch:
            self._run_batch(batch)
        if more and self._loop is not None:
            self._loop.call_soon(self._flush)
        return more

    def _transaction(self, batch: list[_Job], isolate: bool) -> bool:
        """Run the batch and the commit hooks in one transaction and commit. Without `isolate`, the first
        failure rolls everything back and False is returned; with it, a failing job (or hook) undoes
        only itself."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        if not isolate:
            try:
                grouped: dict[str, list[tuple]] = {}
                for job in batch:
                    for sql, params in job.rows:
                        grouped.setdefault(sql, []).extend(params)
                for sql, params in grouped.items():
                    conn.executemany(sql, params)
                for job in batch:
                    job.result = job.fn(conn) if job.fn is not None else None
                for hook in self.hooks:
                    hook.write(conn)
            except Exception:  # noqa: BLE001 - redone in isolation to find whose it is
                if conn.in_transaction:  # SQLite rolls back by itself after some errors (SQLITE_FULL, I/O)
                    conn.execute("ROLLBACK")
                return False
            conn.execute("COMMIT")
            for hook in self.hooks:
                hook.committed()
            return True
        for job in batch:
            job.error = self._savepoint(conn, job.run)
            if job.error is not None:
                job.result = None
        wrote = []
        for hook in self.hooks:
            error = self._savepoint(conn, hook.write)
            if error is None:
                wrote.append(hook)
            else:
                log.warning("%s not written to %s (tried again with the next write): %s", type(hook).__name__,
                            self.path.name, error)
        conn.execute("COMMIT")
        for hook in wrote:
            hook.committed()
        return True

    def _savepoint(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> BaseException | None:
        """Run `fn(conn)` in a savepoint: on failure undo only it and return the error."""
        conn.execute("SAVEPOINT job")
        try:
            fn(conn)
            conn.execute("RELEASE job")
            return None
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            if not conn.in_transaction:  # SQLite rolled it all back (disk full): every job failed with it
                raise
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            return disk_full(exc, self.path)

    def _note_full(self, exc: BaseException) -> None:
        self.full = str(exc)
        with contextlib.suppress(sqlite3.Error):
            self._full_pages = self._conn.execute("PRAGMA page_count").fetchone()[0]

    def _has_room(self) -> bool:
        """After a DiskFull: whether writes may fit again (the file grew since, or has free pages);
        a commit that needed no new page (a heartbeat) says nothing about space."""
        try:
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        except sqlite3.Error:
            return False
        return pages > self._full_pages or free > 0

    def _run_batch(self, batch: list[_Job]) -> None:
        conn = self._conn
        try:
            isolated = not self._transaction(batch, isolate=False)
            if isolated:
                self._transaction(batch, isolate=True)  # a job failed: redo, each in its own savepoint
            self.commits += 1
            self.writes += len(batch)
            full = next((job.error for job in batch if isinstance(job.error, DiskFull)), None) if isolated else None
            if full is not None:
                self._note_full(full)
            elif self.full is not None and self._has_room():
                self.full = None
        except Exception as exc:  # the transaction itself failed (disk full, I/O error)
            exc = disk_full(exc, self.path)
            if isinstance(exc, DiskFull):
                self._note_full(exc)
                log.error("%s", exc)
            else:
                log.exception("write transaction on %s failed", self.path.name)
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for job in batch:
                job.error, job.result = exc, None
        elsewhere: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        here = self._loop if self._loop is not None and self._on_loop() else None
        for job in batch:
            future = job.future
            if isinstance(future, asyncio.Future) and future.get_loop() is not here:
                elsewhere.setdefault(future.get_loop(), []).append(job)
            else:
                _settle_one(job)
        for loop, jobs in elsewhere.items():
            try:
                loop.call_soon_threadsafe(_settle, jobs)
            except RuntimeError:
                pass  # that loop has closed; nobody is waiting any more


class Checkpointer(threading.Thread):
    """Copies the WAL into the database file about once a second, from its own connection.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses the WAL size limit and, at
    synchronous=NORMAL, is the only place that calls fsync: on a writer bound to the event loop
    that would stall every request in flight. A PASSIVE checkpoint here never blocks the writer;
    sqlite3 releases the GIL while it works.
    """

    def __init__(self, path: Path, synchronous: str, busy_timeout_ms: int, interval_s: float = 1.0):
        super().__init__(name=f"checkpoint:{path.name}", daemon=True)
        self.path, self._opts, self.interval_s = path, (synchronous, busy_timeout_ms), interval_s
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        conn = connect(self.path, *self._opts)
        try:
            while not self._halt.wait(self.interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    log.exception("checkpoint of %s failed; trying again", self.path.name)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            conn.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _settle_one(job: _Job) -> None:
    if job.future.done():
        return
    if job.error is not None:
        job.future.set_exception(job.error)
    else:
        job.future.set_result(job.result)


def _settle(jobs: list[_Job]) -> None:
    for job in jobs:
        _settle_one(job)


class Database:
    """One SQLite file: its writer and per-thread read connections."""

    def __init__(self, path: Path, synchronous: str = "NORMAL", busy_timeout_ms: int = 5000, max_batch: int = 512):
        self.path = path
        self._opts = (synchronous, busy_timeout_ms)
        self._local = threading.local()
        self._writer: Writer | None = None
        self._max_batch = max_batch
        self._lock = threading.Lock()
        #: Commit hooks of this database's writer (see CommitHook); add before the first write.
        self.hooks: list[CommitHook] = []

    @property
    def writer(self) -> Writer:
        if self._writer is None:
            with self._lock:
                if self._writer is None:
                    self._writer = Writer(self.path, *self._opts, max_batch=self._max_batch, hooks=self.hooks)
        return self._writer

    def use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit on this event loop from now on (see Writer); call before the loop serves work."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
            self._writer = Writer(self.path, *self._opts, max_batch=self._max_batch, loop=loop, hooks=self.hooks)

    @property
    def disk_full(self) -> str | None:
        """Why this process's last write failed for want of space, until a write succeeds again."""
        return self._writer.full if self._writer is not None else None

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

    def awrite(self, fn: Callable[[sqlite3.Connection], T] | None, rows: list = ()) -> asyncio.Future:
        return (self._writer or self.writer).awrite(fn, rows)

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
