"""Fresh clones of the template database, made ahead and dropped behind, off the test's path.

A test that commits gets a database of its own (``fresh_dbname``). Made and
dropped in line, each cost the test ~0.4 s: ``CREATE DATABASE … TEMPLATE``
copies ~10 MB (mostly the system catalogs; see ``_strategy``), and ``DROP DATABASE`` waits for an
immediate checkpoint. Over ~500 such tests that was a third of the suite's
time, spent waiting on the server's disk.

So a worker thread of each test process keeps one clone of each template in
use ready ahead, and drops the clones that tests gave back, while the tests
run. ``take`` returns a ready clone at once (or makes one when none is ready
yet); ``give_back`` queues the drop. ``close`` (at the end of the session)
waits for the queue and drops what is left. What a test sees is unchanged: a
new database cloned from the migrated template, used by no one else.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["Clones"]


class Clones:
    """Clones of templates for one test process (see the module docstring)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]]):
        self._connect = connect
        self._lock = threading.Lock()
        self._ready: dict[str, list[str]] = {}
        self._jobs: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._strategy: sql.Composable | None = None
        self._thread = threading.Thread(target=self._work, name="clones", daemon=True)
        self._thread.start()

    def take(self, template: str) -> str:
        """A new clone of ``template`` that nobody else uses; drop it with ``give_back``."""
        with self._lock:
            ready = self._ready.setdefault(template, [])
            name = ready.pop() if ready else None
        if name is None:
            name = self._make(template)
        self._jobs.put(("make", template))  # the next test's, made while this one runs
        return name

    def give_back(self, name: str) -> None:
        """Drop ``name`` in the background (its connections are ended first)."""
        self._jobs.put(("drop", name))

    def close(self) -> None:
        """Wait for the queued work, then drop the clones made ahead and never taken."""
        self._jobs.put(None)
        self._thread.join(timeout=120)
        with self._lock:
            left = [n for names in self._ready.values() for n in names]
            self._ready.clear()
        with self._connect() as conn:
            for name in left:
                _drop(conn, name)
        if self._error is not None:
            raise RuntimeError(f"making or dropping a clone failed: {self._error}")

    def _make(self, template: str) -> str:
        name = f"dl_{uuid.uuid4().hex[:16]}"
        with self._connect() as conn:
            if self._strategy is None:
                self._strategy = _strategy(conn)
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    sql.Identifier(name), sql.Identifier(template), self._strategy
                )
            )
        return name

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            kind, target = job
            try:
                if kind == "drop":
                    with self._connect() as conn:
                        _drop(conn, target)
                    continue
                with self._lock:
                    if self._ready.get(target):
                        continue  # one made ahead is enough
                name = self._make(target)
                with self._lock:
                    self._ready.setdefault(target, []).append(name)
            except BaseException as exc:  # reported by close(); the tests make their own
                self._error = exc


def _strategy(conn: psycopg.Connection[Any]) -> sql.Composable:
    """How to copy the template: ``FILE_COPY`` where checkpoints cost nothing (fsync off).

    PostgreSQL 15's default, ``WAL_LOG``, reads and WAL-logs every page of the template;
    ``FILE_COPY`` copies its files after a checkpoint. On the scratch cluster (fsync off,
    tests/scratch_dirs.py) that takes 21 ms against 48 ms; on a server that syncs, the
    checkpoints would make every clone wait on the disk.
    """
    row = conn.execute("SELECT current_setting('fsync'), current_setting('server_version_num')")
    fsync, version = row.fetchone() or ("on", "0")
    if fsync == "off" and int(version) >= 150000:
        return sql.SQL(" STRATEGY FILE_COPY")
    return sql.SQL("")


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
