"""Analytics repository (``sql/analytics.sql``): batched recording, dashboards over rollups."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, TypeAdapter

from .._repository_async import AsyncRepository, copy_in, execute, many, scalar
from .._validation import (
    Batch,
    Day,
    Id,
    Instant,
    Limit,
    gc_paused,
    validate_batch,
    validated,
)
from .._window import window_refusal
from ..errors import InvalidInput
from ..models.analytics import (
    ActiveUsers,
    AnalyticsBatchResult,
    AnalyticsEventIn,
    AnalyticsRejection,
    EventName,
    FeatureUsage,
    LatencyPercentiles,
    PendingDay,
)

Window = Literal["day", "week", "month"]

# Dashboards read daily rollups; a range is at most this long (a year and a bit).
MAX_RANGE_DAYS = 400


def _check_range(start_date: Day, end_date: Day) -> None:
    if end_date <= start_date:
        raise InvalidInput("must be after start_date", field="end_date")
    if end_date - start_date > timedelta(days=MAX_RANGE_DAYS):
        raise InvalidInput(f"the range is longer than {MAX_RANGE_DAYS} days", field="end_date")


class _StagedAnalyticsRejection(BaseModel):
    """A staged event the database check refused (unknown account, oversized properties)."""

    model_config = ConfigDict(frozen=True)

    idx: int
    reason: str


class AsyncAnalyticsRepository(AsyncRepository):
    """Analytics: batched event recording and dashboard queries over daily rollups.

    The dashboard methods (``active_users``, ``top_features``,
    ``latency_percentiles``) read only ``analytics_daily_rollups`` and
    ``analytics_daily_users``, never the raw events: they show the state of
    the last ``datalayer rollups refresh`` (run it every minute or so).
    ``pending_days`` lists the days whose newer events they do not show yet.
    """

    aggregate = "analytics"

    _create_staging = execute("create_analytics_staging")
    _copy_staging = copy_in("copy_analytics_staging")
    _refused = many("find_refused_analytics_staged", _StagedAnalyticsRejection)
    _insert_staged = scalar("insert_staged_analytics", int)
    _drop_staging = execute("drop_analytics_staging")
    _active_users = many("count_active_users", ActiveUsers)
    _top_features = many("list_top_features", FeatureUsage)
    _latency = many("list_latency_percentiles", LatencyPercentiles)
    _pending = many("list_pending_analytics_days", PendingDay)

    @validated
    async def record_batch(
        self, *, events: Batch[AnalyticsEventIn | Mapping[str, Any]], now: Instant | None = None
    ) -> AnalyticsBatchResult:
        """Store a batch of analytics events; report the rejected ones with reasons.

        Each event is validated first: category (behaviour, feature or
        performance), name (``^[a-z][a-z0-9_.:-]{0,99}$``), ``duration_ms``
        (>= 0; required for performance events), an aware ``occurred_at``
        within the accepted window (35 days back to 5 minutes ahead of
        ``now``), and ``properties`` a JSON object. A bad event is rejected
        with the reason; the others go in by binary COPY into a
        transaction-private staging table, where events of an unknown account
        or with properties over 4096 bytes are rejected too, then one
        ``INSERT … SELECT`` stores the rest. All-or-nothing for the accepted
        events: raises ``PartitionMissing`` (nothing stored) when a month has
        no partition, ``Unavailable`` if the database is lost.
        """
        with gc_paused():
            return await self._record_batch(events, now or datetime.now(UTC))

    async def _record_batch(
        self, events: Sequence[AnalyticsEventIn | Mapping[str, Any]], moment: datetime
    ) -> AnalyticsBatchResult:
        rejected: list[AnalyticsRejection] = []
        valid: list[tuple[int, AnalyticsEventIn]] = []
        for index, event in enumerate(_validate_all(events, rejected)):
            if event is None:
                continue
            reason = _refusal(event, moment)
            if reason is None:
                valid.append((index, event))
            else:
                rejected.append(AnalyticsRejection(index=index, reason=reason))
        inserted = 0
        if valid:
            async with self._atomic() as repo:
                await repo._create_staging()
                await repo._copy_staging(
                    rows=(
                        (i, e.account_id, e.user_id, e.category, e.name, e.duration_ms,
                         e.occurred_at, Jsonb(e.properties))
                        for i, e in valid
                    ),
                    types=_STAGING_TYPES,
                )  # fmt: skip
                rejected.extend(
                    AnalyticsRejection(index=r.idx, reason=r.reason) for r in await repo._refused()
                )
                inserted = await repo._insert_staged() or 0
                await repo._drop_staging()
        rejected.sort(key=lambda r: r.index)
        return AnalyticsBatchResult(inserted=inserted, rejected=rejected)

    @validated
    async def active_users(
        self, *, account_id: Id, start_date: Day, end_date: Day, window: Window
    ) -> list[ActiveUsers]:
        """Distinct active users per day, ISO week or month in ``[start_date, end_date)``.

        DAU (``window="day"``), WAU (``"week"``, Monday to Sunday) or MAU
        (``"month"``), counted from ``analytics_daily_users``: one row per
        period meeting the range, zero included, oldest first. A period is
        clipped to the range (``period_start``/``period_end`` say which days
        were counted), so ask for whole weeks or months to get whole figures.
        Shows the last rollup refresh. Raises ``InvalidInput`` for a bad
        argument, an empty range or one longer than 400 days.
        """
        _check_range(start_date, end_date)
        return await self._active_users(
            account_id=account_id, start_date=start_date, end_date=end_date, window=window
        )

    @validated
    async def top_features(
        self, *, account_id: Id, start_date: Day, end_date: Day, limit: Limit = 10
    ) -> list[FeatureUsage]:
        """The ``limit`` most used features (category ``feature``) in ``[start_date, end_date)``.

        Ranked by events (ties by name), from ``analytics_daily_rollups``, with
        the days used and the most distinct users on one day. Shows the last
        rollup refresh. Raises ``InvalidInput`` for a bad argument, an empty
        range or one longer than 400 days.
        """
        _check_range(start_date, end_date)
        return await self._top_features(
            account_id=account_id, start_date=start_date, end_date=end_date, limit=limit
        )

    @validated
    async def latency_percentiles(
        self,
        *,
        account_id: Id,
        start_date: Day,
        end_date: Day,
        name: EventName | None = None,
    ) -> list[LatencyPercentiles]:
        """Per performance operation and UTC day: p50, p95, p99 and max of ``duration_ms``.

        From ``analytics_daily_rollups`` (percentile_cont over the day's
        durations, stored to 0.001 ms), ordered by operation then day; only
        the operation ``name`` when given. Shows the last rollup refresh.
        Raises ``InvalidInput`` for a bad argument, an empty range or one
        longer than 400 days.
        """
        _check_range(start_date, end_date)
        return await self._latency(
            account_id=account_id, start_date=start_date, end_date=end_date, name=name
        )

    @validated
    async def pending_days(self, *, account_id: Id, start_date: Day, end_date: Day) -> list[date]:
        """Days in ``[start_date, end_date)`` with events the dashboards do not show yet.

        Those recorded since the last rollup refresh (queued for it). Raises
        ``InvalidInput`` for a bad argument, an empty range or one longer
        than 400 days.
        """
        _check_range(start_date, end_date)
        rows = await self._pending(account_id=account_id, start_date=start_date, end_date=end_date)
        return [r.day for r in rows]


_STAGING_TYPES = [
    "int4", "int8", "int8", "text", "text", "numeric", "timestamptz", "jsonb",
]  # fmt: skip
_EVENTS = TypeAdapter(list[AnalyticsEventIn])


def _refusal(event: AnalyticsEventIn, now: datetime) -> str | None:
    """Why a well-typed event cannot be stored, or ``None``."""
    if event.category == "performance" and event.duration_ms is None:
        return "bad duration_ms: a performance event needs a duration"
    return window_refusal(event.occurred_at, now)


def _validate_all(
    events: Sequence[AnalyticsEventIn | Mapping[str, Any]], rejected: list[AnalyticsRejection]
) -> list[AnalyticsEventIn | None]:
    """Validate a batch (see ``validate_batch``), recording each bad event."""
    models, bad = validate_batch(AnalyticsEventIn, _EVENTS, events)
    rejected.extend(AnalyticsRejection(index=index, reason=reason) for index, reason in bad)
    return models
