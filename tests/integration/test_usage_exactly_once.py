"""Usage events are stored exactly once per (account, idempotency key)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from overlap import wait_until_blocked
from psycopg import sql

from datalayer import Database, InvalidInput, ReferenceViolation, UnitOfWork
from datalayer._ops.partitions import month_start

pytestmark = pytest.mark.both_apis

REPO = Path(__file__).resolve().parents[2]


def add_meter(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO meters (code, name, unit, aggregation)"
        " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
    )


def stored_counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
    """Events, distinct stored keys, key rows, rollup queue rows."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM usage_events),"
        " (SELECT count(DISTINCT (account_id, idempotency_key)) FROM usage_events),"
        " (SELECT count(*) FROM usage_event_keys),"
        " (SELECT count(*) FROM usage_rollup_queue)"
    ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))


def test_a_key_sent_again_with_another_time_and_quantity_is_stored_once_and_returns_the_first(
    db: Database,
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    account = db.accounts.create(name="Acme")
    other = db.accounts.create(name="Globex")
    now = datetime.now(UTC).replace(microsecond=0)
    first = db.usage.record(
        account_id=account.id,
        meter_code="api_calls",
        quantity=Decimal("3.25"),
        occurred_at=now,
        idempotency_key="req-1",
        properties={"path": "/v1/things"},
    )
    assert first.duplicate is False
    assert first.event is not None
    assert first.event.quantity == Decimal("3.25")
    assert first.event.occurred_at == now

    # Another quantity, and a time in last month (another partition).
    again = db.usage.record(
        account_id=account.id,
        meter_code="api_calls",
        quantity=Decimal(99),
        occurred_at=month_start(now) - timedelta(hours=2),
        idempotency_key="req-1",
    )
    assert again.duplicate is True
    assert again.event == first.event
    assert db.usage.get_by_key(account_id=account.id, idempotency_key="req-1") == first.event
    with db.connection() as conn:
        assert stored_counts(conn)[:3] == (1, 1, 1)
        assert conn.execute("SELECT sum(quantity) FROM usage_events").fetchone() == (
            Decimal("3.25"),
        )

    # The same key under another account is another event.
    theirs = db.usage.record(
        account_id=other.id,
        meter_code="api_calls",
        quantity=Decimal(1),
        occurred_at=now,
        idempotency_key="req-1",
    )
    assert theirs.duplicate is False
    assert theirs.event is not None
    assert theirs.event.id != first.event.id
    with db.connection() as conn:
        assert stored_counts(conn)[:3] == (2, 2, 2)


SENDER = r"""
import json, sys
from datetime import datetime
from decimal import Decimal
from datalayer import Database, Settings

url, account_id = sys.argv[1], int(sys.argv[2])
plan = json.loads(sys.stdin.readline())
results, errors = {}, []
# lock_timeout off: the test holds the key table until both senders wait for it.
settings = Settings(database_url=url, pool_min_size=1, pool_max_size=2, lock_timeout_ms=0)
with Database(settings) as db:
    db.accounts.get(account_id=account_id)  # connected before the start signal
    print("ready", flush=True)
    sys.stdin.readline()
    for key, quantity, occurred_at in plan:
        try:
            result = db.usage.record(
                account_id=account_id,
                meter_code="api_calls",
                quantity=Decimal(quantity),
                occurred_at=datetime.fromisoformat(occurred_at),
                idempotency_key=key,
            )
            results[key] = [result.event.id, result.duplicate, str(result.event.quantity)]
        except Exception as exc:
            errors.append(f"{key}: {type(exc).__name__}: {exc}")
print(json.dumps({"results": results, "errors": errors}), flush=True)
"""


@pytest.mark.not_on_citus(
    "tests/overlap.py sees a statement wait in the coordinator's pg_locks; on Citus the "
    "row lock is taken and waited for on a worker"
)
def test_two_processes_sending_overlapping_keys_at_once_store_each_key_exactly_once(
    db: Database, fresh_url: str, fresh_dbname: str, fresh_admin_url: str
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    with psycopg.connect(fresh_admin_url, autocommit=True) as admin:
        # Speed only (no fsync wait per event): visibility and locking are unchanged.
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                sql.Identifier(fresh_dbname)
            )
        )
    account = db.accounts.create(name="Acme")
    now = datetime.now(UTC)
    shared = [f"shared-{i}" for i in range(1000)]
    plans = []
    for n in range(2):
        # Another order per sender, but close enough that both reach a key at about the
        # same moment: each block of 100 shared keys is shuffled differently.
        rng = random.Random(n)
        keys = [
            key
            for block in range(0, len(shared), 100)
            for key in rng.sample(shared[block : block + 100], 100)
        ]
        keys.remove(shared[0])
        keys.insert(0, shared[0])  # both senders' first event: a race on one key, at once
        own = [f"own{n}-{i}" for i in range(1000)]
        ordered = [key for pair in zip(keys, own, strict=True) for key in pair]
        # Each sender its own quantity and time, so the stored row shows who won.
        plans.append(
            [[key, str(n + 1), (now - timedelta(seconds=n + 1)).isoformat()] for key in ordered]
        )

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SENDER, fresh_url, str(account.id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in plans
    ]
    try:
        for proc, plan in zip(procs, plans, strict=True):
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.write(json.dumps(plan) + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ready"
        with (
            psycopg.connect(fresh_admin_url) as holder,
            psycopg.connect(fresh_admin_url, autocommit=True) as watcher,
        ):
            # Both senders' first statement inserts into the key table: hold it, let them
            # go, and release only once both are seen waiting for it. From then on both are
            # inside the critical section at once, racing for the same first key.
            holder.execute("LOCK TABLE usage_event_keys IN SHARE MODE")
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            waiting = wait_until_blocked(watcher, holder.info.backend_pid, 2, what="senders")
            holder.commit()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert len(set(waiting)) == 2
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    reports = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert [r["errors"] for r in reports] == [[], []]
    a, b = (r["results"] for r in reports)
    assert len(a) == len(b) == 2000

    with db.connection() as conn:
        events, distinct_keys, key_rows, _ = stored_counts(conn)
        stored = {
            key: (event_id, quantity)
            for key, event_id, quantity in conn.execute(
                "SELECT idempotency_key, id, quantity FROM usage_events"
            ).fetchall()
        }
        linked = conn.execute(
            "SELECT count(*) FROM usage_event_keys k JOIN usage_events e"
            " ON e.account_id = k.account_id AND e.occurred_at = k.occurred_at"
            " AND e.id = k.event_id AND e.idempotency_key = k.idempotency_key"
        ).fetchone()
    assert events == distinct_keys == key_rows == 3000
    assert linked == (3000,)
    assert set(stored) == set(a) | set(b)

    # The first key, sent by both while both were inside the insert: one stored it, the
    # other got its event back as a duplicate.
    assert sorted([a[shared[0]][1], b[shared[0]][1]]) == [False, True]
    for key in shared:
        (id_a, dup_a, qty_a), (id_b, dup_b, qty_b) = a[key], b[key]
        assert id_a == id_b == stored[key][0], key  # both got the one stored event
        assert qty_a == qty_b
        assert sorted([dup_a, dup_b]) == [False, True], key  # exactly one sender stored it
        winner_quantity = "1" if not dup_a else "2"
        assert stored[key][1] == Decimal(winner_quantity)
    for n, results in enumerate((a, b)):
        for key, (event_id, duplicate, _) in results.items():
            if key.startswith("own"):
                assert key.startswith(f"own{n}-")
                assert duplicate is False
                assert stored[key][0] == event_id


def now_utc() -> datetime:
    return datetime.now(UTC)


# Each case: the arguments that replace good ones (made at call time), the error, its field.
BAD_INPUTS: dict[str, tuple[Callable[[], dict[str, Any]], type[Exception], str | None]] = {
    "a naive datetime": (
        lambda: {"occurred_at": datetime.now()},
        InvalidInput,
        "occurred_at",
    ),
    "a negative quantity": (lambda: {"quantity": Decimal(-1)}, InvalidInput, "quantity"),
    "a NaN quantity": (lambda: {"quantity": Decimal("NaN")}, InvalidInput, "quantity"),
    "an infinite quantity": (lambda: {"quantity": Decimal("Infinity")}, InvalidInput, "quantity"),
    "a float NaN quantity": (lambda: {"quantity": float("nan")}, InvalidInput, "quantity"),
    "a quantity of 1e13": (lambda: {"quantity": Decimal("1e13")}, InvalidInput, "quantity"),
    "a quantity of exactly 1e12": (lambda: {"quantity": Decimal("1e12")}, InvalidInput, "quantity"),
    "an unknown meter": (lambda: {"meter_code": "no_such_meter"}, ReferenceViolation, None),
    "an unknown account": (lambda: {"account_id": 2**62}, ReferenceViolation, None),
    "a malformed meter code": (lambda: {"meter_code": "API Calls"}, InvalidInput, "meter_code"),
    "an empty key": (lambda: {"idempotency_key": ""}, InvalidInput, "idempotency_key"),
    "a key with a NUL": (lambda: {"idempotency_key": "req\x001"}, InvalidInput, "idempotency_key"),
    "a 201-character key": (
        lambda: {"idempotency_key": "k" * 201},
        InvalidInput,
        "idempotency_key",
    ),
    "a time 40 days ago": (
        lambda: {"occurred_at": now_utc() - timedelta(days=40)},
        InvalidInput,
        "occurred_at",
    ),
    "a time 10 minutes ahead": (
        lambda: {"occurred_at": now_utc() + timedelta(minutes=10)},
        InvalidInput,
        "occurred_at",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_typed_error_naming_the_field_and_writes_nothing(
    conn: psycopg.Connection[Any], uow: UnitOfWork, case: str
) -> None:
    add_meter(conn)
    account = uow.accounts.create(name="Acme")
    overrides, error, field = BAD_INPUTS[case]
    event = {
        "account_id": account.id,
        "meter_code": "api_calls",
        "quantity": Decimal(1),
        "occurred_at": now_utc(),
        "idempotency_key": "req-1",
        **overrides(),
    }
    before = stored_counts(conn)
    with pytest.raises(error) as info, conn.transaction():  # a savepoint keeps conn usable
        uow.usage.record(**event)
    if field is not None:
        assert isinstance(info.value, InvalidInput)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")
    else:
        assert isinstance(info.value, ReferenceViolation)
    assert stored_counts(conn) == before

    # The same key with good input is then accepted: the refusal reserved nothing.
    good = uow.usage.record(
        account_id=account.id,
        meter_code="api_calls",
        quantity=Decimal(1),
        occurred_at=now_utc(),
        idempotency_key="req-1",
    )
    assert good.duplicate is False
    assert stored_counts(conn)[:3] == (before[0] + 1, before[1] + 1, before[2] + 1)


def test_the_edges_of_the_accepted_window_and_quantity_range_are_accepted(
    conn: psycopg.Connection[Any], uow: UnitOfWork
) -> None:
    add_meter(conn)
    account = uow.accounts.create(name="Acme")
    now = now_utc()
    good = {
        "34 days ago": (now - timedelta(days=34), Decimal(0)),
        "4 minutes ahead": (now + timedelta(minutes=4), Decimal("999999999999.999999")),
        "last month": (month_start(now) - timedelta(microseconds=1), Decimal("0.000001")),
    }
    for key, (occurred_at, quantity) in good.items():
        result = uow.usage.record(
            account_id=account.id,
            meter_code="api_calls",
            quantity=quantity,
            occurred_at=occurred_at,
            idempotency_key=key,
        )
        assert result.duplicate is False
        assert result.event is not None
        assert result.event.quantity == quantity
    assert stored_counts(conn)[:3] == (3, 3, 3)


def test_a_key_whose_event_was_deleted_is_still_a_duplicate_rather_than_an_unknown_account(
    db: Database, fresh_admin_url: str
) -> None:
    with db.connection() as conn:
        add_meter(conn)
    account = db.accounts.create(name="Acme")
    event = {
        "account_id": account.id,
        "meter_code": "api_calls",
        "quantity": Decimal(1),
        "occurred_at": now_utc(),
        "idempotency_key": "req-1",
    }
    first = db.usage.record(**event)
    assert first.event is not None
    with psycopg.connect(fresh_admin_url, autocommit=True) as admin:  # events are append-only
        admin.execute("DELETE FROM usage_events WHERE id = %s", (first.event.id,))
    again = db.usage.record(**event)
    assert again.duplicate is True
    assert again.event is None
    with db.connection() as conn:
        assert stored_counts(conn)[:3] == (0, 0, 1)
