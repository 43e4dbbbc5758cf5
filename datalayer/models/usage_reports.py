"""Usage report rows: totals per meter, and time series buckets."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict


class MeterTotal(BaseModel):
    """An account's usage of one meter over a range: events, summed and largest quantity."""

    model_config = ConfigDict(frozen=True)

    meter_code: str
    event_count: int
    quantity_sum: Decimal
    quantity_max: Decimal
