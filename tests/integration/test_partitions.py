"""Monthly partitions: ensure (idempotent, racing, lock-aware), list, indexes, pruning."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from overlap import wait_until_blocked
from psycopg import sql

from datalayer import Database, DataLayerError, PartitionMissing
from datalayer._ops.partitions import (
    PARTITIONED_TABLES,
    add_months,
    create_partitioned_index,
    ensure_partitions,
    list_partitions,
    month_start,
)

REPO = Path(__file__).resolve().parents[2]
INDEX = "usage_events_user_idx"


def this_month() -> datetime:
    return month_start(datetime.now(UTC))


def oldest_default() -> datetime:
    """The first month a fresh database has: that of the oldest accepted event (35 days)."""
    return month_start(datetime.now(UTC) - timedelta(days=35))


def months(first: datetime, last: datetime) -> list[datetime]:
    """Every month start from ``first`` through ``last``."""
    result = []
    while first <= last:
        result.append(first)
        first = add_months(first, 1)
    return result


def names(starts: list[datetime], parents: tuple[str, ...] = PARTITIONED_TABLES) -> set[str]:
    return {f"{parent}_{m:%Y_%m}" for parent in parents for m in starts}


def cli(*args: str, url: str) -> subprocess.Popen[str]:
    """Start ``python -m datalayer._cli --database-url URL ARGS…``."""
    return subprocess.Popen(
        [sys.executable, "-m", "datalayer._cli", "--database-url", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )


def run_cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, url=url)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def admin(fresh_admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database (partitions last month .. +3)."""
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def meter(admin: psycopg.Connection[Any]) -> str:
    admin.execute(
        "INSERT INTO meters (code, name, unit, aggregation)"
        " VALUES ('api_calls', 'API calls', 'call', 'sum')"
    )
    return "api_calls"


def ranges(
    conn: psycopg.Connection[Any],
) -> list[tuple[str, str, datetime | None, datetime | None]]:
    return [(p.parent, p.name, p.start, p.end) for p in list_partitions(conn)]


# -- ensure ---------------------------------------------------------------------------------


def test_a_second_ensure_run_creates_nothing_and_leaves_the_partitions_unchanged(
    admin: psycopg.Connection[Any],
) -> None:
    now = this_month()
    assert set(ensure_partitions(admin, ahead=6)) == names(
        months(add_months(now, 4), add_months(now, 6))
    )
    before = ranges(admin)
    assert ensure_partitions(admin, ahead=6) == []
    assert ensure_partitions(admin) == []
    assert ranges(admin) == before


def test_ensure_reaches_back_to_start_and_forward_exactly_ahead_months_with_utc_month_ranges(
    admin: psycopg.Connection[Any],
) -> None:
    now = this_month()
    first, last = add_months(now, -5), add_months(now, 5)
    created = ensure_partitions(admin, start=first, ahead=5)
    existing = set(months(oldest_default(), add_months(now, 3)))
    assert set(created) == names([m for m in months(first, last) if m not in existing])
    assert len(created) == len(set(created))

    for parent in PARTITIONED_TABLES:
        parts = list_partitions(admin, (parent,))
        assert [p.start for p in parts] == months(first, last)
        for part in parts:
            assert part.start is not None
            assert part.end is not None
            assert part.name == f"{parent}_{part.start:%Y_%m}"
            assert part.start.utcoffset() == timedelta(0)
            assert part.start == month_start(part.start)
            assert part.end == add_months(part.start, 1)
        # Contiguous: each range starts where the previous one ended.
        assert all(a.end == b.start for a, b in itertools.pairwise(parts))


def test_ensure_with_a_fixed_now_counts_ahead_from_that_month_and_includes_both_ends(
    admin: psycopg.Connection[Any],
) -> None:
    now = datetime(2031, 12, 31, 23, 59, 59, tzinfo=UTC)
    start = datetime(2031, 11, 15, tzinfo=UTC)  # mid-month: its whole month is covered
    created = ensure_partitions(admin, start=start, now=now, ahead=2, parents=("usage_events",))
    assert created == [
        "usage_events_2031_11",
        "usage_events_2031_12",
        "usage_events_2032_01",
        "usage_events_2032_02",
    ]
    by_name = {p.name: p for p in list_partitions(admin, ("usage_events",))}
    assert by_name["usage_events_2032_02"].start == datetime(2032, 2, 1, tzinfo=UTC)
    assert by_name["usage_events_2032_02"].end == datetime(2032, 3, 1, tzinfo=UTC)
    assert "usage_events_2032_03" not in by_name
    assert "usage_events_2031_10" not in by_name
    assert not any(p.name.startswith("analytics_events_203") for p in list_partitions(admin))


def test_two_threads_racing_ensure_on_the_same_months_both_succeed_and_create_each_month_once(
    fresh_admin_url: str, admin: psycopg.Connection[Any]
) -> None:
    now = this_month()
    first = add_months(now, 4)
    ahead = 18
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
                results.append(ensure_partitions(conn, start=first, ahead=ahead))
        except BaseException as exc:
            errors.append(exc)

    lock = f"partitions:{PARTITIONED_TABLES[0]}"
    with psycopg.connect(fresh_admin_url, autocommit=True) as holder:
        # Both threads are seen waiting on the first parent's creation lock before it is
        # released: from then on they race for every month at the same time.
        holder.execute("SELECT pg_advisory_lock(hashtext(%s))", [lock])
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            waiting = wait_until_blocked(admin, holder.info.backend_pid, 2, what="threads")
        finally:
            holder.execute("SELECT pg_advisory_unlock(hashtext(%s))", [lock])
        for thread in threads:
            thread.join(timeout=60)
    assert len(set(waiting)) == 2
    assert errors == []
    assert len(results) == 2
    expected = names(months(first, add_months(now, ahead)))
    created = Counter(results[0] + results[1])
    assert set(created) == expected
    assert max(created.values()) == 1
    listed = Counter(p.name for p in list_partitions(admin))
    assert expected <= set(listed)
    assert max(listed.values()) == 1


def test_two_cli_processes_racing_ensure_both_exit_zero_and_create_each_month_once(
    fresh_admin_url: str, admin: psycopg.Connection[Any]
) -> None:
    now = this_month()
    first = add_months(now, -24)
    with psycopg.connect(fresh_admin_url, autocommit=True) as holder:
        # Creators of a parent's months serialise on an advisory lock. Hold the first
        # parent's until both processes are seen waiting for it (pg_locks): from then on
        # they race for every month at the same time.
        holder.execute(
            "SELECT pg_advisory_lock(hashtext(%s))", [f"partitions:{PARTITIONED_TABLES[0]}"]
        )
        procs = [
            cli(
                "partitions",
                "ensure",
                "--from",
                f"{first:%Y-%m}",
                "--ahead",
                "8",
                url=fresh_admin_url,
            )
            for _ in range(2)
        ]
        try:
            waiting = wait_until_blocked(admin, holder.info.backend_pid, 2, what="processes")
        finally:
            holder.execute(
                "SELECT pg_advisory_unlock(hashtext(%s))", [f"partitions:{PARTITIONED_TABLES[0]}"]
            )
        outputs = [proc.communicate(timeout=60) for proc in procs]
    assert len(set(waiting)) == 2
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    created = Counter(
        line.removeprefix("created ")
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("created ")
    )
    existing = set(months(oldest_default(), add_months(now, 3)))
    wanted = [m for m in months(first, add_months(now, 8)) if m not in existing]
    assert set(created) == names(wanted)
    assert max(created.values()) == 1
    for out, _ in outputs:
        count = sum(line.startswith("created ") for line in out.splitlines())
        assert f"{count} partition(s) created" in out
    for parent in PARTITIONED_TABLES:
        starts = [p.start for p in list_partitions(admin, (parent,))]
        assert starts == months(first, add_months(now, 8))


def test_ensure_retries_past_a_lock_held_briefly_by_another_session_and_creates_the_month(
    fresh_admin_url: str, admin: psycopg.Connection[Any]
) -> None:
    month = add_months(this_month(), 6)
    created: list[list[str]] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
                created.append(
                    ensure_partitions(
                        conn,
                        start=month,
                        ahead=6,
                        parents=("usage_events",),
                        lock_timeout_ms=100,
                        attempts=20,
                    )
                )
        except BaseException as exc:  # reported below
            errors.append(exc)

    with psycopg.connect(fresh_admin_url) as holder:
        holder.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
        worker = threading.Thread(target=ensure)
        worker.start()
        try:
            # It really waits for the lock (seen in pg_locks), then gets it once released.
            wait_until_blocked(admin, holder.info.backend_pid, 1, what="ensures")
        finally:
            holder.rollback()
        worker.join(timeout=60)
    assert errors == []
    assert created == [[f"usage_events_{month:%Y_%m}"]]


def test_ensure_raises_a_datalayer_error_rather_than_hanging_when_the_parent_stays_locked(
    fresh_admin_url: str, admin: psycopg.Connection[Any]
) -> None:
    month = add_months(this_month(), 6)
    with psycopg.connect(fresh_admin_url) as holder:
        holder.execute("LOCK TABLE usage_events IN ACCESS EXCLUSIVE MODE")
        # An ensure that ignored lock_timeout would wait this long, then create the month
        # and not raise: the test would fail below, without timing anything.
        release = threading.Timer(5, holder.rollback)
        release.start()
        try:
            with pytest.raises(DataLayerError, match=f"usage_events_{month:%Y_%m}") as info:
                ensure_partitions(
                    admin,
                    start=month,
                    ahead=6,
                    parents=("usage_events",),
                    lock_timeout_ms=100,
                    attempts=2,
                )
        finally:
            release.cancel()
            holder.rollback()
    assert not isinstance(info.value, psycopg.Error)
    assert f"usage_events_{month:%Y_%m}" not in [p.name for p in list_partitions(admin)]
    # The failed attempt left the connection usable.
    assert ensure_partitions(admin, start=month, ahead=6, parents=("usage_events",)) == [
        f"usage_events_{month:%Y_%m}"
    ]


# -- list -----------------------------------------------------------------------------------


def listed_rows(out: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        rows[fields[0]] = (fields[1], fields[2])
    return rows


def test_the_partitions_list_cli_prints_every_partition_with_its_utc_range(
    fresh_admin_url: str, admin: psycopg.Connection[Any]
) -> None:
    ensure_partitions(admin, start=add_months(this_month(), -3))
    result = run_cli("partitions", "list", url=fresh_admin_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:3] == ["partition", "from", "to"]
    expected = {
        p.name: (f"{p.start:%Y-%m-%d}", f"{p.end:%Y-%m-%d}") for p in list_partitions(admin)
    }
    assert len(expected) >= 12
    assert listed_rows(result.stdout) == expected
    for name, (start, end) in expected.items():
        year, month = name.rsplit("_", 2)[-2:]
        assert start == f"{year}-{month}-01"
        nxt = add_months(datetime(int(year), int(month), 1, tzinfo=UTC), 1)
        assert end == f"{nxt:%Y-%m-%d}"


def test_the_partitions_list_cli_prints_utc_ranges_when_the_database_time_zone_is_not_utc(
    fresh_admin_url: str, fresh_dbname: str, admin: psycopg.Connection[Any]
) -> None:
    # initdb writes the machine's zone into postgresql.conf; a database default is the same.
    admin.execute(
        sql.SQL("ALTER DATABASE {} SET timezone = 'America/New_York'").format(
            sql.Identifier(fresh_dbname)
        )
    )
    result = run_cli("partitions", "list", url=fresh_admin_url)
    assert result.returncode == 0, result.stderr
    now = this_month()
    rows = listed_rows(result.stdout)
    assert rows[f"usage_events_{now:%Y_%m}"] == (
        f"{now:%Y-%m-%d}",
        f"{add_months(now, 1):%Y-%m-%d}",
    )


# -- a month without a partition -------------------------------------------------------------


def counts(db: Database) -> tuple[int, ...]:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM usage_event_keys),"
            " (SELECT count(*) FROM usage_rollup_queue), (SELECT count(*) FROM analytics_events),"
            " (SELECT count(*) FROM analytics_rollup_queue)"
        ).fetchone()
    assert row is not None
    return tuple(row)


def test_recording_into_a_month_without_a_partition_raises_partition_missing_and_writes_nothing(
    db: Database, admin: psycopg.Connection[Any]
) -> None:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum')"
        )
    account = db.accounts.create(name="Acme")
    last = add_months(this_month(), -1)
    admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(f"usage_events_{last:%Y_%m}")))
    event = {
        "account_id": account.id,
        "meter_code": "api_calls",
        "quantity": Decimal("1.5"),
        "occurred_at": this_month() - timedelta(hours=1),  # within the 35 accepted days
        "idempotency_key": "late-1",
    }
    with pytest.raises(PartitionMissing) as info:
        db.usage.record(**event)
    assert info.value.month == f"{last:%Y-%m}"
    assert "partitions ensure" in str(info.value)
    assert counts(db) == (0, 0, 0, 0, 0)

    # Once ensure recreates the month, the same event (same key) is stored.
    assert f"usage_events_{last:%Y_%m}" in ensure_partitions(admin)
    result = db.usage.record(**event)
    assert not result.duplicate
    assert counts(db)[:2] == (1, 1)


def test_a_raw_insert_for_a_month_without_a_partition_raises_partition_missing_naming_that_month(
    db: Database,
) -> None:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum')"
        )
    account = db.accounts.create(name="Acme")
    future = add_months(this_month(), 24)
    statements = {
        "usage_events": "INSERT INTO usage_events"
        " (account_id, meter_code, quantity, occurred_at, idempotency_key)"
        " VALUES (%s, 'api_calls', 1, %s, 'k')",
        "analytics_events": "INSERT INTO analytics_events (account_id, category, name, occurred_at)"
        " VALUES (%s, 'behaviour', 'page.view', %s)",
    }
    for table, statement in statements.items():
        # Start of the month (the bound) and its last microsecond: both in that month.
        for moment in (future, add_months(future, 1) - timedelta(microseconds=1)):
            with pytest.raises(PartitionMissing) as info, db.connection() as conn:
                conn.execute(statement, (account.id, moment))
            assert info.value.month == f"{future:%Y-%m}", (table, moment)
            assert info.value.table == table
    assert counts(db) == (0, 0, 0, 0, 0)


# -- indexes --------------------------------------------------------------------------------


def index_state(conn: psycopg.Connection[Any], parent_index: str) -> tuple[bool, dict[str, bool]]:
    """Whether the parent index is valid, and per partition of it: attached index validity."""
    parent = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (parent_index,)
    ).fetchone()
    assert parent is not None, f"{parent_index} does not exist"
    rows = conn.execute(
        "SELECT x.indrelid::regclass::text, x.indisvalid"
        " FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s)",
        (parent_index,),
    ).fetchall()
    attached = dict(rows)
    assert len(attached) == len(rows), "a partition has two indexes attached"
    return bool(parent[0]), attached


def user_id_indexes(conn: psycopg.Connection[Any]) -> int:
    """How many indexes of usage_events partitions cover exactly (user_id)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indrelid"
        " WHERE i.inhparent = 'usage_events'::regclass"
        "   AND x.indkey::text = (SELECT attnum::text FROM pg_attribute"
        "     WHERE attrelid = 'usage_events'::regclass AND attname = 'user_id')"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_partitioned_index_ends_valid_on_the_parent_attached_for_every_partition_and_reruns(
    admin: psycopg.Connection[Any],
) -> None:
    partitions = {p.name for p in list_partitions(admin, ("usage_events",))}
    create_partitioned_index(admin, "usage_events", INDEX, ["user_id"])
    valid, attached = index_state(admin, INDEX)
    assert valid
    assert set(attached) == partitions
    assert all(attached.values())
    assert user_id_indexes(admin) == len(partitions)

    create_partitioned_index(admin, "usage_events", INDEX, ["user_id"])
    assert index_state(admin, INDEX) == (valid, attached)
    assert user_id_indexes(admin) == len(partitions)  # no second copy per partition


def test_a_partition_created_by_ensure_after_the_index_gets_the_index_too(
    admin: psycopg.Connection[Any],
) -> None:
    create_partitioned_index(admin, "usage_events", INDEX, ["user_id"])
    created = ensure_partitions(admin, ahead=5, parents=("usage_events",))
    assert len(created) == 2
    valid, attached = index_state(admin, INDEX)
    assert valid
    assert set(created) <= set(attached)
    assert set(attached) == {p.name for p in list_partitions(admin, ("usage_events",))}
    assert all(attached.values())
    # And rerunning afterwards still changes nothing.
    create_partitioned_index(admin, "usage_events", INDEX, ["user_id"])
    assert index_state(admin, INDEX) == (valid, attached)


def test_create_partitioned_index_resumes_after_a_failed_build_left_an_invalid_index(
    admin: psycopg.Connection[Any], meter: str
) -> None:
    now = this_month()
    part = f"usage_events_{now:%Y_%m}"
    child = f"{part}_{INDEX}"
    account = admin.execute("INSERT INTO accounts (name) VALUES ('Acme') RETURNING id").fetchone()
    assert account is not None
    admin.execute(
        "INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at, idempotency_key)"
        " SELECT %s, %s, 1, %s, 'k' || g FROM generate_series(1, 2) g",
        (account[0], meter, now),
    )
    # A crash after the ON ONLY step and during one partition's concurrent build.
    admin.execute(
        sql.SQL("CREATE INDEX {} ON ONLY usage_events (user_id)").format(sql.Identifier(INDEX))
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        admin.execute(
            sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} (account_id)").format(
                sql.Identifier(child), sql.Identifier(part)
            )
        )
    assert index_state(admin, INDEX) == (False, {})

    create_partitioned_index(admin, "usage_events", INDEX, ["user_id"])
    valid, attached = index_state(admin, INDEX)
    assert valid
    assert set(attached) == {p.name for p in list_partitions(admin, ("usage_events",))}
    assert all(attached.values())
    indkey = admin.execute(
        "SELECT indisunique, indkey::text FROM pg_index WHERE indexrelid = to_regclass(%s)",
        (child,),
    ).fetchone()
    assert indkey is not None
    assert indkey[0] is False


# -- pruning --------------------------------------------------------------------------------


def relations(plan: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(plan, dict):
        if "Relation Name" in plan:
            found.add(plan["Relation Name"])
        for value in plan.values():
            found |= relations(value)
    elif isinstance(plan, list):
        for item in plan:
            found |= relations(item)
    return found


def test_a_query_bounded_to_this_month_plans_a_scan_of_this_months_partition_only(
    admin: psycopg.Connection[Any],
) -> None:
    ensure_partitions(admin, start=add_months(this_month(), -6), ahead=6)
    now = this_month()
    query = sql.SQL(
        "EXPLAIN (FORMAT JSON) SELECT count(*) FROM usage_events"
        " WHERE account_id = 1 AND occurred_at >= {} AND occurred_at < {}"
    )
    row = admin.execute(query.format(sql.Literal(now), sql.Literal(add_months(now, 1)))).fetchone()
    assert row is not None
    plan = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    assert relations(plan) == {f"usage_events_{now:%Y_%m}"}

    # Control: without the time bound every partition is scanned.
    row = admin.execute(
        "EXPLAIN (FORMAT JSON) SELECT count(*) FROM usage_events WHERE account_id = 1"
    ).fetchone()
    assert row is not None
    assert relations(row[0]) == {p.name for p in list_partitions(admin, ("usage_events",))}
