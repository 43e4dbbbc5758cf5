"""``rollups refresh``: drain the rollup queues until they are empty."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import psycopg

from .._database import Database

__all__ = ["RefreshResult", "rebuild_rollups", "refresh_rollups"]

log = logging.getLogger("datalayer")


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What one refresh recomputed."""

    usage_days: int
    analytics_days: int
    batches: int


def refresh_rollups(
    db: Database, *, batch_size: int = 5000, stop: threading.Event | None = None
) -> RefreshResult:
    """Recompute every queued usage and analytics bucket; return what was done.

    A batch is one account's next ``batch_size`` queued buckets, in one
    transaction holding the rollup lock, so refreshers in several processes
    take turns and a crash loses nothing: an unfinished batch rolls back and
    its queue rows come back. Rollups then equal a fresh
    aggregate of the raw events that were committed when the batch ran.
    With ``stop`` set, it returns after the batch in hand (the queues keep the rest).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    batches = 0
    stopping = stop.is_set if stop is not None else lambda: False

    def usage_batch(account_id: int) -> int:
        with db.unit_of_work() as uow:
            uow.rollups.lock()
            days = uow.rollups.refresh_usage_hours(account_id=account_id, batch_size=batch_size)
            uow.rollups.refresh_usage_days(days=days)
        return len(days)

    def analytics_batch(account_id: int) -> int:
        with db.unit_of_work() as uow:
            uow.rollups.lock()
            claimed = uow.rollups.claim_analytics_days(account_id=account_id, batch_size=batch_size)
            uow.rollups.rebuild_analytics_days(days=claimed)
        return len(claimed)

    done: dict[str, int] = {"usage": 0, "analytics": 0}
    for kind, queued, batch in (
        ("usage", db.rollups.queued_usage_accounts, usage_batch),
        ("analytics", db.rollups.queued_analytics_accounts, analytics_batch),
    ):
        # Account by account (each batch a single-shard transaction on Citus), the
        # longest waiting first, until no account has anything queued.
        while not stopping() and (accounts := queued(limit=_ACCOUNTS_PER_ROUND)):
            for account_id in accounts:
                while not stopping():
                    days = batch(account_id)
                    batches += 1
                    done[kind] += days
                    if not days:
                        break
                if stopping():
                    break
    usage_days, analytics_days = done["usage"], done["analytics"]
    log.info("rollups refreshed: %d usage days, %d analytics days", usage_days, analytics_days)
    return RefreshResult(usage_days, analytics_days, batches)


# Accounts read from a queue per round (each then drained to empty).
_ACCOUNTS_PER_ROUND = 1000


def rebuild_rollups(conn: psycopg.Connection[Any]) -> None:
    """Recompute every rollup from the raw events in one set-based pass (bulk loads).

    Empties the queues first, in the same transaction: what they held is
    covered by the rebuild. Cancelled usage events are left out, as by the
    refresh.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('datalayer.rollups'))")
        conn.execute(
            "TRUNCATE usage_rollup_queue, usage_rollups, analytics_rollup_queue,"
            " analytics_daily_rollups, analytics_daily_users"
        )
        conn.execute(
            "INSERT INTO usage_rollups (account_id, meter_code, granularity, bucket_start,"
            " event_count, quantity_sum, quantity_max)"
            " SELECT account_id, meter_code, 'hour', date_trunc('hour', occurred_at, 'UTC'),"
            " count(*), sum(quantity), max(quantity) FROM usage_events e"
            " WHERE NOT EXISTS (SELECT 1 FROM usage_cancellations c"
            " WHERE c.account_id = e.account_id AND c.event_id = e.id)"
            " GROUP BY 1, 2, 4"
        )
        conn.execute(
            "INSERT INTO usage_rollups (account_id, meter_code, granularity, bucket_start,"
            " event_count, quantity_sum, quantity_max)"
            " SELECT account_id, meter_code, 'day', date_trunc('day', bucket_start, 'UTC'),"
            " sum(event_count), sum(quantity_sum), max(quantity_max) FROM usage_rollups"
            " WHERE granularity = 'hour' GROUP BY 1, 2, 4"
        )
        conn.execute(
            "INSERT INTO analytics_daily_rollups (account_id, day, category, name, event_count,"
            " user_count, duration_p50, duration_p95, duration_p99, duration_max)"
            " SELECT account_id, (occurred_at AT TIME ZONE 'UTC')::date, category, name, count(*),"
            " count(DISTINCT user_id),"
            " percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms),"
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms), max(duration_ms)"
            " FROM analytics_events GROUP BY 1, 2, 3, 4"
        )
        conn.execute(
            "INSERT INTO analytics_daily_users (account_id, day, user_id)"
            " SELECT DISTINCT account_id, (occurred_at AT TIME ZONE 'UTC')::date, user_id"
            " FROM analytics_events WHERE user_id IS NOT NULL"
        )
