"""The subscription tests about calendar arithmetic again, in sessions whose time zone is not UTC.

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

# The tests whose outcome hangs on calendar arithmetic: periods, trials, renewals, re-anchoring.
_CALENDAR = (
    "test_a_start_without_trial_is_active_for_one_interval_anchored_at_the_start",
    "test_a_requested_trial_is_granted_only_when_the_plan_has_trial_days",
    "test_the_first_period_lasts_the_plans_interval_times_its_count",
    "test_a_downgrade_to_another_interval_re_anchors_the_cycle_at_the_switch",
    "test_renewal_keeps_month_ends_on_the_anchor",
    "test_a_subscription_many_periods_behind_advances_one_period_per_call",
    "test_a_trial_becomes_active_at_the_first_renewal_after_it_ended",
)
for _name, _value in vars(test_subscriptions).items():
    if _name in _CALENDAR or hasattr(_value, "_fixture_function_marker"):
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
