"""Plans: versioned price books (code + version) and the quota each grants per meter."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .._validation import MeterCode

PlanStatus = Literal["draft", "published", "archived"]
BillingInterval = Literal["day", "week", "month", "year"]
LimitKind = Literal["hard", "soft", "none"]


def _no_float(value: Any) -> Any:
    # Quantities and prices are exact: 0.1 as a float is not 0.1.
    if isinstance(value, float):
        raise ValueError("must be a Decimal, an int or a numeric string, not a float")
    return value


# numeric(20, 6) >= 0 in plan_meters.
Numeric = Annotated[
    Decimal,
    BeforeValidator(_no_float),
    Field(ge=0, max_digits=20, decimal_places=6, allow_inf_nan=False),
]


class Plan(BaseModel):
    """One row of ``plans``: a version of a price book.

    ``base_price_minor`` is in minor units of ``currency`` per ``interval_count``
    ``billing_interval``\\ s; ``published_at`` is ``None`` while a draft.
    """

    model_config = ConfigDict(frozen=True)

    id: int
    code: str
    version: int
    name: str
    status: PlanStatus
    billing_interval: BillingInterval
    interval_count: int
    base_price_minor: int
    currency: str
    trial_days: int
    is_public: bool
    published_at: datetime | None
    created_at: datetime


class PlanMeter(BaseModel):
    """One row of ``plan_meters``: what a plan includes of one meter and what overage costs."""

    model_config = ConfigDict(frozen=True)

    plan_id: int
    meter_code: str
    included_quantity: Decimal
    limit_kind: LimitKind
    overage_unit_price_minor: Decimal


class PlanWithMeters(Plan):
    """A plan and its meters, in meter-code order."""

    meters: list[PlanMeter]


class PlanMeterSpec(BaseModel):
    """A meter to include in a new draft plan (``PlanRepository.create_draft``).

    Quantities and prices are ``Decimal`` (ints and numeric strings are
    accepted, floats refused); the overage price is in minor units per unit and
    may have up to six decimal places.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    meter_code: MeterCode
    included_quantity: Numeric = Decimal(0)
    limit_kind: LimitKind = "soft"
    overage_unit_price_minor: Numeric = Decimal(0)
