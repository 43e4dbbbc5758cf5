"""Usage report rows: totals per meter, time series buckets, top accounts."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict


class MeterTotal(BaseModel):
    """An account's usage of one meter over a range: events, summed and largest quantity."""

    model_config = ConfigDict(frozen=True)

    meter_code: str
    event_count: int
    quantity_sum: Decimal
    quantity_max: Decimal


class UsageBucket(BaseModel):
    """One hour or day (UTC) of a meter's time series, starting at ``bucket_start``.

    The first and last buckets of an unaligned range hold only their part inside it.
    """

    model_config = ConfigDict(frozen=True)

    bucket_start: datetime
    event_count: int
    quantity_sum: Decimal
    quantity_max: Decimal


class AccountUsage(BaseModel):
    """One account's usage of a meter over a range, as ranked by ``top_accounts``."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    event_count: int
    quantity_sum: Decimal
    quantity_max: Decimal
