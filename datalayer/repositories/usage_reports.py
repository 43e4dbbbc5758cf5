"""UsageReport repository (``sql/usage_reports.sql``)."""

from __future__ import annotations

from .._repository import Repository


class UsageReportRepository(Repository):
    """Usage reports: time series, per-meter totals, top accounts (rollups + the tail)."""

    aggregate = "usage_reports"
