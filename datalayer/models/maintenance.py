"""The maintenance worker's jobs and runs, the lags of what they drain, and health."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

RunOutcome = Literal["running", "ok", "stopped", "failed", "interrupted"]
HealthStatus = Literal["ok", "warning", "failing"]


class MaintenanceRun(BaseModel):
    """One run of a periodic job.

    ``outcome``: ``running``; ``ok``; ``stopped`` (the worker was asked to stop
    and finished its batch: the job is due again at once); ``failed`` (``error``
    says why; retried with backoff); ``interrupted`` (the worker died mid-run;
    found by the next worker to take the job).
    """

    model_config = ConfigDict(frozen=True)

    id: int
    job: str
    worker: str
    attempt: int
    started_at: datetime
    finished_at: datetime | None
    outcome: RunOutcome
    rows_touched: int | None
    error: str | None


class MaintenanceJob(BaseModel):
    """A periodic job's schedule state and its latest run."""

    model_config = ConfigDict(frozen=True)

    job: str
    next_due_at: datetime
    failures: int
    last_ok_at: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_outcome: RunOutcome | None
    last_rows_touched: int | None
    last_error: str | None


class MaintenanceLags(BaseModel):
    """What the periodic jobs drain, at one instant (``None``: nothing there)."""

    model_config = ConfigDict(frozen=True)

    usage_queue_depth: int
    usage_queue_oldest: datetime | None
    analytics_queue_depth: int
    analytics_queue_oldest: datetime | None
    partitions_until: datetime | None
    renewals_due: int
    renewals_oldest: datetime | None
    periods_uninvoiced: int
    periods_oldest: datetime | None
    last_backup_at: datetime | None


class HealthCheck(BaseModel):
    """One health check: its status, the measured value and the thresholds it was held to."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: HealthStatus
    value: float | None
    detail: str


class Health(BaseModel):
    """The worst status of the checks, and the checks."""

    model_config = ConfigDict(frozen=True)

    status: HealthStatus
    checked_at: datetime
    checks: list[HealthCheck]
