"""Health: measurements in, one status per check out (``ok``, ``warning``, ``failing``).

Pure: ``Database.health()`` gathers the pool's counters, the maintenance lags
and the jobs, and ``assess`` holds each to its thresholds. The worst check is
the overall status; ``datalayer health`` exits non-zero when it is
``failing``, so it can be a container health check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from .errors import InvalidInput
from .models.maintenance import Health, HealthCheck, HealthStatus, MaintenanceJob, MaintenanceLags

__all__ = ["HealthThresholds", "assess"]

_RANK: dict[HealthStatus, int] = {"ok": 0, "warning": 1, "failing": 2}


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """When a measurement stops being ``ok``: (warning, failing), in seconds or counts.

    Ages are of the oldest item waiting; ``partitions_days`` is how far ahead
    the event tables are partitioned (below it is worse, so the pair falls);
    ``job_overdue`` is how long a job's next run is past due (no worker is
    running it); ``job_failures`` is failed runs in a row.
    """

    rollup_queue_age: tuple[float, float] = (300, 3600)
    partitions_days: tuple[float, float] = (28, 7)
    renewal_age: tuple[float, float] = (900, 6 * 3600)
    uninvoiced_period_age: tuple[float, float] = (3 * 3600, 24 * 3600)
    backup_age: tuple[float, float] = (26 * 3600, 50 * 3600)
    job_overdue: tuple[float, float] = (300, 3600)
    job_failures: tuple[float, float] = (3, 10)
    pool_waiting: tuple[float, float] = (1, 50)

    def __post_init__(self) -> None:
        """Refuse anything but a pair of finite numbers, naming the field."""
        for name in self.__slots__:
            pair = getattr(self, name)
            numbers = (
                isinstance(pair, tuple)
                and len(pair) == 2
                and all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                    for x in pair
                )
            )
            if not numbers:
                raise InvalidInput("must be a (warning, failing) pair of numbers", field=name)


def _above(value: float, limits: tuple[float, float]) -> HealthStatus:
    warning, failing = limits
    return "failing" if value >= failing else "warning" if value >= warning else "ok"


def _below(value: float, limits: tuple[float, float]) -> HealthStatus:
    warning, failing = limits
    return "failing" if value < failing else "warning" if value < warning else "ok"


def _age(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max(0.0, (now - since).total_seconds())


def _check(name: str, status: HealthStatus, value: float | None, detail: str) -> HealthCheck:
    return HealthCheck(name=name, status=status, value=value, detail=detail)


def _limits(limits: tuple[float, float], unit: str) -> str:
    return f"warning at {limits[0]:g}{unit}, failing at {limits[1]:g}{unit}"


def assess(
    now: datetime,
    *,
    pool: dict[str, int],
    lags: MaintenanceLags | None,
    jobs: Sequence[MaintenanceJob],
    database_error: str | None = None,
    cache_reachable: bool | None = None,
    replicas: Sequence[tuple[bool, float | None]] = (),
    replica_max_lag_ms: float = 10_000,
    thresholds: HealthThresholds | None = None,
) -> Health:
    """Hold each measurement to ``thresholds``; the worst check is the overall status.

    ``lags`` is ``None`` when the database could not be read (``database_error``
    says why): that check fails and the lag checks are left out.
    ``cache_reachable`` is ``None`` without a cache; an unreachable cache is
    a warning (reads fall back to PostgreSQL), as is a replica (``replicas``:
    per replica, still a standby and its replay lag in ms, ``None`` when
    unreachable) that is down, promoted or lagging past ``replica_max_lag_ms``.
    """
    t = thresholds or HealthThresholds()
    checks: list[HealthCheck] = []
    if lags is None:
        detail = f"cannot read the database: {database_error or 'unknown error'}"
        checks.append(_check("database", "failing", None, detail))
    else:
        checks.append(_check("database", "ok", None, "answers"))
    waiting = float(pool.get("requests_waiting", 0))
    checks.append(
        _check(
            "pool",
            _above(waiting, t.pool_waiting),
            waiting,
            f"{waiting:g} callers waiting for a connection, {pool.get('pool_size', 0)} "
            f"connections, {pool.get('pool_available', 0)} idle "
            f"({_limits(t.pool_waiting, ' waiting')})",
        )
    )
    if cache_reachable is not None:
        checks.append(
            _check(
                "cache",
                "ok" if cache_reachable else "warning",
                None,
                "Redis answers"
                if cache_reachable
                else "Redis does not answer: reads come from PostgreSQL",
            )
        )
    for number, (standby, lag_ms) in enumerate(replicas, 1):
        checks.append(_replica_check(number, standby, lag_ms, replica_max_lag_ms))
    if lags is not None:
        checks += _lag_checks(now, lags, t)
    for job in jobs:
        checks.append(_job_check(now, job, t))
    worst = max((c.status for c in checks), key=_RANK.__getitem__)
    return Health(status=worst, checked_at=now, checks=checks)


def _replica_check(
    number: int, standby: bool, lag_ms: float | None, max_lag_ms: float
) -> HealthCheck:
    """A replica that is down, promoted or lagging is skipped (reads go to the primary):
    a warning, not a failure."""
    name = f"replica:{number}"
    if lag_ms is None:
        return _check(name, "warning", None, "unreachable: its reads go to the primary")
    if not standby:
        return _check(name, "warning", lag_ms, "not a standby (promoted?): reads go to the primary")
    status: HealthStatus = "warning" if lag_ms > max_lag_ms else "ok"
    return _check(name, status, lag_ms, f"replays {lag_ms:.0f} ms behind (skipped past "
                  f"{max_lag_ms:g} ms)")  # fmt: skip


def _aged(
    name: str, now: datetime, oldest: datetime | None, limits: tuple[float, float], what: str
) -> HealthCheck:
    """A check of how long the oldest waiting item (``oldest``) has waited."""
    age = _age(now, oldest)
    return _check(name, _above(age, limits), age, f"{what}, oldest {age:.0f}s "
                  f"({_limits(limits, 's')})")  # fmt: skip


def _lag_checks(now: datetime, lags: MaintenanceLags, t: HealthThresholds) -> list[HealthCheck]:
    checks = [
        _aged("usage_rollup_queue", now, lags.usage_queue_oldest, t.rollup_queue_age,
              f"{lags.usage_queue_depth} queued"),
        _aged("analytics_rollup_queue", now, lags.analytics_queue_oldest, t.rollup_queue_age,
              f"{lags.analytics_queue_depth} queued"),
        _aged("renewals", now, lags.renewals_oldest, t.renewal_age,
              f"{lags.renewals_due} subscriptions due for renewal"),
        _aged("billing_periods", now, lags.periods_oldest, t.uninvoiced_period_age,
              f"{lags.periods_uninvoiced} closed periods without an invoice"),
    ]  # fmt: skip
    if lags.partitions_until is None:
        checks.append(_check("partitions", "failing", None, "no event table partitions"))
    else:
        days = (lags.partitions_until - now).total_seconds() / 86400
        checks.append(
            _check(
                "partitions",
                _below(days, t.partitions_days),
                days,
                f"partitioned until {lags.partitions_until:%Y-%m-%d}, {days:.1f} days ahead "
                f"(warning below {t.partitions_days[0]:g}, failing below "
                f"{t.partitions_days[1]:g} days)",
            )
        )
    if lags.last_backup_at is None:
        checks.append(_check("backup", "ok", None, "no backup made by the worker (not scheduled)"))
    else:
        checks.append(_aged("backup", now, lags.last_backup_at, t.backup_age, "last backup"))
    return checks


def _job_check(now: datetime, job: MaintenanceJob, t: HealthThresholds) -> HealthCheck:
    overdue = _age(now, job.next_due_at) if job.next_due_at < now else 0.0
    status = max(
        _above(overdue, t.job_overdue),
        _above(float(job.failures), t.job_failures),
        key=_RANK.__getitem__,
    )
    last = job.last_outcome or "never run"
    error = f", last error: {job.last_error}" if job.failures and job.last_error else ""
    return _check(
        f"job:{job.job}",
        status,
        overdue,
        f"last run {last}, {job.failures} failures in a row, due "
        f"{'now' if overdue else job.next_due_at.isoformat()}"
        f"{f', {overdue:.0f}s overdue' if overdue else ''}{error}",
    )
