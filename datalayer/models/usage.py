"""Usage events: one metered fact each."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict


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
