"""UsageReport repository (``sql/usage_reports.sql``)."""

from __future__ import annotations

from pydantic import AwareDatetime

from .._repository import Repository, many
from .._validation import Id, validated
from ..errors import InvalidInput
from ..models.usage_reports import MeterTotal


class UsageReportRepository(Repository):
    """Usage reports: time series, per-meter totals, top accounts (rollups + the tail)."""

    aggregate = "usage_reports"

    _period_totals = many("get_period_totals", MeterTotal)

    @validated
    def period_totals(
        self, *, account_id: Id, period_start: AwareDatetime, period_end: AwareDatetime
    ) -> list[MeterTotal]:
        """Per meter, the account's usage in ``[period_start, period_end)``.

        Reads hour rollups, and raw events only for hours not yet rolled up
        (queued since the last refresh) and for the partial hours at the edges
        of the range, so the totals always equal a fresh aggregate of the raw
        events without scanning them. Meters without usage are absent.
        Raises ``InvalidInput`` for naive datetimes or an empty range.
        """
        if period_end <= period_start:
            raise InvalidInput("must be after period_start", field="period_end")
        return self._period_totals(
            account_id=account_id, period_start=period_start, period_end=period_end
        )
