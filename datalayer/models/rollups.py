"""Keys of rollup buckets touched by a refresh batch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from .._validation import Day, Id, Instant, MeterCode


class UsageDayKey(BaseModel):
    """An account's meter on one UTC day whose day rollup must be recomputed."""

    model_config = ConfigDict(frozen=True)

    account_id: Id
    meter_code: MeterCode
    day_start: Instant


class AnalyticsDayKey(BaseModel):
    """An account's UTC day whose analytics rollups must be recomputed."""

    model_config = ConfigDict(frozen=True)

    account_id: Id
    day: Day
