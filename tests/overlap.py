"""Proof that concurrent workers really overlapped, read from PostgreSQL's lock manager.

A concurrency test that only starts its workers together proves nothing when they
happen to run one after the other. These helpers let a test hold a lock that every
worker needs, see each worker wait for it (``pg_blocking_pids``, which reads
``pg_locks``), and only then let them go: from that moment all of them are inside
the critical section at once. The polling here waits for a state, with a deadline
as a safety net; no sleep stands in for a synchronisation point.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

DEADLINE_S = 60.0


def blocked_by(conn: psycopg.Connection[Any], holder_pid: int) -> list[int]:
    """The backends waiting for a lock that ``holder_pid`` holds (or waits ahead of them for)."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid)) ORDER BY pid",
        [holder_pid],
    ).fetchall()
    return [int(row[0]) for row in rows]


def wait_until_blocked(
    conn: psycopg.Connection[Any], holder_pid: int, count: int, *, what: str = "workers"
) -> list[int]:
    """Wait until ``count`` backends wait on ``holder_pid``'s locks; return their pids.

    ``conn`` must be another connection than the holder's, in autocommit mode.
    """
    deadline = time.monotonic() + DEADLINE_S
    while True:
        waiting = blocked_by(conn, holder_pid)
        if len(waiting) >= count:
            return waiting
        if time.monotonic() > deadline:
            raise AssertionError(
                f"only {len(waiting)} of {count} {what} ever waited for the held lock"
            )
        time.sleep(0.005)


def wait_until_queried(
    conn: psycopg.Connection[Any], dbname: str, fragment: str, count: int, *, exclude: int
) -> list[int]:
    """Wait until ``count`` backends of ``dbname`` (other than ``exclude``) have last run a
    statement containing ``fragment``; return their pids."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s"
            " AND strpos(query, %s) > 0 ORDER BY pid",
            [dbname, exclude, fragment],
        ).fetchall()
        if len(rows) >= count:
            return [int(row[0]) for row in rows]
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(rows)} of {count} backends ran {fragment!r}")
        time.sleep(0.005)
