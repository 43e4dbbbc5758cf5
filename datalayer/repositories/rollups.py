"""Rollups repository (``sql/rollups.sql``): drains the rollup queues batch by batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from .._repository import Repository, execrows, execute, many
from .._validation import validated
from ..models.rollups import AnalyticsDayKey, UsageDayKey

# Buckets per refresh step; `datalayer rollups refresh` uses 5,000.
BatchSize = Annotated[int, Field(ge=1, le=100_000)]
Days = Annotated[Sequence[UsageDayKey], Field(max_length=100_000)]
AnalyticsDays = Annotated[Sequence[AnalyticsDayKey], Field(max_length=100_000)]


class RollupRepository(Repository):
    """Recomputes usage and analytics rollups for the buckets queued by inserts.

    Each method is one step of a refresh batch; run a batch inside one unit of
    work after ``lock()`` (``datalayer.refresh_rollups`` does).
    """

    aggregate = "rollups"

    _lock = execute("lock_rollups")
    _usage_hours = many("refresh_usage_hours", UsageDayKey)
    _usage_days = execrows("refresh_usage_days")
    _claim_analytics = many("claim_analytics_days", AnalyticsDayKey)
    _delete_analytics = execrows("delete_analytics_rollups")
    _insert_analytics = execrows("insert_analytics_rollups")
    _insert_users = execrows("insert_analytics_daily_users")

    def lock(self) -> None:
        """Hold the refresh lock until the transaction ends (blocks other refreshers).

        Raises only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        self._lock()

    @validated
    def refresh_usage_hours(self, *, batch_size: BatchSize) -> list[UsageDayKey]:
        """Recompute up to ``batch_size`` queued hour buckets; return the days they touch.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        return self._usage_hours(batch_size=batch_size)

    @validated
    def refresh_usage_days(self, *, days: Days) -> int:
        """Recompute the listed day buckets from their hour buckets; return rows written.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        if not days:
            return 0
        return self._usage_days(
            account_ids=[d.account_id for d in days],
            meter_codes=[d.meter_code for d in days],
            day_starts=[d.day_start for d in days],
        )

    @validated
    def claim_analytics_days(self, *, batch_size: BatchSize) -> list[AnalyticsDayKey]:
        """Take up to ``batch_size`` queued account-days off the analytics queue.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        return self._claim_analytics(batch_size=batch_size)

    @validated
    def rebuild_analytics_days(self, *, days: AnalyticsDays) -> int:
        """Replace the daily rollups and active users of the listed account-days.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        if not days:
            return 0
        params = {"account_ids": [d.account_id for d in days], "days": [d.day for d in days]}
        self._delete_analytics(**params)
        self._insert_users(**params)
        return self._insert_analytics(**params)
