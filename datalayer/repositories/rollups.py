"""Rollups repository (``sql/rollups.sql``): drains the rollup queues batch by batch."""

from __future__ import annotations

from collections.abc import Sequence

from .._repository import Repository, execrows, execute, many
from ..models.rollups import AnalyticsDayKey, UsageDayKey


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

    def refresh_usage_hours(self, *, batch_size: int) -> list[UsageDayKey]:
        """Recompute up to ``batch_size`` queued hour buckets; return the days they touch.

        Raises only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        return self._usage_hours(batch_size=batch_size)

    def refresh_usage_days(self, *, days: Sequence[UsageDayKey]) -> int:
        """Recompute the listed day buckets from their hour buckets; return rows written.

        Raises only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        if not days:
            return 0
        return self._usage_days(
            account_ids=[d.account_id for d in days],
            meter_codes=[d.meter_code for d in days],
            day_starts=[d.day_start for d in days],
        )

    def claim_analytics_days(self, *, batch_size: int) -> list[AnalyticsDayKey]:
        """Take up to ``batch_size`` queued account-days off the analytics queue.

        Raises only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        return self._claim_analytics(batch_size=batch_size)

    def rebuild_analytics_days(self, *, days: Sequence[AnalyticsDayKey]) -> int:
        """Replace the daily rollups and active users of the listed account-days.

        Raises only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        if not days:
            return 0
        params = {"account_ids": [d.account_id for d in days], "days": [d.day for d in days]}
        self._delete_analytics(**params)
        self._insert_users(**params)
        return self._insert_analytics(**params)
