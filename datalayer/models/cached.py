"""Composite views served from the cache: what a request needs, in one value."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from .api_keys import AuthContext
from .plans import PlanWithMeters
from .subscriptions import Subscription


class SubscriptionWithPlan(BaseModel):
    """An account's live subscription and its plan with meters (quotas and prices)."""

    model_config = ConfigDict(frozen=True)

    subscription: Subscription
    plan: PlanWithMeters


class AuthBundle(BaseModel):
    """Everything a request authenticated by an API key needs.

    The key's context (account, scopes, environment, expiry) and the account's
    live subscription with its plan (``None`` without a live subscription).
    """

    model_config = ConfigDict(frozen=True)

    context: AuthContext
    current: SubscriptionWithPlan | None


class PendingInvalidation(BaseModel):
    """A cache invalidation committed with its change, not yet known to have reached Redis.

    ``account_id`` is the account the tag belongs to, or 0 for a global tag
    (a plan code).
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    tag: str
    created_at: datetime
