"""Events written or deleted with plain SQL, as a writer outside the library must.

The library's own statements queue the rollup buckets of the events they store
(migration 0018: no triggers, so that the schema distributes on Citus). A test
that writes ``usage_events`` or ``analytics_events`` with its own SQL queues
their buckets itself, in the same transaction, with these helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql


def queue_usage_buckets(
    conn: psycopg.Connection[Any], events: Iterable[tuple[int, str, datetime]]
) -> None:
    """Queue the hour buckets of (account_id, meter_code, occurred_at) triples."""
    rows = list(events)
    if rows:
        conn.execute(
            "INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)"
            " SELECT DISTINCT a, m, date_trunc('hour', t, 'UTC')"
            " FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[]) AS e (a, m, t)",
            ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
        )


def queue_analytics_days(
    conn: psycopg.Connection[Any], events: Iterable[tuple[int, datetime]]
) -> None:
    """Queue the UTC days of (account_id, occurred_at) pairs."""
    rows = list(events)
    if rows:
        conn.execute(
            "INSERT INTO analytics_rollup_queue (account_id, day)"
            " SELECT DISTINCT a, (t AT TIME ZONE 'UTC')::date"
            " FROM unnest(%s::bigint[], %s::timestamptz[]) AS e (a, t)",
            ([r[0] for r in rows], [r[1] for r in rows]),
        )


def delete_events(
    conn: psycopg.Connection[Any], query: LiteralString, params: Sequence[Any] = ()
) -> int:
    """Run ``DELETE FROM usage_events|analytics_events …`` and queue what it removed.

    Returns the number of events deleted.
    """
    usage = "usage_events" in query
    returning = (
        " RETURNING account_id, meter_code, occurred_at"
        if usage
        else " RETURNING account_id, occurred_at"
    )
    with conn.transaction():
        gone = conn.execute(sql.SQL(query + returning), params).fetchall()  # type: ignore[arg-type]
        if usage:
            queue_usage_buckets(conn, gone)
        else:
            queue_analytics_days(conn, gone)
    return len(gone)
