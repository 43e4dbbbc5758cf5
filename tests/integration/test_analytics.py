"""Analytics: batches stored whole or rejected with reasons; dashboards equal raw aggregates."""

from __future__ import annotations

import itertools
import random
import secrets
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from datalayer import Database, InvalidInput, PartitionMissing, UnitOfWork
from datalayer._ops.rollups import refresh_rollups
from datalayer.models.analytics import AnalyticsEventIn
from datalayer.repositories import AnalyticsRepository

pytestmark = pytest.mark.both_apis

DAY = timedelta(days=1)


def _event(account_id: int, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "account_id": account_id,
        "category": "behaviour",
        "name": "page.view",
        "occurred_at": datetime.now(UTC) - timedelta(minutes=1),
        "user_id": 1,
    }
    return {**base, **changes}


def _count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM analytics_events").fetchone()
    assert row is not None
    return int(row[0])


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


@pytest.fixture
def account_id(db: Database) -> int:
    return db.accounts.create(name="Acme").id


@pytest.fixture
def tx_account_id(uow: UnitOfWork) -> int:
    """An account in the rolled-back test transaction."""
    return uow.accounts.create(name="Acme").id


def test_a_batch_stores_its_good_events_and_rejects_bad_ones_with_their_reason(
    uow: UnitOfWork, tx_account_id: int
) -> None:
    account_id = tx_account_id
    now = datetime.now(UTC)
    batch: list[Any] = [
        _event(account_id),
        _event(account_id, category="perf"),
        _event(account_id, name="Page View"),
        _event(account_id, category="performance", name="api.get"),  # no duration
        _event(account_id, category="performance", name="api.get", duration_ms=Decimal(-1)),
        _event(account_id, occurred_at=datetime(2026, 1, 1)),  # naive
        _event(account_id, occurred_at=now - timedelta(days=36)),
        _event(account_id, occurred_at=now + timedelta(minutes=10)),
        _event(account_id, properties=["not", "an", "object"]),
        _event(account_id, properties={"nul": "a\x00b"}),
        _event(account_id, properties={"x": float("nan")}),
        _event(2**62),  # no such account
        _event(account_id, properties={"blob": secrets.token_urlsafe(6000)}),
        _event(
            account_id,
            category="performance",
            name="api.get",
            duration_ms=Decimal("12.5"),
            properties={"route": "/v1/things", "ok": True},
        ),
        AnalyticsEventIn(
            account_id=account_id, category="feature", name="export:csv", occurred_at=now
        ),
    ]
    result = uow.analytics.record_batch(events=batch)
    assert result.inserted == 3
    reasons = {r.index: r.reason for r in result.rejected}
    assert sorted(reasons) == list(range(1, 13))
    assert reasons[1].startswith("bad category")
    assert reasons[2].startswith("bad name")
    assert reasons[3] == "bad duration_ms: a performance event needs a duration"
    assert reasons[4].startswith("bad duration_ms")
    assert reasons[5].startswith("bad occurred_at")
    assert "older than 35 days" in reasons[6]
    assert "in the future" in reasons[7]
    assert reasons[8].startswith("bad properties")
    assert reasons[9].startswith("bad properties: contains a NUL character")
    assert reasons[10].startswith("bad properties")
    assert reasons[11] == "unknown account"
    assert reasons[12] == "bad properties: larger than 4096 bytes of JSON text"
    assert _count(uow.connection) == 3
    stored = uow.connection.execute(
        "SELECT category, name, duration_ms, properties FROM analytics_events ORDER BY id"
    ).fetchall()
    assert stored == [
        ("behaviour", "page.view", None, {}),
        ("performance", "api.get", Decimal("12.500"), {"route": "/v1/things", "ok": True}),
        ("feature", "export:csv", None, {}),
    ]


def test_a_batch_is_all_or_nothing_for_its_accepted_events(
    db: Database, account_id: int, fresh_admin_url: str
) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(fresh_admin_url, autocommit=True) as admin:  # only an admin drops
        admin.execute(
            psycopg.sql.SQL("DROP TABLE {}").format(
                psycopg.sql.Identifier(f"analytics_events_{now:%Y_%m}")
            )
        )
    last_month = now.replace(day=1) - timedelta(hours=1)
    batch = [
        _event(account_id, occurred_at=last_month),  # its partition exists
        _event(account_id, name="bad name"),  # rejected before any SQL
        _event(account_id, occurred_at=now - timedelta(minutes=1)),  # this month: none
    ]
    with pytest.raises(PartitionMissing):
        db.analytics.record_batch(events=batch)
    with db.connection() as conn:
        assert _count(conn) == 0


def test_a_unit_of_work_can_record_several_batches(uow: UnitOfWork, tx_account_id: int) -> None:
    assert uow.analytics.record_batch(events=[_event(tx_account_id)] * 3).inserted == 3
    assert uow.analytics.record_batch(events=[_event(tx_account_id)] * 2).inserted == 2
    assert _count(uow.connection) == 5
    assert uow.analytics.record_batch(events=[]).inserted == 0
    row = uow.connection.execute("SELECT to_regclass('pg_temp.analytics_staging')").fetchone()
    assert row == (None,)  # the staging table does not outlive its batch


def _seed(db: Database, account_id: int, other: int) -> list[dict[str, Any]]:
    """~30 days of every category, crossing month and ISO-week boundaries, for two accounts."""
    rng = random.Random(5)
    today = datetime.now(UTC).date()
    events: list[dict[str, Any]] = []
    for offset in range(1, 34):  # 33 days always hold a 1st of the month and 4 Mondays
        day = today - offset * DAY
        for user in range(1, 13):
            if (offset * 7 + user * 3) % 5 < 2:  # each user active on some days only
                continue
            at = _noon(day) + timedelta(minutes=user)
            names = [("behaviour", rng.choice(["page.view", "signup"]), None)]
            for _ in range(rng.randint(0, 3)):
                names.append(("feature", rng.choice(["export:csv", "search", "share"]), None))
            for _ in range(rng.randint(1, 4)):
                duration = Decimal(rng.randint(1, 900_000)) / 1000
                names.append(("performance", rng.choice(["api.get", "api.list"]), duration))
            events += [
                _event(account_id, user_id=user, occurred_at=at, category=c, name=n, duration_ms=d)
                for c, n, d in names
            ]
        events.append(_event(account_id, user_id=None, occurred_at=_noon(day)))  # anonymous
        events.append(
            _event(other, user_id=99, occurred_at=_noon(day), category="feature", name="search")
        )
    result = db.analytics.record_batch(events=events)
    assert result.rejected == []
    return [e for e in events if e["account_id"] == account_id]


def _period(day: date, window: str) -> date:
    if window == "week":
        return day - timedelta(days=day.weekday())
    if window == "month":
        return day.replace(day=1)
    return day


def test_active_users_per_day_week_and_month_equal_the_distinct_users_of_the_raw_events(
    db: Database, account_id: int
) -> None:
    other = db.accounts.create(name="Other").id
    events = _seed(db, account_id, other)
    today = datetime.now(UTC).date()
    # Unaligned on purpose: the first and last periods are clipped to the range,
    # which always crosses a month boundary.
    start, end = today - 33 * DAY, today - DAY
    before = db.analytics.active_users(
        account_id=account_id, start_date=start, end_date=end, window="day"
    )
    assert len(before) == 32
    assert {r.active_users for r in before} == {0}  # nothing rolled up yet
    refresh_rollups(db)
    for window in ("day", "week", "month"):
        users: dict[date, set[int]] = defaultdict(set)
        for e in events:
            day = e["occurred_at"].date()
            if start <= day < end and e["user_id"] is not None:
                users[_period(day, window)].add(e["user_id"])
        got = db.analytics.active_users(
            account_id=account_id,
            start_date=start,
            end_date=end,
            window=window,  # type: ignore[arg-type]
        )
        periods = sorted({_period(start + i * DAY, window) for i in range((end - start).days)})
        assert [r.period_start for r in got] == [max(p, start) for p in periods]
        assert got[-1].period_end == end
        assert all(a.period_end == b.period_start for a, b in itertools.pairwise(got))
        assert {_period(r.period_start, window): r.active_users for r in got} == {
            p: len(users[p]) for p in periods
        }, window
    assert len(got) >= 2  # months


def test_a_user_active_on_both_sides_of_a_week_boundary_counts_once_per_week_and_once_a_month(
    db: Database, account_id: int
) -> None:
    today = datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday() + 7)  # last week's Monday, within 14 days
    sunday = monday - DAY
    batch = [
        _event(account_id, user_id=7, occurred_at=_noon(sunday)),
        _event(account_id, user_id=7, occurred_at=_noon(monday)),
        _event(account_id, user_id=7, occurred_at=_noon(monday) + timedelta(hours=1)),
        _event(account_id, user_id=8, occurred_at=_noon(monday)),
    ]
    assert db.analytics.record_batch(events=batch).inserted == 4
    refresh_rollups(db)
    weeks = db.analytics.active_users(
        account_id=account_id, start_date=monday - 7 * DAY, end_date=monday + 7 * DAY,
        window="week",
    )  # fmt: skip
    assert [(w.period_start, w.active_users) for w in weeks] == [(monday - 7 * DAY, 1), (monday, 2)]
    days = db.analytics.active_users(
        account_id=account_id, start_date=sunday, end_date=monday + DAY, window="day"
    )
    assert [d.active_users for d in days] == [1, 2]
    first = sunday.replace(day=1)
    months = db.analytics.active_users(
        account_id=account_id, start_date=first, end_date=monday + DAY, window="month"
    )
    assert months[-1].active_users == 2
    assert sum(m.active_users for m in months) == (2 if sunday.month == monday.month else 3)


def test_top_features_and_latency_percentiles_equal_fresh_aggregates_of_the_raw_events(
    db: Database, account_id: int
) -> None:
    other = db.accounts.create(name="Other").id
    _seed(db, account_id, other)
    refresh_rollups(db)
    today = datetime.now(UTC).date()
    start, end = today - 20 * DAY, today
    lo, hi = _noon(start) - timedelta(hours=12), _noon(end) - timedelta(hours=12)
    with db.connection() as conn:
        features = conn.execute(
            "SELECT name, sum(n), count(*), max(users) FROM ("
            " SELECT name, (occurred_at AT TIME ZONE 'UTC')::date, count(*) AS n,"
            "  count(DISTINCT user_id) AS users FROM analytics_events"
            " WHERE account_id = %s AND category = 'feature' AND occurred_at >= %s"
            "  AND occurred_at < %s GROUP BY 1, 2) d GROUP BY name ORDER BY 2 DESC, 1",
            (account_id, lo, hi),
        ).fetchall()
        latencies = conn.execute(
            "SELECT name, (occurred_at AT TIME ZONE 'UTC')::date, count(*),"
            " (percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms))::numeric(14, 3),"
            " (percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms))::numeric(14, 3),"
            " (percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms))::numeric(14, 3),"
            " max(duration_ms) FROM analytics_events"
            " WHERE account_id = %s AND category = 'performance' AND occurred_at >= %s"
            "  AND occurred_at < %s GROUP BY 1, 2 ORDER BY 1, 2",
            (account_id, lo, hi),
        ).fetchall()
    assert len(features) == 3
    assert len(latencies) == 40  # two operations on 20 days
    top = db.analytics.top_features(account_id=account_id, start_date=start, end_date=end)
    assert [(f.name, f.event_count, f.days_used, f.peak_daily_users) for f in top] == features
    assert (
        db.analytics.top_features(account_id=account_id, start_date=start, end_date=end, limit=1)
        == top[:1]
    )
    got = db.analytics.latency_percentiles(account_id=account_id, start_date=start, end_date=end)
    assert [
        (r.name, r.day, r.event_count, r.duration_p50, r.duration_p95, r.duration_p99,
         r.duration_max)
        for r in got
    ] == latencies  # fmt: skip
    only = db.analytics.latency_percentiles(
        account_id=account_id, start_date=start, end_date=end, name="api.list"
    )
    assert only == [r for r in got if r.name == "api.list"]


def test_dashboards_show_the_last_refresh_and_pending_days_name_what_is_newer(
    db: Database, account_id: int
) -> None:
    today = datetime.now(UTC).date()
    start, end = today - 7 * DAY, today + DAY
    day = today - 2 * DAY
    db.analytics.record_batch(events=[_event(account_id, occurred_at=_noon(day), user_id=3)])
    assert db.analytics.pending_days(account_id=account_id, start_date=start, end_date=end) == [day]

    def dau() -> list[int]:
        return [
            r.active_users
            for r in db.analytics.active_users(
                account_id=account_id, start_date=day, end_date=day + DAY, window="day"
            )
        ]

    assert dau() == [0]
    refresh_rollups(db)
    assert db.analytics.pending_days(account_id=account_id, start_date=start, end_date=end) == []
    assert dau() == [1]


def test_dashboard_queries_never_read_analytics_events(uow: UnitOfWork, tx_account_id: int) -> None:
    account_id = tx_account_id
    today = datetime.now(UTC).date()
    params: dict[str, Any] = {
        "account_id": account_id, "start_date": today - 30 * DAY, "end_date": today,
    }  # fmt: skip
    queries = [
        (AnalyticsRepository._active_users.query, {**params, "window": "week"}),
        (AnalyticsRepository._top_features.query, {**params, "limit": 10}),
        (AnalyticsRepository._latency.query, {**params, "name": None}),
        (AnalyticsRepository._pending.query, params),
    ]
    for query, args in queries:
        assert query is not None
        plan = "\n".join(r[0] for r in uow.connection.execute("EXPLAIN " + query.sql, args))
        assert "analytics_events" not in plan, plan


def test_dashboards_refuse_empty_long_or_mistyped_ranges(uow: UnitOfWork) -> None:
    today = datetime.now(UTC).date()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("end_date", lambda: uow.analytics.active_users(
            account_id=1, start_date=today, end_date=today, window="day")),
        ("end_date", lambda: uow.analytics.top_features(
            account_id=1, start_date=today - 500 * DAY, end_date=today)),
        ("start_date", lambda: uow.analytics.latency_percentiles(
            account_id=1, start_date=datetime.now(UTC), end_date=today)),  # type: ignore[arg-type]
        ("window", lambda: uow.analytics.active_users(
            account_id=1, start_date=today - DAY, end_date=today,
            window="year")),  # type: ignore[arg-type]
        ("name", lambda: uow.analytics.latency_percentiles(
            account_id=1, start_date=today - DAY, end_date=today, name="Bad Name")),
        ("limit", lambda: uow.analytics.top_features(
            account_id=1, start_date=today - DAY, end_date=today, limit=0)),
    ]  # fmt: skip
    for field, call in calls:
        with pytest.raises(InvalidInput) as info:
            call()
        assert info.value.field == field
