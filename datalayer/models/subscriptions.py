"""Subscriptions: an account on a plan version, its billing cycle, and plan-change proration."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict

SubscriptionStatus = Literal["incomplete", "trialing", "active", "past_due", "canceled", "replaced"]

#: Statuses of a live subscription; an account has at most one.
LIVE_STATUSES: tuple[SubscriptionStatus, ...] = ("trialing", "active", "past_due")


class Subscription(BaseModel):
    """One row of ``subscriptions``.

    The current period is ``[current_period_start, current_period_end)``: the
    billing cycle, anchored on ``billing_anchor`` (period ends fall on the
    anchor plus whole intervals). ``replaces_id`` points at the subscription
    this one replaced in an upgrade or a downgrade; ``chain_id`` is the first
    subscription of that line of replacements (its own id for a new one): a
    chain is billed period by period as one customer relationship.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    chain_id: int
    plan_id: int
    status: SubscriptionStatus
    current_period_start: datetime
    current_period_end: datetime
    billing_anchor: datetime
    trial_end: datetime | None
    cancel_at_period_end: bool
    pending_plan_id: int | None
    replaces_id: int | None
    canceled_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Proration(BaseModel):
    """What a mid-period plan change is worth, computed in SQL from the stored prices.

    ``fraction`` is the unused part of the period, ``(period_end -
    effective_at) / (period_end - period_start)`` shown to 10 decimal places.
    ``charge_minor`` is that fraction of the new plan's base price;
    ``credit_minor`` the old plan's price for the part of that time it would
    have charged (time still in a trial was free, so it is not credited); each
    from the exact fraction, rounded half-up to whole minor units of
    ``currency``; ``net_minor = charge_minor - credit_minor``. The upgrade
    stores both as pending invoice items of the chain (``PendingItem``),
    billed once by its next invoice.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    subscription_id: int
    replaced_id: int
    old_plan_id: int
    new_plan_id: int
    currency: str
    effective_at: datetime
    period_start: datetime
    period_end: datetime
    fraction: Decimal
    credit_minor: int
    charge_minor: int
    net_minor: int


class Upgrade(BaseModel):
    """The result of ``SubscriptionRepository.upgrade_now``."""

    model_config = ConfigDict(frozen=True)

    replaced: Subscription
    subscription: Subscription
    proration: Proration
