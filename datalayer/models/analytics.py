"""Analytics: events to record, batch results, and the dashboard rows read from rollups."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .._validation import Id, Instant, Properties

AnalyticsCategory = Literal["behaviour", "feature", "performance"]
# The pattern of the table's CHECK analytics_events_name_check.
EventName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.:-]{0,99}$")]
# numeric(14, 3): below 1e11 ms, stored to 0.001 ms.
DurationMs = Annotated[Decimal, Field(ge=0, lt=Decimal("1e11"), allow_inf_nan=False)]


class AnalyticsEventIn(BaseModel):
    """One analytics event to record (input of ``record_batch``).

    A ``performance`` event needs ``duration_ms``; other categories may carry one.
    """

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    account_id: Id
    category: AnalyticsCategory
    name: EventName
    occurred_at: Instant
    user_id: Id | None = None
    duration_ms: DurationMs | None = None
    properties: Properties = Field(default_factory=dict)


class AnalyticsRejection(BaseModel):
    """An event of a batch that was not stored (``index`` in the batch), and why."""

    model_config = ConfigDict(frozen=True)

    index: int
    reason: str


class AnalyticsBatchResult(BaseModel):
    """What ``record_batch`` did: events stored, and the rejected ones with their reasons."""

    model_config = ConfigDict(frozen=True)

    inserted: int
    rejected: list[AnalyticsRejection]


class ActiveUsers(BaseModel):
    """Distinct active users of an account in ``[period_start, period_end)`` (UTC days).

    The period is a day, an ISO week or a month, clipped to the requested range.
    """

    model_config = ConfigDict(frozen=True)

    period_start: date
    period_end: date
    active_users: int


class FeatureUsage(BaseModel):
    """A feature's use over a range: events, days used, most distinct users on one day."""

    model_config = ConfigDict(frozen=True)

    name: str
    event_count: int
    days_used: int
    peak_daily_users: int


class LatencyPercentiles(BaseModel):
    """One performance operation on one UTC day: events and duration percentiles (ms).

    The durations are ``None`` only for a rollup without durations, which the
    schema rules out for performance events (they require ``duration_ms``).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    day: date
    event_count: int
    duration_p50: Decimal | None
    duration_p95: Decimal | None
    duration_p99: Decimal | None
    duration_max: Decimal | None


class PendingDay(BaseModel):
    """A UTC day with analytics events recorded since the last rollup refresh."""

    model_config = ConfigDict(frozen=True)

    day: date
