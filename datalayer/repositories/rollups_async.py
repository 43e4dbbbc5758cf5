"""Rollups repository (``sql/rollups.sql``): drains the rollup queues account by account."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, TypeVar

from pydantic import Field

from .._repository_async import AsyncRepository, execrows, execute, many, scalar
from .._validation import Id, validated
from ..models.rollups import AnalyticsDayKey, UsageDayKey

# Buckets per refresh step; `datalayer rollups refresh` uses 5,000.
BatchSize = Annotated[int, Field(ge=1, le=100_000)]
Days = Annotated[Sequence[UsageDayKey], Field(max_length=100_000)]
AnalyticsDays = Annotated[Sequence[AnalyticsDayKey], Field(max_length=100_000)]
# Accounts listed per queued_*_accounts call.
AccountLimit = Annotated[int, Field(ge=1, le=100_000)]

_Key = TypeVar("_Key", UsageDayKey, AnalyticsDayKey)


def _by_account(keys: Sequence[_Key]) -> dict[int, list[_Key]]:
    """``keys`` grouped by account, in first-seen order (one statement per account)."""
    groups: dict[int, list[_Key]] = {}
    for key in keys:
        groups.setdefault(key.account_id, []).append(key)
    return groups


class AsyncRollupRepository(AsyncRepository):
    """Recomputes usage and analytics rollups for the buckets queued by inserts.

    Each method is one step of a refresh batch; run a batch inside one unit of
    work after ``lock()`` (``datalayer.refresh_rollups`` does). The queues are
    drained one account at a time (``queued_usage_accounts`` says which): each
    claim is a single-shard statement on Citus.
    """

    aggregate = "rollups"

    _lock = execute("lock_rollups")
    _usage_accounts = scalar("queued_usage_accounts", list)
    _analytics_accounts = scalar("queued_analytics_accounts", list)
    _usage_hours = many("refresh_usage_hours", UsageDayKey)
    _usage_days = execrows("refresh_usage_days")
    _claim_analytics = many("claim_analytics_days", AnalyticsDayKey)
    _delete_analytics = execrows("delete_analytics_rollups")
    _insert_analytics = execrows("insert_analytics_rollups")
    _insert_users = execrows("insert_analytics_daily_users")

    async def lock(self) -> None:
        """Hold the refresh lock until the transaction ends (blocks other refreshers).

        Raises only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        await self._lock()

    @validated
    async def queued_usage_accounts(self, *, limit: AccountLimit) -> list[int]:
        """Up to ``limit`` accounts with queued hour buckets, the longest waiting first.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        return [int(a) for a in await self._usage_accounts(limit=limit) or []]

    @validated
    async def queued_analytics_accounts(self, *, limit: AccountLimit) -> list[int]:
        """Up to ``limit`` accounts with queued analytics days, the longest waiting first.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        return [int(a) for a in await self._analytics_accounts(limit=limit) or []]

    @validated
    async def refresh_usage_hours(
        self, *, account_id: Id, batch_size: BatchSize
    ) -> list[UsageDayKey]:
        """Recompute up to ``batch_size`` of an account's queued hour buckets.

        Returns the days they touch (for ``refresh_usage_days``). Raises
        ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        return await self._usage_hours(account_id=account_id, batch_size=batch_size)

    @validated
    async def refresh_usage_days(self, *, days: Days) -> int:
        """Recompute the listed day buckets from their hour buckets; return rows written.

        One statement per account among ``days``. Raises ``InvalidInput`` for a bad
        argument, before any SQL, and the errors of the database (``Unavailable``,
        ``QueryTimeout``).
        """
        # sync: return sum(
        # sync:     self._usage_days(
        # sync:         account_id=account_id,
        # sync:         meter_codes=[d.meter_code for d in keys],
        # sync:         day_starts=[d.day_start for d in keys],
        # sync:     )
        # sync:     for account_id, keys in _by_account(days).items()
        # sync: )
        # async-only: begin
        written = 0
        for account_id, keys in _by_account(days).items():
            written += await self._usage_days(
                account_id=account_id,
                meter_codes=[d.meter_code for d in keys],
                day_starts=[d.day_start for d in keys],
            )
        return written
        # async-only: end

    @validated
    async def claim_analytics_days(
        self, *, account_id: Id, batch_size: BatchSize
    ) -> list[AnalyticsDayKey]:
        """Take up to ``batch_size`` of an account's queued days off the analytics queue.

        Raises ``InvalidInput`` for a bad argument, before any SQL, and the errors of
        the database (``Unavailable``, ``QueryTimeout``).
        """
        return await self._claim_analytics(account_id=account_id, batch_size=batch_size)

    @validated
    async def rebuild_analytics_days(self, *, days: AnalyticsDays) -> int:
        """Replace the daily rollups and active users of the listed account-days.

        Three statements per account among ``days``. Raises ``InvalidInput`` for a
        bad argument, before any SQL, and the errors of the database
        (``Unavailable``, ``QueryTimeout``).
        """
        written = 0
        for account_id, keys in _by_account(days).items():
            params = {"account_id": account_id, "days": [d.day for d in keys]}
            await self._delete_analytics(**params)
            await self._insert_users(**params)
            written += await self._insert_analytics(**params)
        return written
