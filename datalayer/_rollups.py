"""``rollups refresh``: drain the rollup queues until they are empty."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ._database import Database

__all__ = ["RefreshResult", "refresh_rollups"]

log = logging.getLogger("datalayer")


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What one refresh recomputed."""

    usage_days: int
    analytics_days: int
    batches: int


def refresh_rollups(db: Database, *, batch_size: int = 5000) -> RefreshResult:
    """Recompute every queued usage and analytics bucket; return what was done.

    Each batch is one transaction holding the rollup lock, so refreshers in
    several processes take turns and a crash loses nothing: an unfinished
    batch rolls back and its queue rows come back. Rollups then equal a fresh
    aggregate of the raw events that were committed when the batch ran.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    usage_days = analytics_days = batches = 0
    while True:
        with db.unit_of_work() as uow:
            uow.rollups.lock()
            days = uow.rollups.refresh_usage_hours(batch_size=batch_size)
            uow.rollups.refresh_usage_days(days=days)
        usage_days += len(days)
        batches += 1
        if not days:
            break
    while True:
        with db.unit_of_work() as uow:
            uow.rollups.lock()
            claimed = uow.rollups.claim_analytics_days(batch_size=batch_size)
            uow.rollups.rebuild_analytics_days(days=claimed)
        analytics_days += len(claimed)
        batches += 1
        if not claimed:
            break
    log.info("rollups refreshed: %d usage days, %d analytics days", usage_days, analytics_days)
    return RefreshResult(usage_days, analytics_days, batches)
