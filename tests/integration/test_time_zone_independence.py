"""The subscription tests again, in sessions whose time zone is not UTC.

Behind PgBouncer the startup option that makes sessions UTC never reaches the
server, so the SQL must not depend on the session's time zone: calendar
arithmetic on ``timestamptz`` (``+ interval '1 month'``, ``make_interval``)
is done ``AT TIME ZONE 'UTC'``. In New York a period from Jan 31 00:00 UTC
would otherwise end on Mar 1 (Jan 30 19:00 local plus a month), and across the
DST change a day would last 23 or 25 hours.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import test_subscriptions

from datalayer import UnitOfWork

for _name, _value in vars(test_subscriptions).items():
    if _name.startswith("test_") or hasattr(_value, "_fixture_function_marker"):
        globals()[_name] = _value


@pytest.fixture
def conn(_shared_conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    with _shared_conn.transaction(force_rollback=True):
        _shared_conn.execute("SET LOCAL timezone = 'America/New_York'")
        yield _shared_conn


def test_the_sessions_here_are_not_utc(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("SHOW TimeZone").fetchone() == ("America/New_York",)


def test_a_daily_plan_period_across_the_dst_change_lasts_24_hours(uow: UnitOfWork) -> None:
    plan = test_subscriptions.publish(uow, "daily", interval="day")
    account = uow.accounts.create(name="NY").id
    start = datetime(2026, 3, 8, tzinfo=UTC)  # New York springs forward that day
    sub = uow.subscriptions.start(account_id=account, plan_id=plan.id, now=start)
    # In UTC: Python subtracts two datetimes of one ZoneInfo by their wall clocks.
    end, begin = sub.current_period_end.astimezone(UTC), sub.current_period_start.astimezone(UTC)
    assert (begin, end - begin) == (start, timedelta(hours=24))
