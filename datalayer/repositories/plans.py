"""Plans repository (``sql/plans.sql``)."""

from __future__ import annotations

from .._repository import Repository


class PlanRepository(Repository):
    """Versioned plans with their meters: a shared reference table."""

    aggregate = "plans"
