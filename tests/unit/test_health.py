"""Health thresholds and the worker's schedule settings: pure rules, no database."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from datalayer import HealthThresholds, InvalidInput
from datalayer._health import assess
from datalayer._ops.worker import JOBS, WorkerSettings, parse_schedule
from datalayer.models.maintenance import MaintenanceJob, MaintenanceLags

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


def lags(**changes: Any) -> MaintenanceLags:
    values: dict[str, Any] = {
        "usage_queue_depth": 0,
        "usage_queue_oldest": None,
        "analytics_queue_depth": 0,
        "analytics_queue_oldest": None,
        "partitions_until": NOW + timedelta(days=90),
        "renewals_due": 0,
        "renewals_oldest": None,
        "periods_uninvoiced": 0,
        "periods_oldest": None,
        "last_backup_at": None,
    }
    return MaintenanceLags(**{**values, **changes})


def job(**changes: Any) -> MaintenanceJob:
    values: dict[str, Any] = {
        "job": "rollups",
        "next_due_at": NOW + timedelta(seconds=30),
        "failures": 0,
        "last_ok_at": NOW,
        "last_started_at": NOW,
        "last_finished_at": NOW,
        "last_outcome": "ok",
        "last_rows_touched": 0,
        "last_error": None,
    }
    return MaintenanceJob(**{**values, **changes})


def status_of(name: str, **kwargs: Any) -> str:
    health = assess(NOW, pool={"requests_waiting": 0}, **kwargs)
    [check] = [c for c in health.checks if c.name == name]
    return check.status


def test_everything_quiet_is_ok() -> None:
    health = assess(NOW, pool={}, lags=lags(), jobs=[job()])
    assert health.status == "ok"
    assert {c.status for c in health.checks} == {"ok"}


@pytest.mark.parametrize(
    ("age_s", "expected"), [(0, "ok"), (299, "ok"), (300, "warning"), (3599, "warning"),
                            (3600, "failing")],
)  # fmt: skip
def test_a_rollup_queue_is_judged_by_the_age_of_its_oldest_entry(age_s: int, expected: str) -> None:
    oldest = NOW - timedelta(seconds=age_s)
    queue = lags(usage_queue_depth=1, usage_queue_oldest=oldest)
    assert status_of("usage_rollup_queue", lags=queue, jobs=[]) == expected


@pytest.mark.parametrize(
    ("days", "expected"), [(90, "ok"), (28, "ok"), (27.9, "warning"), (7, "warning"),
                           (6.9, "failing"), (-1, "failing")],
)  # fmt: skip
def test_partitions_fewer_days_ahead_are_worse(days: float, expected: str) -> None:
    until = NOW + timedelta(days=days)
    assert status_of("partitions", lags=lags(partitions_until=until), jobs=[]) == expected


def test_no_partitions_at_all_is_failing() -> None:
    assert status_of("partitions", lags=lags(partitions_until=None), jobs=[]) == "failing"


@pytest.mark.parametrize(
    ("overdue_s", "failures", "expected"),
    [(0, 0, "ok"), (299, 2, "ok"), (300, 0, "warning"), (0, 3, "warning"), (3600, 0, "failing"),
     (0, 10, "failing")],
)  # fmt: skip
def test_a_job_is_judged_by_how_overdue_it_is_and_its_failures_in_a_row(
    overdue_s: int, failures: int, expected: str
) -> None:
    late = job(next_due_at=NOW - timedelta(seconds=overdue_s), failures=failures)
    assert status_of("job:rollups", lags=lags(), jobs=[late]) == expected


def test_the_worst_check_is_the_overall_status_and_a_lost_database_fails() -> None:
    warning = assess(NOW, pool={"requests_waiting": 3}, lags=lags(), jobs=[])
    assert warning.status == "warning"
    lost = assess(NOW, pool={}, lags=None, jobs=[], database_error="Unavailable: gone")
    assert lost.status == "failing"
    assert lost.checks[0].name == "database"
    assert "Unavailable: gone" in lost.checks[0].detail
    assert not any(c.name == "partitions" for c in lost.checks)


def test_an_unreachable_cache_is_a_warning_and_no_cache_is_no_check() -> None:
    assert status_of("cache", lags=lags(), jobs=[], cache_reachable=False) == "warning"
    quiet = assess(NOW, pool={}, lags=lags(), jobs=[])
    assert not any(c.name == "cache" for c in quiet.checks)


def test_thresholds_can_be_tightened() -> None:
    strict = HealthThresholds(rollup_queue_age=(1, 2))
    queue = lags(usage_queue_depth=1, usage_queue_oldest=NOW - timedelta(seconds=2))
    assert status_of("usage_rollup_queue", lags=queue, jobs=[], thresholds=strict) == "failing"


def test_a_backup_is_judged_by_its_age_and_none_is_ok() -> None:
    assert status_of("backup", lags=lags(), jobs=[]) == "ok"
    old = lags(last_backup_at=NOW - timedelta(hours=27))
    assert status_of("backup", lags=old, jobs=[]) == "warning"


# -- the worker's settings -------------------------------------------------------------------


def test_a_schedule_sets_intervals_and_turns_jobs_off() -> None:
    assert parse_schedule("rollups=30, billing=off,") == {"rollups": 30.0, "billing": None}
    config = WorkerSettings.from_env({"DATALAYER_JOBS": "rollups=30,billing=off"})
    assert config.interval("rollups") == 30.0
    assert config.interval("billing") is None
    assert config.interval("partitions") == JOBS["partitions"].every


@pytest.mark.parametrize(
    "text", ["vacuum=10", "rollups", "rollups=0", "rollups=nan", "rollups=-5", "rollups=1e9",
             "rollups=fast"],
)  # fmt: skip
def test_a_bad_schedule_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        WorkerSettings.from_env({"DATALAYER_JOBS": text})
    assert info.value.field == "DATALAYER_JOBS"


def test_archive_and_backup_run_only_with_their_directory(tmp_path: Path) -> None:
    bare = WorkerSettings.from_env({})
    assert bare.interval("archive") is None
    assert bare.interval("backup") is None
    env = {"DATALAYER_BACKUP_DIR": str(tmp_path), "DATALAYER_ARCHIVE_DIR": str(tmp_path)}
    configured = WorkerSettings.from_env(env)
    assert configured.interval("backup") == 86400
    assert configured.interval("archive") == 86400


def test_only_limits_the_jobs_and_refuses_unknown_ones() -> None:
    config = WorkerSettings.from_env({}, only=("rollups",))
    assert [name for name in JOBS if config.interval(name) is not None] == ["rollups"]
    with pytest.raises(InvalidInput) as info:
        WorkerSettings.from_env({}, only=("rollups", "vacuum"))
    assert info.value.field == "only"


@pytest.mark.parametrize(
    ("env", "field"),
    [({"DATALAYER_WORKER_POLL": "soon"}, "DATALAYER_WORKER_POLL"),
     ({"DATALAYER_WORKER_POLL": "0"}, "poll"),
     ({"DATALAYER_ARCHIVE_AFTER_MONTHS": "0"}, "DATALAYER_ARCHIVE_AFTER_MONTHS")],
)  # fmt: skip
def test_bad_worker_settings_are_refused(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        WorkerSettings.from_env(env)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("replica", "expected"),
    [((True, 120.0), "ok"), ((True, 20_000.0), "warning"), ((False, 0.0), "warning"),
     ((False, None), "warning")],
)  # fmt: skip
def test_a_replica_down_promoted_or_lagging_is_a_warning(
    replica: tuple[bool, float | None], expected: str
) -> None:
    status = status_of("replica:1", lags=lags(), jobs=[], replicas=[replica])
    assert status == expected


@pytest.mark.parametrize(
    "pair", [("5", 10), (5,), (5, 10, 20), (math.nan, 10), (True, 10), [5, 10], None]
)
def test_thresholds_refuse_anything_but_a_pair_of_finite_numbers(pair: object) -> None:
    with pytest.raises(InvalidInput) as info:
        HealthThresholds(backup_age=pair)  # type: ignore[arg-type]
    assert info.value.field == "backup_age"
