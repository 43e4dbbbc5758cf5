"""Usage reports equal a fresh aggregate of the raw events not cancelled, rolled up or not."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from datalayer import Database, InvalidInput, UnitOfWork
from datalayer._ops.rollups import rebuild_rollups, refresh_rollups
from datalayer.repositories import UsageReportRepository

pytestmark = pytest.mark.both_apis

Row = tuple[Any, ...]
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _rows(db: Database | UnitOfWork, sql: str, params: tuple[Any, ...]) -> list[Row]:
    if isinstance(db, UnitOfWork):
        return [tuple(r) for r in db.connection.execute(sql, params)]  # type: ignore[arg-type]
    with db.connection() as conn:
        return [tuple(r) for r in conn.execute(sql, params)]  # type: ignore[arg-type]


# Usage is the accepted events that are not cancelled.
NOT_CANCELLED = (
    " AND NOT EXISTS (SELECT 1 FROM usage_cancellations c"
    " WHERE c.account_id = usage_events.account_id AND c.event_id = usage_events.id)"
)


def _raw(db: Database | UnitOfWork, account_id: int, lo: datetime, hi: datetime) -> list[Row]:
    return _rows(
        db,
        "SELECT meter_code, count(*), sum(quantity), max(quantity) FROM usage_events"
        " WHERE account_id = %s AND occurred_at >= %s AND occurred_at < %s"
        + NOT_CANCELLED
        + " GROUP BY 1 ORDER BY 1",
        (account_id, lo, hi),
    )


def _raw_series(
    db: Database, account_id: int, meter: str, lo: datetime, hi: datetime, bucket: str
) -> list[Row]:
    return _rows(
        db,
        "SELECT date_trunc(%s, occurred_at, 'UTC'), count(*), sum(quantity), max(quantity)"
        " FROM usage_events WHERE account_id = %s AND meter_code = %s"
        " AND occurred_at >= %s AND occurred_at < %s" + NOT_CANCELLED + " GROUP BY 1 ORDER BY 1",
        (bucket, account_id, meter, lo, hi),
    )


def _raw_top(db: Database, meter: str, lo: datetime, hi: datetime, limit: int) -> list[Row]:
    return _rows(
        db,
        "SELECT account_id, count(*), sum(quantity), max(quantity) FROM usage_events"
        " WHERE meter_code = %s AND occurred_at >= %s AND occurred_at < %s"
        + NOT_CANCELLED
        + " GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT %s",
        (meter, lo, hi, limit),
    )


def _totals(db: Database | UnitOfWork, account_id: int, lo: datetime, hi: datetime) -> list[Row]:
    return [
        (t.meter_code, t.event_count, t.quantity_sum, t.quantity_max)
        for t in db.usage_reports.period_totals(
            account_id=account_id, period_start=lo, period_end=hi
        )
    ]


def _series(
    db: Database, account_id: int, meter: str, lo: datetime, hi: datetime, bucket: Any
) -> list[Row]:
    return [
        (b.bucket_start, b.event_count, b.quantity_sum, b.quantity_max)
        for b in db.usage_reports.time_series(
            account_id=account_id, meter_code=meter, start=lo, end=hi, bucket=bucket
        )
    ]


def _top(db: Database, meter: str, lo: datetime, hi: datetime, limit: int) -> list[Row]:
    return [
        (a.account_id, a.event_count, a.quantity_sum, a.quantity_max)
        for a in db.usage_reports.top_accounts(meter_code=meter, start=lo, end=hi, limit=limit)
    ]


def _meters(db: Database) -> None:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation) VALUES"
            " ('api_calls', 'API calls', 'call', 'sum'), ('storage', 'Storage', 'byte', 'max')"
        )


def _event(account_id: int, meter: str, quantity: str, at: datetime, key: str) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "meter_code": meter,
        "quantity": Decimal(quantity),
        "occurred_at": at,
        "idempotency_key": key,
    }


def _refresh_partly(db: Database, batch_size: int) -> None:
    """One refresh batch per account only: some hours rolled up, the rest still queued."""
    with db.unit_of_work() as uow:
        uow.rollups.lock()
        for account_id in uow.rollups.queued_usage_accounts(limit=100):
            days = uow.rollups.refresh_usage_hours(account_id=account_id, batch_size=batch_size)
            uow.rollups.refresh_usage_days(days=days)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def accounts(db: Database, now: datetime) -> tuple[int, int]:
    """Two accounts with four days of usage of two meters, nothing rolled up yet."""
    _meters(db)
    acme = db.accounts.create(name="Acme").id
    other = db.accounts.create(name="Other").id
    rng = random.Random(7)
    events = [
        _event(acme, rng.choice(["api_calls", "api_calls", "storage"]),
               f"{rng.randint(1, 4000) / 100}", now - timedelta(minutes=9 * i), f"a{i}")
        for i in range(700)
    ] + [
        _event(other, "api_calls", f"{rng.randint(1, 900) / 10}",
               now - timedelta(minutes=13 * i + 5), f"o{i}")
        for i in range(400)
    ]  # fmt: skip
    assert db.usage.record_batch(events=events).inserted == 1100
    return acme, other


def test_period_totals_equal_the_raw_aggregate_before_and_after_refresh(db: Database) -> None:
    _meters(db)
    account = db.accounts.create(name="Acme").id
    other = db.accounts.create(name="Other").id
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        {"account_id": acct, "meter_code": meter, "quantity": Decimal(q),
         "occurred_at": now - timedelta(minutes=17 * i), "idempotency_key": f"{acct}-{i}"}
        for i in range(300)
        for acct, meter, q in [(account, "api_calls" if i % 3 else "storage", i % 7 + 1)]
    ] + [
        {"account_id": other, "meter_code": "api_calls", "quantity": Decimal(5),
         "occurred_at": now - timedelta(minutes=i), "idempotency_key": f"o-{i}"}
        for i in range(50)
    ]  # fmt: skip
    assert db.usage.record_batch(events=events).inserted == 350
    # Unaligned edges, in the middle of hours.
    lo = now - timedelta(hours=50, minutes=13)
    hi = now - timedelta(hours=3, minutes=41)
    expected = _raw(db, account, lo, hi)
    assert expected  # the range holds events

    def totals() -> list[tuple[Any, ...]]:
        return [
            (t.meter_code, t.event_count, t.quantity_sum, t.quantity_max)
            for t in db.usage_reports.period_totals(
                account_id=account, period_start=lo, period_end=hi
            )
        ]

    assert totals() == expected  # nothing rolled up yet: all from raw hours

    def cancel(key: str) -> list[tuple[Any, ...]]:
        """Cancel an event; return the fresh aggregate, which must have changed."""
        before = _raw(db, account, lo, hi)
        db.usage.cancel(account_id=account, idempotency_key=key, reason="test")
        after = _raw(db, account, lo, hi)
        assert after != before, key  # the event was inside the range
        return after

    expected = cancel(f"{account}-20")  # before any refresh
    assert totals() == expected
    refresh_rollups(db)
    assert totals() == expected  # all from rollups but the edge hours
    late = now - timedelta(hours=20, minutes=5)  # a late event for a rolled-up hour
    db.usage.record_batch(
        events=[{"account_id": account, "meter_code": "api_calls", "quantity": Decimal(100),
                 "occurred_at": late, "idempotency_key": "late"}]
    )  # fmt: skip
    expected = _raw(db, account, lo, hi)
    assert totals() == expected  # the dirty hour is read raw, not double counted
    refresh_rollups(db)
    assert totals() == expected
    # Cancellations in rolled-up hours (of both meters, one 17 minutes before the
    # range's end), and of the late event.
    for key in (f"{account}-100", f"{account}-99", f"{account}-14", "late"):
        expected = cancel(key)
        assert totals() == expected, key  # each cancellation's hour is read raw at once
    refresh_rollups(db)
    assert totals() == expected  # and the refresh rolls the hours up without them


def test_totals_and_time_series_equal_raw_aggregates_in_every_refresh_state(
    db: Database, accounts: tuple[int, int], now: datetime
) -> None:
    acme, _ = accounts
    rng = random.Random(11)
    day0 = now.replace(hour=0, minute=0, second=0) - 4 * DAY
    # Aligned and unaligned ranges: whole days, whole hours, within one hour,
    # several days with partial edges, and random ones.
    ranges = [
        (day0, day0 + 5 * DAY),
        (day0 + DAY, day0 + 3 * DAY),
        (day0 + 5 * HOUR, day0 + 50 * HOUR),
        (day0 + DAY + timedelta(minutes=10), day0 + DAY + timedelta(minutes=50)),
        (day0 + timedelta(hours=30, minutes=1), day0 + timedelta(hours=31, minutes=59)),
        (now - timedelta(days=3, minutes=7), now + timedelta(seconds=1)),
    ]
    for _ in range(12):
        a, b = sorted(rng.uniform(0, 5 * 86400) for _ in range(2))
        ranges.append((day0 + timedelta(seconds=int(a)), day0 + timedelta(seconds=int(b) + 1)))

    def check(state: str) -> None:
        for lo, hi in ranges:
            assert _totals(db, acme, lo, hi) == _raw(db, acme, lo, hi), (state, lo, hi)
            for meter in ("api_calls", "storage"):
                for bucket in ("hour", "day"):
                    got = _series(db, acme, meter, lo, hi, bucket)
                    assert got == _raw_series(db, acme, meter, lo, hi, bucket), (
                        state, meter, bucket, lo, hi,
                    )  # fmt: skip

    check("nothing rolled up")
    _refresh_partly(db, batch_size=40)
    check("partly rolled up")
    refresh_rollups(db)
    check("all rolled up")
    late = [
        _event(acme, "api_calls", "500", day0 + timedelta(days=1, hours=7, minutes=3), "late1"),
        _event(acme, "storage", "0.5", day0 + timedelta(days=2, hours=23, minutes=59), "late2"),
        _event(acme, "api_calls", "7", day0 + timedelta(days=3, minutes=1), "late3"),
    ]
    assert db.usage.record_batch(events=late).inserted == 3
    check("late events in rolled-up hours")
    refresh_rollups(db)
    check("late events rolled up")
    # Cancellations: every api_calls event of one hour, single events of both
    # meters, a late one; then a partial refresh, then a full one.
    hour = day0 + timedelta(days=2, hours=5)
    whole_hour = [
        key
        for (key,) in _rows(
            db,
            "SELECT idempotency_key FROM usage_events WHERE account_id = %s"
            " AND meter_code = 'api_calls' AND occurred_at >= %s AND occurred_at < %s",
            (acme, hour, hour + HOUR),
        )
    ]
    assert whole_hour
    for key in [*whole_hour, "a5", "a300", "a301", "late1", "late2"]:
        db.usage.cancel(account_id=acme, idempotency_key=key, reason="test")
    assert _series(db, acme, "api_calls", hour, hour + HOUR, "hour") == []
    check("cancellations in rolled-up hours")
    _refresh_partly(db, batch_size=3)
    check("cancellations partly rolled up")
    refresh_rollups(db)
    check("cancellations rolled up")


def test_a_clean_whole_day_is_read_from_its_day_rollup(
    db: Database, accounts: tuple[int, int], now: datetime
) -> None:
    acme, _ = accounts
    refresh_rollups(db)
    day = now.replace(hour=0, minute=0, second=0) - 2 * DAY
    # Make the day rollup disagree with its hours: a report that reads it shows it.
    with db.connection() as conn:
        conn.execute(
            "UPDATE usage_rollups SET event_count = event_count + 1000"
            " WHERE account_id = %s AND meter_code = 'api_calls' AND granularity = 'day'"
            " AND bucket_start = %s",
            (acme, day),
        )
    (series,) = _series(db, acme, "api_calls", day, day + DAY, "day")
    totals = {r[0]: r[1] for r in _totals(db, acme, day, day + DAY)}
    hours = _series(db, acme, "api_calls", day, day + DAY, "hour")
    assert series[1] == totals["api_calls"] == sum(h[1] for h in hours) + 1000


def test_top_accounts_rank_rolled_up_usage_and_count_the_tail_after_the_next_refresh(
    db: Database, accounts: tuple[int, int], now: datetime
) -> None:
    acme, other = accounts
    third = db.accounts.create(name="Third").id
    hour = now.replace(minute=0, second=0)
    lo, hi = hour - timedelta(days=3, hours=5), hour - 2 * HOUR
    assert _top(db, "api_calls", lo, hi, 10) == []  # nothing rolled up yet: the tail is excluded
    refresh_rollups(db)
    expected = _raw_top(db, "api_calls", lo, hi, 10)
    assert [r[0] for r in expected] == [other, acme]  # the raw ranking has both, in this order
    assert _top(db, "api_calls", lo, hi, 10) == expected
    assert _top(db, "api_calls", lo, hi, 1) == expected[:1]
    assert _top(db, "api_calls", hour - 30 * HOUR, hour - 29 * HOUR, 10) == _raw_top(
        db, "api_calls", hour - 30 * HOUR, hour - 29 * HOUR, 10
    )  # one hour, no whole day
    late = _event(third, "api_calls", "99999", hour - 26 * HOUR, "big")
    assert db.usage.record_batch(events=[late]).inserted == 1
    assert _top(db, "api_calls", lo, hi, 10) == expected  # as of the last refresh
    refresh_rollups(db)
    fresh = _raw_top(db, "api_calls", lo, hi, 10)
    assert fresh[0][0] == third
    assert _top(db, "api_calls", lo, hi, 10) == fresh
    # A cancellation counts, like new usage, from the next refresh on.
    db.usage.cancel(account_id=third, idempotency_key="big", reason="a test call")
    assert _top(db, "api_calls", lo, hi, 10) == fresh  # as of the last refresh
    refresh_rollups(db)
    assert _top(db, "api_calls", lo, hi, 10) == expected == _raw_top(db, "api_calls", lo, hi, 10)


def test_top_accounts_refuse_unaligned_or_empty_ranges(uow: UnitOfWork, now: datetime) -> None:
    hour = now.replace(minute=0, second=0)
    with pytest.raises(InvalidInput) as info:
        uow.usage_reports.top_accounts(
            meter_code="api_calls", start=hour - DAY + timedelta(minutes=1), end=hour
        )
    assert info.value.field == "start"
    with pytest.raises(InvalidInput) as info:
        uow.usage_reports.top_accounts(meter_code="api_calls", start=hour, end=hour)
    assert info.value.field == "end"
    with pytest.raises(InvalidInput) as info:
        uow.usage_reports.top_accounts(meter_code="api_calls", start=hour - DAY, end=hour, limit=0)
    assert info.value.field == "limit"


def test_reports_refuse_naive_datetimes_empty_ranges_and_bad_buckets(uow: UnitOfWork) -> None:
    now = datetime.now(UTC)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("period_start", lambda: uow.usage_reports.period_totals(
            account_id=1, period_start=datetime(2026, 1, 1), period_end=now)),
        ("period_end", lambda: uow.usage_reports.period_totals(
            account_id=1, period_start=now, period_end=now)),
        ("end", lambda: uow.usage_reports.time_series(
            account_id=1, meter_code="api_calls", start=now, end=now - HOUR, bucket="hour")),
        ("bucket", lambda: uow.usage_reports.time_series(
            account_id=1, meter_code="api_calls", start=now - HOUR, end=now,
            bucket="minute")),  # type: ignore[arg-type]
        ("end", lambda: uow.usage_reports.time_series(
            account_id=1, meter_code="api_calls", start=now - 500 * DAY, end=now, bucket="hour")),
        ("meter_code", lambda: uow.usage_reports.time_series(
            account_id=1, meter_code="API", start=now - HOUR, end=now, bucket="hour")),
    ]  # fmt: skip
    for field, call in calls:
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.field == field


@pytest.mark.not_on_citus(
    "it asserts PostgreSQL's own plan; on Citus every plan is a Custom Scan "
    "(test_citus_router.py checks the routing)"
)
def test_month_totals_read_rollups_and_only_dirty_hours_by_index(
    admin_conn: psycopg.Connection[Any], now: datetime
) -> None:
    # As the admin: a bulk load's rebuild truncates, and only a table's owner may ANALYZE.
    uow = UnitOfWork(admin_conn)
    conn = uow.connection
    conn.execute(
        "INSERT INTO meters (code, name, unit, aggregation) VALUES"
        " ('api_calls', 'API calls', 'call', 'sum'), ('storage', 'Storage', 'byte', 'max'),"
        " ('uploads', 'Uploads', 'file', 'sum')"
    )
    accounts = [uow.accounts.create(name=f"A{i}").id for i in range(3)]
    hour = now.replace(minute=0, second=0)
    # 30 days of every meter, a few events an hour, for three accounts:
    # ~6,500 hour and day rollups, ~20,000 events.
    conn.execute(
        "INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,"
        " idempotency_key)"
        " SELECT a, m, (h + k) %% 9 + 1, %s - h * interval '1 hour' + k * interval '13 minutes',"
        "  concat_ws('-', a, m, h, k)"
        " FROM unnest(%s::bigint[]) a, unnest(ARRAY['api_calls', 'storage', 'uploads']) m,"
        "  generate_series(1, 720) h, generate_series(0, 2) k",
        (hour, accounts),
    )
    rebuild_rollups(conn)  # the set-based rebuild for bulk loads
    late = [
        _event(accounts[0], "api_calls", "5", hour - timedelta(days=9, minutes=-7), "late1"),
        _event(accounts[0], "storage", "5", hour - timedelta(days=20, minutes=-31), "late2"),
    ]
    assert uow.usage.record_batch(events=late).inserted == 2
    uow.usage.cancel(account_id=accounts[0], idempotency_key="late1", reason="test")
    # A few more cancellations (as cancel() stores them) in rolled-up hours.
    conn.execute(
        "INSERT INTO usage_cancellations (account_id, event_id, occurred_at, meter_code,"
        " quantity, idempotency_key, reason)"
        " SELECT account_id, id, occurred_at, meter_code, quantity, idempotency_key, 'test'"
        " FROM usage_events WHERE id % 500 = 0 ON CONFLICT DO NOTHING"
    )
    conn.execute(
        "INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)"
        " SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')"
        " FROM usage_cancellations WHERE idempotency_key <> 'late1'"
    )
    conn.execute("ANALYZE usage_cancellations")
    conn.execute("ANALYZE usage_rollup_queue")
    conn.execute("ANALYZE usage_events")
    conn.execute("ANALYZE usage_rollups")
    (rollups,) = conn.execute("SELECT count(*) FROM usage_rollups").fetchone()  # type: ignore[misc]
    assert rollups > 6000
    lo = hour - timedelta(days=30, minutes=17)
    hi = hour - timedelta(minutes=23)
    assert _totals(uow, accounts[0], lo, hi) == _raw(uow, accounts[0], lo, hi)
    query = UsageReportRepository._period_totals.query
    assert query is not None
    params = {"account_id": accounts[0], "period_start": lo, "period_end": hi}
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query.sql, params))
    analyzed = "\n".join(
        r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + query.sql, params)
    )
    assert "usage_events" in plan  # dirty and partial hours are read raw...
    assert "usage_cancellations" in plan  # ...without the cancelled events
    for text in (plan, analyzed):
        assert "Seq Scan on usage_events" not in text, text  # ...through the index only
        assert "Seq Scan on usage_rollups" not in text, text
    day_rows = [line for line in analyzed.splitlines() if "granularity = 'day'" in line]
    assert day_rows  # whole clean days come from day rollups
