"""UsageReport repository (``sql/usage_reports.sql``): totals, time series, top accounts."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Literal

from .._repository_async import AsyncRepository, many
from .._validation import Id, Instant, Limit, MeterCode, validated
from ..errors import InvalidInput
from ..models.usage_reports import AccountUsage, MeterTotal, UsageBucket

Bucket = Literal["hour", "day"]

# A time series is a chart: at most this many buckets (hourly: ~13 months).
MAX_BUCKETS = 10_000
_BUCKET_LENGTH = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


class AsyncUsageReportRepository(AsyncRepository):
    """Usage reports: time series, per-meter totals, top accounts (rollups + the tail)."""

    aggregate = "usage_reports"

    _period_totals = many("get_period_totals", MeterTotal)
    _time_series = many("get_usage_time_series", UsageBucket)
    _top_accounts = many("get_top_accounts", AccountUsage)

    @validated
    async def period_totals(
        self, *, account_id: Id, period_start: Instant, period_end: Instant
    ) -> list[MeterTotal]:
        """Per meter, the account's usage in ``[period_start, period_end)``.

        Usage is the accepted events that are not cancelled (``usage.cancel``):
        what billing charges. Reads day rollups for whole UTC days in which the
        meter has no hour queued for refresh, hour rollups for the other whole
        hours, and raw events only for hours not yet rolled up (queued since
        the last refresh; a cancellation queues its event's hour) and for the
        partial hours at the edges of the range. The totals therefore always
        equal a fresh aggregate of the raw events not cancelled, whatever the
        refresh state, and a month costs about thirty day rows per meter.
        Meters without usage are absent.
        Raises ``InvalidInput`` for naive datetimes or an empty range.
        """
        if period_end <= period_start:
            raise InvalidInput("must be after period_start", field="period_end")
        return await self._period_totals(
            account_id=account_id, period_start=period_start, period_end=period_end
        )

    @validated
    async def time_series(
        self,
        *,
        account_id: Id,
        meter_code: MeterCode,
        start: Instant,
        end: Instant,
        bucket: Bucket,
    ) -> list[UsageBucket]:
        """One meter's usage in ``[start, end)`` per UTC hour or day, oldest first.

        Only buckets with usage are returned. A bucket starts at its UTC hour
        or midnight (``bucket_start``); the first and last buckets of an
        unaligned range hold only the part inside the range. Computed like
        ``period_totals`` (day rollups for clean whole days, hour rollups for
        clean hours, raw events for dirty and partial hours), so each bucket
        equals a fresh aggregate of the raw events not cancelled, whatever the
        refresh state.
        Raises ``InvalidInput`` for naive datetimes, an empty range, a bad
        ``bucket`` or meter code, or a range of more than 10,000 buckets.
        """
        if end <= start:
            raise InvalidInput("must be after start", field="end")
        if (end - start) / _BUCKET_LENGTH[bucket] > MAX_BUCKETS:
            raise InvalidInput(f"spans more than {MAX_BUCKETS} {bucket} buckets", field="end")
        return await self._time_series(
            account_id=account_id,
            meter_code=meter_code,
            range_start=start,
            range_end=end,
            bucket=bucket,
        )

    @validated
    async def top_accounts(
        self, *, meter_code: MeterCode, start: Instant, end: Instant, limit: Limit = 10
    ) -> list[AccountUsage]:
        """The ``limit`` accounts with the largest quantity of a meter in ``[start, end)``.

        An operator report across all accounts (the one method here without
        ``account_id``). Ranked by ``quantity_sum`` (largest first, ties by
        account id), from rollups only: day rollups for whole UTC days and
        hour rollups around them, through ``usage_rollups_meter_bucket_idx``.
        The not-yet-rolled tail is excluded: usage in hours queued since the
        last ``rollups refresh`` counts as of that refresh (new events and
        cancellations show after the next one, typically within a minute), so
        a leaderboard never reads raw events across accounts. ``start`` and
        ``end`` must be whole UTC hours. Raises ``InvalidInput`` for naive or unaligned datetimes,
        an empty range, a bad meter code or a limit outside 1..1000.
        """
        for field, moment in (("start", start), ("end", end)):
            if moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) != moment:
                raise InvalidInput("must be a whole UTC hour", field=field)
        if end <= start:
            raise InvalidInput("must be after start", field="end")
        return await self._top_accounts(
            meter_code=meter_code, range_start=start, range_end=end, limit=limit
        )
