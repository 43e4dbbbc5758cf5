"""Analytics repository (``sql/analytics.sql``)."""

from __future__ import annotations

from .._repository import Repository


class AnalyticsRepository(Repository):
    """Analytics: batched event recording and dashboard queries over daily rollups."""

    aggregate = "analytics"
