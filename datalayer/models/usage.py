"""Usage events: one metered fact each."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .._validation import Id, Instant, MeterCode, Properties


class UsageEvent(BaseModel):
    """One row of ``usage_events``."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    user_id: int | None
    api_key_id: int | None
    meter_code: str
    quantity: Decimal
    occurred_at: datetime
    received_at: datetime
    idempotency_key: str
    properties: dict[str, Any]


class RecordResult(BaseModel):
    """What ``record`` did: the stored event, and whether it was a duplicate.

    For a duplicate, ``event`` is the one stored the first time.
    """

    model_config = ConfigDict(frozen=True)

    event: UsageEvent | None
    duplicate: bool


class UsageCancellation(BaseModel):
    """One row of ``usage_cancellations``: a cancelled event and who cancelled it, when, why.

    The event's id, time, meter, quantity and idempotency key are copied from
    the event, which itself is never changed.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    event_id: int
    occurred_at: datetime
    meter_code: str
    quantity: Decimal
    idempotency_key: str
    reason: str
    cancelled_by: int | None
    cancelled_at: datetime


class CancelResult(BaseModel):
    """What ``cancel`` did: the cancellation, and whether an earlier call had made it.

    For a duplicate, ``cancellation`` is the one stored the first time (its
    reason and ``cancelled_by`` stand).
    """

    model_config = ConfigDict(frozen=True)

    cancellation: UsageCancellation
    duplicate: bool


class UsageEventIn(BaseModel):
    """One usage event to record (input of ``record_batch``)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    account_id: Id
    meter_code: MeterCode
    quantity: Annotated[Decimal, Field(ge=0, lt=Decimal("1e12"), allow_inf_nan=False)]
    occurred_at: Instant
    idempotency_key: Annotated[
        str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
    ]
    user_id: Id | None = None
    api_key_id: Id | None = None
    properties: Properties = Field(default_factory=dict)


class Rejection(BaseModel):
    """An event of a batch that was not stored, and why."""

    model_config = ConfigDict(frozen=True)

    index: int
    idempotency_key: str | None
    reason: str


class BatchResult(BaseModel):
    """What ``record_batch`` did: events stored, duplicates skipped, rejections with reasons."""

    model_config = ConfigDict(frozen=True)

    inserted: int
    duplicates: int
    rejected: list[Rejection]
