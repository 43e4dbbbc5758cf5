"""Billing repository (``sql/billing.sql``)."""

from __future__ import annotations

from .._repository import Repository


class BillingRepository(Repository):
    """Billing: invoices, payments and the double-entry ledger."""

    aggregate = "billing"
