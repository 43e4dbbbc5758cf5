"""Rollups: after every refresh they equal a fresh aggregate of the raw events."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawevents import delete_events, queue_analytics_days, queue_usage_buckets

from datalayer import Database
from datalayer._ops.partitions import month_start
from datalayer._ops.rollups import refresh_rollups

pytestmark = pytest.mark.both_apis

REPO = Path(__file__).resolve().parents[2]
METERS = ("api_calls", "storage_gb")
_keys = itertools.count()


def base_time() -> datetime:
    """This month's first instant: events around it fall in last month and this one."""
    return month_start(datetime.now(UTC))


@dataclass(frozen=True)
class Setup:
    db: Database
    accounts: tuple[int, ...]
    admin_url: str

    def delete(self, query: LiteralString, params: Sequence[Any] = ()) -> None:
        """Delete events as the admin (to the application role they are append-only).

        Queues the deleted events' buckets, as a writer outside the library must.
        """
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            delete_events(conn, query, params)


@pytest.fixture
def setup(db: Database, fresh_admin_url: str) -> Setup:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum'),"
            "        ('storage_gb', 'Storage', 'GB', 'max')"
        )
    accounts = tuple(db.accounts.create(name=f"Acme {i}").id for i in range(3))
    return Setup(db, accounts, fresh_admin_url)


# -- writing events -------------------------------------------------------------------------

Row = tuple[int, str, Decimal, datetime]  # account, meter, quantity, occurred_at


def insert_usage(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    """One multi-row INSERT statement, queueing its buckets (a writer outside the library)."""
    if not rows:
        return
    conn.execute(
        "INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at, idempotency_key)"
        " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::timestamptz[],"
        " %s::text[])",
        (
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            [f"k{next(_keys)}" for _ in rows],
        ),
    )
    queue_usage_buckets(conn, ((r[0], r[1], r[3]) for r in rows))


def copy_usage(conn: psycopg.Connection[Any], rows: Sequence[Row]) -> None:
    """COPY FROM STDIN, then the copied rows' buckets queued."""
    with conn.cursor().copy(
        "COPY usage_events (account_id, meter_code, quantity, occurred_at, idempotency_key)"
        " FROM STDIN"
    ) as copy:
        for account, meter, quantity, occurred in rows:
            copy.write_row((account, meter, quantity, occurred, f"c{next(_keys)}"))
    queue_usage_buckets(conn, ((r[0], r[1], r[3]) for r in rows))


# -- fresh aggregates -----------------------------------------------------------------------

# Usage is the accepted events that are not cancelled.
FRESH_USAGE = """
SELECT e.account_id, e.meter_code, g.granularity,
       date_trunc(g.granularity, e.occurred_at, 'UTC') AS bucket_start,
       count(*), sum(e.quantity), max(e.quantity)
FROM usage_events e CROSS JOIN (VALUES ('hour'), ('day')) AS g (granularity)
WHERE NOT EXISTS (
    SELECT 1 FROM usage_cancellations c WHERE c.account_id = e.account_id AND c.event_id = e.id)
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""

STORED_USAGE = """
SELECT account_id, meter_code, granularity, bucket_start, event_count, quantity_sum, quantity_max
FROM usage_rollups
ORDER BY 1, 2, 3, 4
"""

FRESH_ANALYTICS = """
SELECT account_id, (occurred_at AT TIME ZONE 'UTC')::date, category, name,
       count(*), count(DISTINCT user_id),
       (percentile_cont(0.50) WITHIN GROUP (ORDER BY duration_ms))::numeric(14, 3),
       (percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms))::numeric(14, 3),
       (percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms))::numeric(14, 3),
       max(duration_ms)
FROM analytics_events
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""

STORED_ANALYTICS = """
SELECT account_id, day, category, name, event_count, user_count,
       duration_p50, duration_p95, duration_p99, duration_max
FROM analytics_daily_rollups
ORDER BY 1, 2, 3, 4
"""

FRESH_USERS = """
SELECT DISTINCT account_id, (occurred_at AT TIME ZONE 'UTC')::date, user_id
FROM analytics_events WHERE user_id IS NOT NULL
ORDER BY 1, 2, 3
"""

STORED_USERS = "SELECT account_id, day, user_id FROM analytics_daily_users ORDER BY 1, 2, 3"


def fetch(db: Database, query: str) -> list[tuple[Any, ...]]:
    with db.connection() as conn:
        return conn.execute(query).fetchall()


def queued(db: Database) -> tuple[int, int]:
    row = fetch(
        db,
        "SELECT (SELECT count(*) FROM usage_rollup_queue),"
        " (SELECT count(*) FROM analytics_rollup_queue)",
    )[0]
    return int(row[0]), int(row[1])


def cancel_usage(db: Database, modulus: int, remainder: int, limit: int = 4) -> list[int]:
    """Cancel (through ``usage.cancel``) up to ``limit`` events whose id % modulus = remainder.

    The helpers above write events without keys, so their keys are stored first.
    """
    with db.connection() as conn:
        rows = conn.execute(
            "WITH picked AS (SELECT account_id, idempotency_key, id, occurred_at FROM usage_events"
            " WHERE id %% %s = %s AND NOT EXISTS (SELECT 1 FROM usage_cancellations c"
            " WHERE c.account_id = usage_events.account_id AND c.event_id = usage_events.id)"
            " ORDER BY id LIMIT %s)"
            " INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)"
            " SELECT * FROM picked ON CONFLICT DO NOTHING RETURNING account_id, idempotency_key",
            (modulus, remainder % modulus, limit),
        ).fetchall()
    for account_id, key in rows:
        result = db.usage.cancel(account_id=account_id, idempotency_key=key, reason="test")
        assert result.duplicate is False
    return [account_id for account_id, _ in rows]


def assert_usage_rollups_are_fresh(db: Database) -> None:
    assert fetch(db, STORED_USAGE) == fetch(db, FRESH_USAGE)


def assert_analytics_rollups_are_fresh(db: Database) -> None:
    assert fetch(db, STORED_ANALYTICS) == fetch(db, FRESH_ANALYTICS)
    assert fetch(db, STORED_USERS) == fetch(db, FRESH_USERS)


# -- usage ----------------------------------------------------------------------------------


def test_refresh_makes_hour_and_day_rollups_equal_a_fresh_aggregate_of_inserted_and_copied_events(
    setup: Setup,
) -> None:
    db, (a, b, _) = setup.db, setup.accounts
    t0 = base_time()
    rng = random.Random(7)
    inserted: list[Row] = [
        (
            rng.choice((a, b)),
            rng.choice(METERS),
            Decimal(rng.randint(0, 10**9)) / 1000,
            t0 + timedelta(seconds=rng.randint(-30 * 3600, 30 * 3600)),
        )
        for _ in range(300)
    ]
    # Bucket edges: exactly on an hour and on midnight, and the microsecond before.
    edges = [t0, t0 - timedelta(microseconds=1), t0 + timedelta(hours=5)]
    edges += [t0 + timedelta(hours=5, microseconds=-1)]
    copied: list[Row] = [(a, "api_calls", Decimal("0.000001"), moment) for moment in edges]
    copied += [(b, "storage_gb", Decimal("999999999999.999999"), t0 + timedelta(minutes=1))]
    with db.connection() as conn:
        insert_usage(conn, inserted[:150])
        insert_usage(conn, inserted[150:])
        copy_usage(conn, copied)
    assert queued(db)[0] > 0
    assert fetch(db, STORED_USAGE) == []

    result = refresh_rollups(db, batch_size=40)
    assert result.usage_days > 0
    assert queued(db) == (0, 0)
    assert_usage_rollups_are_fresh(db)

    # Independent of SQL: the same buckets computed in Python from the rows written.
    expected: dict[tuple[Any, ...], list[Decimal]] = defaultdict(list)
    for account, meter, quantity, moment in inserted + copied:
        hour = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        expected[(account, meter, "hour", hour)].append(quantity)
        expected[(account, meter, "day", hour.replace(hour=0))].append(quantity)
    stored = {r[:4]: r[4:] for r in fetch(db, STORED_USAGE)}
    assert stored == {k: (len(v), sum(v), max(v)) for k, v in expected.items()}
    assert stored[(a, "api_calls", "hour", t0)][0] >= 1  # the edge at t0 is in its hour
    assert stored[(b, "storage_gb", "hour", t0)][2] == Decimal("999999999999.999999")


def test_a_bucket_whose_events_are_all_deleted_loses_its_rollup_rows_on_the_next_refresh(
    setup: Setup,
) -> None:
    db, (a, _, _) = setup.db, setup.accounts
    t0 = base_time() + timedelta(hours=3)
    with db.connection() as conn:
        insert_usage(
            conn, [(a, "api_calls", Decimal(2), t0 + timedelta(minutes=m)) for m in (1, 2)]
        )
        insert_usage(conn, [(a, "api_calls", Decimal(5), t0 + timedelta(hours=2))])
    refresh_rollups(db)
    day = t0.replace(hour=0)
    hours = {r[3]: r[4:] for r in fetch(db, STORED_USAGE) if r[2] == "hour"}
    assert hours == {t0: (2, 4, 2), t0 + timedelta(hours=2): (1, 5, 5)}

    setup.delete(
        "DELETE FROM usage_events WHERE occurred_at >= %s AND occurred_at < %s",
        (t0, t0 + timedelta(hours=1)),
    )
    assert queued(db)[0] == 1
    refresh_rollups(db)
    assert fetch(db, STORED_USAGE) == [
        (a, "api_calls", "day", day, 1, Decimal(5), Decimal(5)),
        (a, "api_calls", "hour", t0 + timedelta(hours=2), 1, Decimal(5), Decimal(5)),
    ]

    setup.delete("DELETE FROM usage_events")
    refresh_rollups(db)
    assert fetch(db, STORED_USAGE) == []
    assert queued(db) == (0, 0)


def test_a_cancelled_event_leaves_its_hour_and_day_rollups_on_the_next_refresh(
    setup: Setup,
) -> None:
    db, (a, b, _) = setup.db, setup.accounts
    t0 = base_time() + timedelta(hours=3)
    with db.connection() as conn:
        insert_usage(
            conn, [(a, "api_calls", Decimal(q), t0 + timedelta(minutes=q)) for q in (1, 2)]
        )
        insert_usage(conn, [(a, "api_calls", Decimal(9), t0 + timedelta(hours=2))])
        insert_usage(conn, [(b, "api_calls", Decimal(7), t0 + timedelta(minutes=5))])
    refresh_rollups(db)
    assert queued(db) == (0, 0)
    with db.connection() as conn:
        # The largest event of an hour (its max changes) and the only one of another.
        conn.execute(
            "INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)"
            " SELECT account_id, idempotency_key, id, occurred_at FROM usage_events"
            " WHERE account_id = %s AND quantity IN (2, 9)",
            (a,),
        )
        keys = [k for (k,) in conn.execute(
            "SELECT idempotency_key FROM usage_event_keys WHERE account_id = %s", (a,)
        )]  # fmt: skip
    for key in keys:
        db.usage.cancel(account_id=a, idempotency_key=key, reason="test")
    assert queued(db)[0] == 2  # each cancellation queued its hour
    assert fetch(db, STORED_USAGE) != fetch(db, FRESH_USAGE)  # stale until the refresh
    refresh_rollups(db)
    assert_usage_rollups_are_fresh(db)
    day = t0.replace(hour=0)
    assert [r for r in fetch(db, STORED_USAGE) if r[0] == a] == [
        (a, "api_calls", "day", day, 1, Decimal(1), Decimal(1)),
        (a, "api_calls", "hour", t0, 1, Decimal(1), Decimal(1)),
    ]
    assert [r[4:] for r in fetch(db, STORED_USAGE) if r[0] == b] == [(1, 7, 7), (1, 7, 7)]


# One step of the property: insert (INSERT or COPY), delete, cancel, or refresh.
HOURS = st.integers(min_value=-30, max_value=30)  # around this month's first midnight
SECONDS = st.sampled_from([0, 1, 1799, 3599]) | st.integers(min_value=0, max_value=3599)
QUANTITIES = st.decimals(
    min_value=0, max_value=Decimal("1e6"), places=3, allow_nan=False, allow_infinity=False
)
EVENTS = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(METERS), HOURS, SECONDS, QUANTITIES),
    min_size=1,
    max_size=8,
)
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), EVENTS),
        st.tuples(st.just("copy"), EVENTS),
        st.tuples(st.just("delete_bucket"), st.tuples(st.integers(0, 2), HOURS)),
        st.tuples(st.just("delete_some"), st.tuples(st.integers(2, 4), st.integers(0, 3))),
        st.tuples(st.just("cancel_some"), st.tuples(st.integers(2, 5), st.integers(0, 4))),
        st.tuples(st.just("refresh"), st.integers(min_value=1, max_value=12)),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_after_every_refresh_rollups_equal_a_fresh_aggregate_whatever_writes_preceded(
    setup: Setup, steps: list[tuple[str, Any]]
) -> None:
    """Inserts, COPYs, deletes and cancellations, in any order, refreshed in batches."""
    # The database is shared by all examples: events accumulate, so later examples
    # add late events to hours that earlier refreshes rolled up already.
    db, accounts = setup.db, setup.accounts
    t0 = base_time()
    for kind, arg in [*steps, ("refresh", 5)]:
        if kind in ("insert", "copy"):
            rows = [
                (accounts[acc], meter, qty, t0 + timedelta(hours=hour, seconds=sec))
                for acc, meter, hour, sec, qty in arg
            ]
            with db.connection() as conn:
                (insert_usage if kind == "insert" else copy_usage)(conn, rows)
        elif kind == "delete_bucket":
            acc, hour = arg
            start = t0 + timedelta(hours=hour)
            setup.delete(
                "DELETE FROM usage_events WHERE account_id = %s"
                " AND occurred_at >= %s AND occurred_at < %s",
                (accounts[acc], start, start + timedelta(hours=1)),
            )
        elif kind == "delete_some":
            modulus, remainder = arg
            setup.delete(
                "DELETE FROM usage_events WHERE id %% %s = %s", (modulus, remainder % modulus)
            )
        elif kind == "cancel_some":
            cancel_usage(db, *arg)
        else:
            refresh_rollups(db, batch_size=arg)
            assert queued(db) == (0, 0)
            assert_usage_rollups_are_fresh(db)


# -- analytics ------------------------------------------------------------------------------

AnalyticsRow = tuple[int, int | None, str, str, Decimal | None, datetime]


def insert_analytics(conn: psycopg.Connection[Any], rows: Sequence[AnalyticsRow]) -> None:
    conn.execute(
        "INSERT INTO analytics_events (account_id, user_id, category, name, duration_ms,"
        " occurred_at) SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::text[], %s::text[],"
        " %s::numeric[], %s::timestamptz[])",
        tuple([r[i] for r in rows] for i in range(6)),
    )
    queue_analytics_days(conn, ((r[0], r[5]) for r in rows))


def analytics_rows(rng: random.Random, accounts: Sequence[int], n: int) -> list[AnalyticsRow]:
    days = [base_time() - timedelta(days=1), base_time(), base_time() + timedelta(days=1)]
    rows: list[AnalyticsRow] = []
    for _ in range(n):
        category = rng.choice(("behaviour", "feature", "performance"))
        name = {
            "behaviour": rng.choice(("page.view", "click")),
            "feature": rng.choice(("export:csv", "search")),
            "performance": rng.choice(("api.latency", "page-load")),
        }[category]
        duration = None
        if category == "performance":
            duration = Decimal(rng.randint(0, 5_000_000)) / 1000
        elif rng.random() < 0.1:
            duration = Decimal(rng.randint(0, 1000))  # allowed on other categories too
        user = rng.choice((None, *range(1, 8)))
        moment = rng.choice(days) + timedelta(seconds=rng.randint(0, 86399))
        rows.append((rng.choice(accounts), user, category, name, duration, moment))
    return rows


def percentile(values: list[Decimal], q: float) -> float:
    """percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(float(v) for v in values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def test_analytics_daily_rollups_and_users_equal_fresh_aggregates_with_exact_percentiles(
    setup: Setup,
) -> None:
    db, accounts = setup.db, setup.accounts[:2]
    rng = random.Random(11)
    rows = analytics_rows(rng, accounts, 400)
    with db.connection() as conn:
        insert_analytics(conn, rows[:300])
    refresh_rollups(db, batch_size=2)
    assert queued(db) == (0, 0)
    assert_analytics_rollups_are_fresh(db)

    # Late events for days already rolled up, and deletes.
    with db.connection() as conn:
        insert_analytics(conn, rows[300:])
    setup.delete("DELETE FROM analytics_events WHERE id %% %s = 0", (7,))
    refresh_rollups(db, batch_size=3)
    assert_analytics_rollups_are_fresh(db)

    # Independent of SQL: counts, distinct users and percentiles from the Python rows.
    with db.connection() as conn:
        kept = conn.execute(
            "SELECT account_id, user_id, category, name, duration_ms, occurred_at"
            " FROM analytics_events"
        ).fetchall()
    assert len(kept) < len(rows)
    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for account, user, category, name, duration, moment in kept:
        groups[(account, moment.astimezone(UTC).date(), category, name)].append((user, duration))
    stored = {r[:4]: r[4:] for r in fetch(db, STORED_ANALYTICS)}
    assert set(stored) == set(groups)
    performance_groups = 0
    for key, events in groups.items():
        count, users, p50, p95, p99, dmax = stored[key]
        assert count == len(events)
        assert users == len({u for u, _ in events if u is not None})
        durations = [d for _, d in events if d is not None]
        if not durations:
            assert (p50, p95, p99, dmax) == (None, None, None, None)
            continue
        performance_groups += key[2] == "performance"
        for q, value in ((0.5, p50), (0.95, p95), (0.99, p99)):
            assert float(value) == pytest.approx(percentile(durations, q), abs=0.0006), (key, q)
        assert dmax == max(durations)
    assert performance_groups >= 4

    setup.delete("DELETE FROM analytics_events WHERE account_id = %s", (accounts[0],))
    refresh_rollups(db)
    assert_analytics_rollups_are_fresh(db)
    assert {r[0] for r in fetch(db, STORED_ANALYTICS)} == {accounts[1]}
    assert {r[0] for r in fetch(db, STORED_USERS)} == {accounts[1]}


# -- concurrency and the CLI ----------------------------------------------------------------


def test_two_concurrent_refreshers_and_a_concurrent_writer_end_with_rollups_equal_to_the_events(
    setup: Setup,
) -> None:
    db, accounts = setup.db, setup.accounts
    t0 = base_time()
    done = threading.Event()
    errors: list[BaseException] = []
    refreshes = [0, 0]

    def writer() -> None:
        rng = random.Random(3)
        try:
            for i in range(60):
                rows = [
                    (
                        rng.choice(accounts),
                        rng.choice(METERS),
                        Decimal(rng.randint(0, 10**6)) / 100,
                        t0 + timedelta(seconds=rng.randint(-20 * 3600, 20 * 3600)),
                    )
                    for _ in range(rng.randint(1, 15))
                ]
                with db.connection() as conn, conn.transaction():
                    insert_usage(conn, rows)
                    insert_analytics(conn, analytics_rows(rng, accounts, 5))
                if i % 10 == 9:  # an admin's correction, while the refreshers run
                    setup.delete("DELETE FROM usage_events WHERE id %% 5 = %s", (i % 5,))
                    setup.delete("DELETE FROM analytics_events WHERE id %% 5 = %s", (i % 5,))
                if i % 10 == 4:
                    cancel_usage(db, 7, i % 7, limit=3)
                time.sleep(rng.uniform(0, 0.01))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def refresher(n: int) -> None:
        try:
            while not done.is_set():
                refreshes[n] += refresh_rollups(db, batch_size=4 + n).batches
            refresh_rollups(db, batch_size=4 + n)  # began after the writer's last commit
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=refresher, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert min(refreshes) >= 3, refreshes  # both really ran while the writer wrote
    assert queued(db) == (0, 0)
    assert fetch(db, STORED_USAGE) != []
    assert_usage_rollups_are_fresh(db)
    assert_analytics_rollups_are_fresh(db)


def test_the_rollups_refresh_cli_exits_zero_and_leaves_rollups_fresh(
    setup: Setup, fresh_url: str
) -> None:
    db, accounts = setup.db, setup.accounts
    rng = random.Random(5)
    with db.connection() as conn:
        insert_usage(
            conn,
            [
                (accounts[0], "api_calls", Decimal(i), base_time() + timedelta(minutes=37 * i))
                for i in range(20)
            ],
        )
        insert_analytics(conn, analytics_rows(rng, accounts, 30))
    result = subprocess.run(
        [sys.executable, "-m", "datalayer._cli", "--database-url", fresh_url, "rollups", "refresh"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rollups refreshed: ")
    assert " 0 usage day" not in result.stdout
    assert queued(db) == (0, 0)
    assert_usage_rollups_are_fresh(db)
    assert_analytics_rollups_are_fresh(db)


def test_the_rollups_rebuild_cli_rolls_up_events_written_without_queueing_their_buckets(
    setup: Setup, fresh_url: str
) -> None:
    db, accounts = setup.db, setup.accounts
    with psycopg.connect(setup.admin_url, autocommit=True) as conn:
        conn.execute(  # a writer outside the library that queues nothing
            "INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,"
            " idempotency_key) SELECT %s, 'api_calls', g, %s + g * interval '17 minutes',"
            " 'unqueued-' || g FROM generate_series(1, 12) g",
            (accounts[1], base_time()),
        )
    assert queued(db) == (0, 0)
    refresh_rollups(db)
    assert fetch(db, STORED_USAGE) == []  # nothing was queued: refresh cannot know
    result = subprocess.run(
        [sys.executable, "-m", "datalayer._cli", "--database-url", fresh_url,
         "--admin-url", setup.admin_url, "rollups", "rebuild"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATALAYER_ADMIN_URL")},  # noqa: E501
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "rebuilt" in result.stdout
    assert fetch(db, STORED_USAGE) != []
    assert_usage_rollups_are_fresh(db)
    assert_analytics_rollups_are_fresh(db)
