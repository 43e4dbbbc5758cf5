"""Cancelling a usage event: an audit record, gone from every aggregate, its key still consumed."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from datalayer import (
    CancelResult,
    Database,
    InvalidInput,
    NotFound,
    PlanMeterSpec,
    QuotaExceeded,
    ReferenceViolation,
    UnitOfWork,
)
from datalayer._ops.partitions import ensure_partitions
from datalayer._ops.rollups import refresh_rollups
from datalayer._window import oldest_accepted

pytestmark = pytest.mark.both_apis

HOUR = timedelta(hours=1)


def add_meter(conn: Any) -> None:
    conn.execute(
        "INSERT INTO meters (code, name, unit, aggregation)"
        " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
    )


def event(account_id: int, key: str, quantity: int | str, at: datetime) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "meter_code": "api_calls",
        "quantity": Decimal(quantity),
        "occurred_at": at,
        "idempotency_key": key,
    }


def counts(conn: Any) -> tuple[int, int, int, int]:
    """Events, keys, cancellations, rollup queue rows."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM usage_event_keys),"
        " (SELECT count(*) FROM usage_cancellations), (SELECT count(*) FROM usage_rollup_queue)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def totals(db: Database | UnitOfWork, account_id: int, now: datetime) -> dict[str, Any]:
    return {
        t.meter_code: (t.event_count, t.quantity_sum)
        for t in db.usage_reports.period_totals(
            account_id=account_id, period_start=now - timedelta(days=2), period_end=now + HOUR
        )
    }


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def account(conn: psycopg.Connection[Any], uow: UnitOfWork) -> tuple[int, int]:
    """An account with its owner (id, owner id), and the meter."""
    add_meter(conn)
    owned = uow.accounts.create_with_owner(name="Acme", owner_email="ada@acme.test")
    return owned.account.id, owned.owner.id


def test_cancelling_records_who_when_and_why_and_the_event_itself_stays_as_it_was(
    uow: UnitOfWork, account: tuple[int, int], now: datetime
) -> None:
    account_id, owner = account
    stored = uow.usage.record(**event(account_id, "req-1", "2.5", now - 3 * HOUR))
    assert stored.event is not None
    before = uow.connection.execute("SELECT now()").fetchone()
    result = uow.usage.cancel(
        account_id=account_id,
        idempotency_key="req-1",
        reason="sent by a client bug",
        cancelled_by=owner,
    )
    assert isinstance(result, CancelResult)
    assert result.duplicate is False
    c = result.cancellation
    assert (c.account_id, c.event_id, c.occurred_at, c.meter_code, c.quantity) == (
        account_id,
        stored.event.id,
        stored.event.occurred_at,
        "api_calls",
        Decimal("2.5"),
    )
    assert (c.idempotency_key, c.reason, c.cancelled_by) == ("req-1", "sent by a client bug", owner)
    assert before is not None
    assert c.cancelled_at == before[0]  # this transaction's time
    assert uow.usage.get_cancellation(account_id=account_id, idempotency_key="req-1") == c
    # The event is a fact: still stored, unchanged, and readable by its key.
    assert uow.usage.get_by_key(account_id=account_id, idempotency_key="req-1") == stored.event


def test_a_cancelled_events_key_stays_consumed_so_sending_it_again_is_a_duplicate(
    db: Database, now: datetime
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    account_id = db.accounts.create(name="Acme").id
    first = db.usage.record(**event(account_id, "req-1", 4, now - HOUR))
    db.usage.cancel(account_id=account_id, idempotency_key="req-1", reason="duplicate charge")

    again = db.usage.record(**event(account_id, "req-1", 4, now))
    assert again.duplicate is True
    assert again.event == first.event  # the original, cancelled event; nothing new
    batch = db.usage.record_batch(
        events=[event(account_id, "req-1", 9, now), event(account_id, "req-2", 1, now)]
    )
    assert (batch.inserted, batch.duplicates, batch.rejected) == (1, 1, [])
    with db.connection() as conn:
        assert counts(conn)[:3] == (2, 2, 1)
    # Only req-2 counts: req-1 was cancelled and its re-sendings stored nothing.
    assert totals(db, account_id, now) == {"api_calls": (1, Decimal(1))}


def test_cancelling_twice_stores_one_cancellation_and_the_first_reason_stands(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: tuple[int, int], now: datetime
) -> None:
    account_id, owner = account
    uow.usage.record(**event(account_id, "req-1", 1, now))
    first = uow.usage.cancel(
        account_id=account_id, idempotency_key="req-1", reason="first", cancelled_by=owner
    )
    before = counts(conn)
    second = uow.usage.cancel(account_id=account_id, idempotency_key="req-1", reason="second")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.cancellation == first.cancellation
    assert second.cancellation.reason == "first"
    assert counts(conn) == before  # no second cancellation, no second queue row


def test_an_unknown_key_is_not_found_and_nothing_is_written(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: tuple[int, int], now: datetime
) -> None:
    account_id, _ = account
    uow.usage.record(**event(account_id, "req-1", 1, now))
    before = counts(conn)
    with pytest.raises(NotFound) as info:
        uow.usage.cancel(account_id=account_id, idempotency_key="req-2", reason="why")
    assert "req-2" in str(info.value)
    with pytest.raises(NotFound):  # an account that does not exist at all
        uow.usage.cancel(account_id=2**62, idempotency_key="req-1", reason="why")
    assert counts(conn) == before
    assert uow.usage.get_cancellation(account_id=account_id, idempotency_key="req-2") is None


def test_another_accounts_key_is_not_found_and_its_event_stays_counted(
    db: Database, now: datetime
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    mine = db.accounts.create(name="Mine").id
    theirs = db.accounts.create(name="Theirs").id
    db.usage.record(**event(theirs, "shared-key", 7, now))
    db.usage.record(**event(theirs, "only-theirs", 1, now))
    db.usage.record(**event(mine, "shared-key", 2, now))

    with pytest.raises(NotFound):
        db.usage.cancel(account_id=mine, idempotency_key="only-theirs", reason="not mine")
    result = db.usage.cancel(account_id=mine, idempotency_key="shared-key", reason="mine")
    assert result.cancellation.account_id == mine
    assert result.cancellation.quantity == Decimal(2)  # my event of that key, not theirs
    assert db.usage.get_cancellation(account_id=theirs, idempotency_key="shared-key") is None
    assert totals(db, theirs, now) == {"api_calls": (2, Decimal(8))}
    assert totals(db, mine, now) == {}


def test_a_user_of_another_account_cannot_be_the_one_who_cancelled(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: tuple[int, int], now: datetime
) -> None:
    account_id, _ = account
    stranger = uow.accounts.create_with_owner(name="Other", owner_email="bob@other.test")
    uow.usage.record(**event(account_id, "req-1", 1, now))
    before = counts(conn)
    with pytest.raises(ReferenceViolation) as info, conn.transaction():
        uow.usage.cancel(
            account_id=account_id,
            idempotency_key="req-1",
            reason="why",
            cancelled_by=stranger.owner.id,
        )
    assert info.value.constraint == "usage_cancellations_cancelled_by_fkey"
    assert counts(conn) == before


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "an empty reason": ({"reason": ""}, "reason"),
    "a reason of 501 characters": ({"reason": "x" * 501}, "reason"),
    "a reason with a NUL": ({"reason": "a\x00b"}, "reason"),
    "a reason that is not a str": ({"reason": 42}, "reason"),
    "an empty key": ({"idempotency_key": ""}, "idempotency_key"),
    "a key of 201 characters": ({"idempotency_key": "k" * 201}, "idempotency_key"),
    "a cancelled_by of 0": ({"cancelled_by": 0}, "cancelled_by"),
    "an account id of 0": ({"account_id": 0}, "account_id"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_argument_is_refused_naming_it_before_any_sql(
    conn: psycopg.Connection[Any],
    uow: UnitOfWork,
    account: tuple[int, int],
    now: datetime,
    case: str,
) -> None:
    account_id, _ = account
    uow.usage.record(**event(account_id, "req-1", 1, now))
    overrides, field = BAD[case]
    before = counts(conn)
    args = {"account_id": account_id, "idempotency_key": "req-1", "reason": "why", **overrides}
    with pytest.raises(InvalidInput) as info:
        uow.usage.cancel(**args)
    assert info.value.field == field
    assert counts(conn) == before  # and the transaction is still usable: no SQL ran
    ok = uow.usage.cancel(account_id=account_id, idempotency_key="req-1", reason="ok")
    assert ok.duplicate is False


def test_a_reason_of_500_characters_and_an_event_34_days_old_are_accepted(
    uow: UnitOfWork, account: tuple[int, int], now: datetime
) -> None:
    account_id, _ = account
    uow.usage.record(**event(account_id, "old", 1, now - timedelta(days=34)))
    result = uow.usage.cancel(account_id=account_id, idempotency_key="old", reason="é" * 500)
    assert result.cancellation.reason == "é" * 500


def test_an_event_older_than_the_accepted_window_cannot_be_cancelled_and_nothing_is_written(
    db: Database, fresh_url: str, now: datetime
) -> None:
    occurred = oldest_accepted(now) - HOUR  # 35 days and an hour ago
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        ensure_partitions(conn, start=occurred, ahead=0)
        add_meter(conn)
    account_id = db.accounts.create(name="Acme").id
    with db.connection() as conn:
        # Stored while it was inside the window (record() refuses it now).
        conn.execute(
            "WITH e AS (INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,"
            " idempotency_key) VALUES (%s, 'api_calls', 3, %s, 'late') RETURNING id)"
            " INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)"
            " SELECT %s, 'late', id, %s FROM e",
            (account_id, occurred, account_id, occurred),
        )
        before = counts(conn)
    with pytest.raises(InvalidInput) as info:
        db.usage.cancel(account_id=account_id, idempotency_key="late", reason="too late")
    assert info.value.field == "idempotency_key"
    assert "older than 35 days" in str(info.value)
    with db.connection() as conn:
        assert counts(conn) == before
    assert db.usage.get_cancellation(account_id=account_id, idempotency_key="late") is None


def test_reports_and_rollups_leave_a_cancelled_event_out_before_and_after_a_refresh(
    db: Database, now: datetime
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    account_id = db.accounts.create(name="Acme").id
    hour = now.replace(minute=0, second=0) - 5 * HOUR
    db.usage.record_batch(
        events=[
            event(account_id, "a", 1, hour + timedelta(minutes=1)),
            event(account_id, "b", 10, hour + timedelta(minutes=2)),
            event(account_id, "c", 100, hour + timedelta(minutes=3)),
            event(account_id, "alone", 1000, hour + 2 * HOUR),
        ]
    )
    refresh_rollups(db)

    def rollups() -> list[tuple[Any, ...]]:
        with db.connection() as conn:
            return conn.execute(
                "SELECT granularity, bucket_start, event_count, quantity_sum, quantity_max"
                " FROM usage_rollups WHERE account_id = %s ORDER BY 1, 2",
                (account_id,),
            ).fetchall()

    def series() -> list[tuple[Any, ...]]:
        return [
            (b.bucket_start, b.event_count, b.quantity_sum, b.quantity_max)
            for b in db.usage_reports.time_series(
                account_id=account_id,
                meter_code="api_calls",
                start=hour,
                end=hour + 3 * HOUR,
                bucket="hour",
            )
        ]

    assert totals(db, account_id, now) == {"api_calls": (4, Decimal(1111))}
    # The largest of its hour, and the only event of another hour.
    db.usage.cancel(account_id=account_id, idempotency_key="c", reason="test event")
    db.usage.cancel(account_id=account_id, idempotency_key="alone", reason="test event")
    with db.connection() as conn:
        queued = conn.execute(
            "SELECT hour_start FROM usage_rollup_queue WHERE account_id = %s ORDER BY 1",
            (account_id,),
        ).fetchall()
    assert queued == [(hour,), (hour + 2 * HOUR,)]  # the two hours, queued by cancel

    expected_series = [(hour, 2, Decimal(11), Decimal(10))]
    # Before the refresh: the queued hours are read raw, without the cancelled events.
    assert totals(db, account_id, now) == {"api_calls": (2, Decimal(11))}
    assert series() == expected_series
    refresh_rollups(db)
    assert totals(db, account_id, now) == {"api_calls": (2, Decimal(11))}
    assert series() == expected_series
    day = hour.replace(hour=0)
    hour_rows = [r for r in rollups() if r[0] == "hour"]
    assert hour_rows == [("hour", hour, 2, Decimal(11), Decimal(10))]  # the empty hour is gone
    day_rows = [r[1:] for r in rollups() if r[0] == "day"]
    if (hour + 2 * HOUR).replace(hour=0) == day:  # both hours in one UTC day
        assert day_rows == [(day, 2, Decimal(11), Decimal(10))]


def test_cancelling_refunds_no_quota_and_only_metered_usage_drops(db: Database) -> None:
    with db.connection() as conn:
        add_meter(conn)
    plan = db.plans.create_draft(
        code="hard", name="Hard", billing_interval="month", base_price_minor=0, currency="USD",
        meters=[PlanMeterSpec(meter_code="api_calls", included_quantity=Decimal(10),
                              limit_kind="hard", overage_unit_price_minor=Decimal(0))],
    )  # fmt: skip
    db.plans.publish(plan_id=plan.id)
    account_id = db.accounts.create(name="Acme").id
    db.subscriptions.start(account_id=account_id, plan_id=plan.id)
    now = datetime.now(UTC)  # after the subscription started: inside its period
    db.quotas.consume(account_id=account_id, meter_code="api_calls", quantity=Decimal(8))
    db.usage.record(**event(account_id, "job-1", 8, now))

    def counter() -> tuple[Any, ...]:
        with db.connection() as conn:
            row = conn.execute(
                "SELECT used, reserved, updated_at FROM quota_counters WHERE account_id = %s",
                (account_id,),
            ).fetchone()
        assert row is not None
        return tuple(row)

    stored = counter()
    (status,) = db.quotas.status(account_id=account_id)
    assert (status.used, status.metered, status.remaining) == (8, 8, 2)
    db.usage.cancel(account_id=account_id, idempotency_key="job-1", reason="job failed")
    assert counter() == stored  # not even touched
    (status,) = db.quotas.status(account_id=account_id)
    assert (status.used, status.metered, status.remaining) == (8, 0, 2)
    with pytest.raises(QuotaExceeded):  # the decision stands: 3 more is still too much
        db.quotas.consume(account_id=account_id, meter_code="api_calls", quantity=Decimal(3))


# -- concurrency ------------------------------------------------------------------------------


def _blocked_by(db: Database, pid: int) -> list[int]:
    with db.connection() as conn:
        row = conn.execute("SELECT pg_blocking_pids(%s)", (pid,)).fetchone()
    return list(row[0]) if row else []


@pytest.mark.not_on_citus(
    "it detects the second cancel's wait in the coordinator's pg_locks; on Citus the "
    "row lock is waited for on a worker"
)
def test_two_cancellations_of_one_event_at_once_store_one_and_both_return_it(
    db: Database, now: datetime
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    account_id = db.accounts.create(name="Acme").id
    db.usage.record(**event(account_id, "req-1", 5, now))
    with db.connection() as conn:
        queued_before = counts(conn)[3]

    first_cancelled = threading.Event()
    release_first = threading.Event()
    second_pid: list[int] = []
    results: dict[str, CancelResult] = {}
    errors: list[BaseException] = []
    first_pid: list[int] = []

    def first() -> None:
        try:
            with db.unit_of_work() as uow:
                first_pid.append(uow.connection.info.backend_pid)
                results["first"] = uow.usage.cancel(
                    account_id=account_id, idempotency_key="req-1", reason="first"
                )
                first_cancelled.set()
                release_first.wait(10)  # holds its cancellation uncommitted until released
        except BaseException as exc:
            errors.append(exc)
        finally:
            first_cancelled.set()

    def second() -> None:
        try:
            with db.unit_of_work() as uow:
                second_pid.append(uow.connection.info.backend_pid)
                first_cancelled.wait(10)
                results["second"] = uow.usage.cancel(
                    account_id=account_id, idempotency_key="req-1", reason="second"
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        assert first_cancelled.wait(10)
        # Observe the overlap: the second cancel waits for the first's uncommitted row.
        deadline = time.monotonic() + 10
        while not (second_pid and first_pid[0] in _blocked_by(db, second_pid[0])):
            assert time.monotonic() < deadline, "the second cancel never waited for the first"
            assert "second" not in results, "the second cancel finished without waiting"
    finally:
        release_first.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    assert (results["first"].duplicate, results["second"].duplicate) == (False, True)
    assert results["second"].cancellation == results["first"].cancellation
    assert results["first"].cancellation.reason == "first"
    with db.connection() as conn:
        _, _, cancellations, queued = counts(conn)
    assert cancellations == 1
    assert queued == queued_before + 1  # one hour queued, by the cancel that stored


def test_threads_cancelling_the_same_events_from_a_barrier_store_each_once(
    db: Database, now: datetime
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    account_id = db.accounts.create(name="Acme").id
    keys = [f"req-{i}" for i in range(40)]
    db.usage.record_batch(events=[event(account_id, k, 1, now - timedelta(minutes=i))
                                  for i, k in enumerate(keys)])  # fmt: skip
    barrier = threading.Barrier(2)
    made: list[list[str]] = [[], []]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for key in keys:
                result = db.usage.cancel(account_id=account_id, idempotency_key=key, reason="x")
                if not result.duplicate:
                    made[n].append(key)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(made[0] + made[1]) == sorted(keys)  # each made exactly once, by one thread
    with db.connection() as conn:
        assert counts(conn)[2] == len(keys)
    assert totals(db, account_id, now) == {}
