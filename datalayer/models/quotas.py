"""Quota counters, decisions, reservations and per-meter status."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .plans import LimitKind

ReservationStatus = Literal["held", "settled", "released", "expired"]


class QuotaCounter(BaseModel):
    """One row of ``quota_counters``: a meter's consumption in one subscription period."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    meter_code: str
    period_start: datetime
    period_end: datetime
    limit_kind: LimitKind
    limit_quantity: Decimal
    used: Decimal
    reserved: Decimal


class QuotaDecision(BaseModel):
    """What ``consume`` did: always allowed when returned (a refusal raises).

    ``over_limit`` is true when a soft limit has been passed: the overage is
    allowed and billed. ``remaining`` may be negative then.
    """

    model_config = ConfigDict(frozen=True)

    meter_code: str
    limit_kind: LimitKind
    limit: Decimal
    used: Decimal
    reserved: Decimal
    remaining: Decimal
    over_limit: bool


class Reservation(BaseModel):
    """One row of ``quota_reservations``: quota held by a long job."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    meter_code: str
    period_start: datetime
    quantity: Decimal
    status: ReservationStatus
    expires_at: datetime
    created_at: datetime
    settled_at: datetime | None


class QuotaStatus(BaseModel):
    """A meter's quota for the current period, with what was metered so far.

    ``used`` and ``reserved`` come from the counter (what ``consume`` and
    ``reserve`` admitted); ``metered`` is the quantity of recorded usage events
    in the period (rollups plus the not-yet-rolled tail).
    """

    model_config = ConfigDict(frozen=True)

    meter_code: str
    limit_kind: LimitKind
    limit: Decimal
    used: Decimal
    reserved: Decimal
    remaining: Decimal
    metered: Decimal
    period_start: datetime
    period_end: datetime
