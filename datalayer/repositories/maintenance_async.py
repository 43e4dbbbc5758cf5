"""The maintenance worker's bookkeeping (``sql/maintenance.sql``).

The public methods read: the jobs with their latest runs, a job's runs, and
the lags of what the jobs drain. The writes are the worker's own
(``datalayer/_ops/worker.py``), made while it holds the job's advisory lock.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from .._repository_async import AsyncRepository, execrows, execute, many, one
from .._validation import Instant, JobName, Limit, validated
from ..errors import NotFound
from ..models.maintenance import MaintenanceJob, MaintenanceLags, MaintenanceRun, RunOutcome

__all__ = ["AsyncMaintenanceRepository"]


class _JobState(BaseModel):
    """A job's schedule row, as the worker reads it under the job's lock."""

    model_config = ConfigDict(frozen=True)

    job: str
    next_due_at: datetime
    failures: int
    last_ok_at: datetime | None


class AsyncMaintenanceRepository(AsyncRepository):
    """Periodic jobs: schedules, runs, and the lags of the queues they drain."""

    aggregate = "maintenance"

    _ensure = execute("ensure_maintenance_job")
    _get = one("get_maintenance_job", _JobState)
    _interrupt = execrows("interrupt_maintenance_runs")
    _start = one("start_maintenance_run", MaintenanceRun)
    _finish = one("finish_maintenance_run", MaintenanceRun)
    _schedule = execute("schedule_maintenance_job")
    _jobs = many("list_maintenance_jobs", MaintenanceJob)
    _runs = many("list_maintenance_runs", MaintenanceRun)
    _lags = one("maintenance_lags", MaintenanceLags)

    @validated
    async def jobs(self) -> builtins.list[MaintenanceJob]:
        """Every job a worker has known, by name, with its latest run.

        Raises only the database's errors (``Unavailable``, ``QueryTimeout``).
        """
        return await self._jobs()

    @validated
    async def runs(self, *, job: JobName, limit: Limit = 20) -> builtins.list[MaintenanceRun]:
        """The latest ``limit`` runs of ``job``, newest first (empty for an unknown job).

        Raises ``InvalidInput`` for a malformed job name or limit, before any SQL.
        """
        return await self._runs(job=job, limit=limit)

    @validated
    async def lags(self, *, now: Instant | None = None) -> MaintenanceLags:
        """What the periodic jobs drain, as of ``now`` (default: the current time).

        Raises ``InvalidInput`` for a bad ``now``, before any SQL.
        """
        lags = await self._lags(now=now or datetime.now(UTC))
        if lags is None:  # one row always; None would be a broken query
            raise NotFound("maintenance lags")
        return lags

    # The worker's writes (datalayer/_ops/worker.py); not public.

    async def _job(self, job: str, *, due: datetime) -> _JobState:
        await self._ensure(job=job, due=due)
        state = await self._get(job=job)
        if state is None:
            raise NotFound(f"maintenance job {job}")
        return state

    async def _begin(self, job: str, *, worker: str, attempt: int, now: datetime) -> MaintenanceRun:
        await self._interrupt(job=job, now=now)
        run = await self._start(job=job, worker=worker, attempt=attempt, now=now)
        if run is None:
            raise NotFound(f"maintenance run of {job}")
        return run

    async def _end(
        self,
        run: MaintenanceRun,
        *,
        outcome: RunOutcome,
        now: datetime,
        rows: int | None,
        error: str | None,
    ) -> MaintenanceRun | None:
        return await self._finish(
            id=run.id, outcome=outcome, now=now, rows_touched=rows, error=error
        )

    async def _plan(
        self, job: str, *, due: datetime, failures: int, ok_at: datetime | None
    ) -> None:
        await self._schedule(job=job, due=due, failures=failures, ok_at=ok_at)
