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
    this one replaced in an upgrade or a downgrade.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
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
    """What a mid-period plan change is worth, computed in SQL; nothing of it is stored.

    ``fraction`` is the unused part of the period, ``(period_end -
    effective_at) / (period_end - period_start)`` shown to 10 decimal places.
    ``credit_minor`` is that fraction of the old plan's base price and
    ``charge_minor`` of the new one's, each computed from the exact fraction
    and rounded half-up to whole minor units of ``currency``;
    ``net_minor = charge_minor - credit_minor``. Billing turns it into a
    credit line and a charge line on the next invoice.
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
