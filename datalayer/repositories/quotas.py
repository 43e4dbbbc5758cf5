"""Quota repository (``sql/quotas.sql``)."""

from __future__ import annotations

from .._repository import Repository


class QuotaRepository(Repository):
    """Quotas: atomic consumption of hard limits, reservations for long jobs, current usage."""

    aggregate = "quotas"
