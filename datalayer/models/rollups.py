"""Keys of rollup buckets touched by a refresh batch."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict


class UsageDayKey(BaseModel):
    """An account's meter on one UTC day whose day rollup must be recomputed."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    meter_code: str
    day_start: datetime


class AnalyticsDayKey(BaseModel):
    """An account's UTC day whose analytics rollups must be recomputed."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    day: date
