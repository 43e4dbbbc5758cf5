"""Subscriptions repository (``sql/subscriptions.sql``)."""

from __future__ import annotations

from .._repository import Repository


class SubscriptionRepository(Repository):
    """An account's subscriptions and their billing cycles."""

    aggregate = "subscriptions"
