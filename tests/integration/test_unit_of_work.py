"""The unit of work owns the transaction; run_in_transaction retries conflicts."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from datalayer import (
    AlreadyExists,
    ConcurrencyConflict,
    Database,
    DataLayerError,
    ReadOnlyTransaction,
    UnitOfWork,
    _exec,
    _exec_async,
)
from datalayer._loader import parse_sql
from datalayer._statement import model_rows
from datalayer._uow import _ConnectionSession
from datalayer._uow_async import _AsyncConnectionSession

pytestmark = pytest.mark.both_apis


def _count_accounts(db: Database) -> int:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM accounts").fetchone()
    assert row is not None
    return int(row[0])


def test_commits_when_the_block_ends_normally(db: Database) -> None:
    with db.unit_of_work() as uow:
        account = uow.accounts.create(name="Acme")
        uow.users.create(account_id=account.id, email="ada@acme.test")
    assert db.users.count(account_id=account.id) == 1


def test_rolls_back_everything_when_the_block_raises(db: Database) -> None:
    with pytest.raises(RuntimeError), db.unit_of_work() as uow:
        uow.accounts.create(name="Acme")
        raise RuntimeError("boom")
    assert _count_accounts(db) == 0


def test_a_failed_statement_rolls_back_the_earlier_ones(db: Database) -> None:
    with db.unit_of_work() as uow:
        account = uow.accounts.create(name="Acme")
        uow.users.create(account_id=account.id, email="ada@acme.test")
    with pytest.raises(AlreadyExists) as info, db.unit_of_work() as uow:
        other = uow.accounts.create(name="Other")
        uow.users.create(account_id=other.id, email="ADA@acme.test")
    assert info.value.constraint == "users_email_key"
    assert _count_accounts(db) == 1


def test_statements_of_every_shape_on_one_connection_read_their_own_rows(db: Database) -> None:
    """One connection runs rows of different models, scalars, lists and a failed
    statement in turn (its idle cursor is reused, ``_exec``): each reads its own."""
    with db.unit_of_work() as uow:
        accounts = [uow.accounts.create(name=f"Shape {i}") for i in range(3)]
        users = [uow.users.create(account_id=a.id, email=f"u{a.id}@shape.test") for a in accounts]
    for _ in range(3):
        with db.unit_of_work() as uow:
            for account, user in zip(accounts, users, strict=True):
                assert uow.accounts.get(account_id=account.id) == account
                assert uow.users.get(account_id=account.id, user_id=user.id) == user
                assert uow.accounts.exists(account_id=account.id) is True
                assert uow.users.list(account_id=account.id).items == [user]
                assert uow.accounts.get(account_id=2**62) is None
        with pytest.raises(AlreadyExists):  # fails on the pooled connection, then reads again
            db.users.create(account_id=accounts[0].id, email=users[0].email)
        assert db.users.get(account_id=accounts[1].id, user_id=users[1].id) == users[1]
        assert db.accounts.get(account_id=accounts[2].id) == accounts[2]


class _Pair(BaseModel):
    x: int
    y: int


class _Other(BaseModel):
    p: int
    q: int


def test_a_reused_cursor_never_reads_column_names_from_the_last_result(fresh_url: str) -> None:
    """Two queries of the same column count, other names, in turn on one connection (the
    idle cursor of ``_exec``): each model is built from its own statement's columns."""
    first, second = parse_sql(
        "-- name: get_pair :one\nSELECT 1 AS x, 2 AS y;\n"
        "-- name: get_other :one\nSELECT 3 AS p, 4 AS q;\n",
        "shapes.sql",
    )

    with psycopg.connect(fresh_url, autocommit=True) as conn:
        session = _ConnectionSession(conn)
        for _ in range(2):
            assert _exec.execute(session, first, {}, model_rows(_Pair)) == _Pair(x=1, y=2)
            assert _exec.execute(session, second, {}, model_rows(_Other)) == _Other(p=3, q=4)

    async def on_async() -> None:
        async with await psycopg.AsyncConnection.connect(fresh_url, autocommit=True) as aconn:
            session = _AsyncConnectionSession(aconn)
            for _ in range(2):
                pair = await _exec_async.execute(session, first, {}, model_rows(_Pair))
                assert pair == _Pair(x=1, y=2)
                other = await _exec_async.execute(session, second, {}, model_rows(_Other))
                assert other == _Other(p=3, q=4)

    asyncio.run(on_async())


def test_work_is_invisible_to_others_until_commit(db: Database) -> None:
    with db.unit_of_work() as uow:
        account = uow.accounts.create(name="Acme")
        assert db.accounts.get(account_id=account.id) is None
    assert db.accounts.get(account_id=account.id) is not None


def test_using_a_unit_of_work_after_its_block_is_an_error(db: Database) -> None:
    with db.unit_of_work() as uow:
        pass
    with pytest.raises(DataLayerError, match="ended"):
        uow.accounts.get(account_id=1)
    with pytest.raises(DataLayerError, match="ended"):
        _ = uow.connection


def test_an_error_at_commit_is_raised_as_a_datalayer_error(
    db: Database, fresh_admin_url: str
) -> None:
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:  # DDL: the admin's
        conn.execute(
            "ALTER TABLE users ADD CONSTRAINT users_demo_unique UNIQUE (account_id, display_name)"
            " DEFERRABLE INITIALLY DEFERRED"
        )
    account = db.accounts.create(name="Acme")
    with pytest.raises(AlreadyExists) as info, db.unit_of_work() as uow:
        uow.users.create(account_id=account.id, email="a@acme.test", display_name="x")
        uow.users.create(account_id=account.id, email="b@acme.test", display_name="x")
    assert info.value.constraint == "users_demo_unique"
    assert db.users.count(account_id=account.id) == 0


def test_isolation_level_and_read_only_apply_to_that_transaction_only(db: Database) -> None:
    with db.unit_of_work(isolation="serializable", read_only=True) as uow:
        row = uow.connection.execute(
            "SELECT current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only')"
        ).fetchone()
        assert row == ("serializable", "on")
    with db.unit_of_work() as uow:
        row = uow.connection.execute(
            "SELECT current_setting('transaction_isolation'),"
            " current_setting('transaction_read_only')"
        ).fetchone()
        assert row == ("read committed", "off")


def test_a_read_only_unit_of_work_refuses_writes(db: Database) -> None:
    with pytest.raises(ReadOnlyTransaction), db.unit_of_work(read_only=True) as uow:
        uow.accounts.create(name="Acme")
    assert _count_accounts(db) == 0


def _conflicting_increment(db: Database, barrier: threading.Barrier, calls: list[int]) -> None:
    first = [True]

    def work(uow: UnitOfWork) -> None:
        calls.append(1)
        conn = uow.connection
        row = conn.execute("SELECT count(*) FROM accounts").fetchone()
        assert row is not None
        if first[0]:  # both first attempts read before either writes
            first[0] = False
            barrier.wait(timeout=5)
        uow.accounts.create(name=f"n{row[0]}")

    db.run_in_transaction(work, isolation="serializable", attempts=10)


@pytest.mark.not_on_citus(
    "Citus runs distributed transactions at READ COMMITTED at most: there is no "
    "serialization failure to retry"
)
def test_run_in_transaction_retries_a_serialization_failure_until_it_succeeds(
    db: Database,
) -> None:
    barrier = threading.Barrier(2)
    calls: list[int] = []
    threads = [
        threading.Thread(target=_conflicting_increment, args=(db, barrier, calls)) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    with db.connection() as conn:
        names = sorted(r[0] for r in conn.execute("SELECT name FROM accounts").fetchall())
    # Serializable: each saw the other's insert only after a retry, so names differ.
    assert names == ["n0", "n1"]
    assert len(calls) >= 3  # at least one attempt was retried


def test_run_in_transaction_gives_up_after_the_last_attempt(db: Database) -> None:
    calls: list[int] = []

    def always_conflicts(uow: UnitOfWork) -> None:
        calls.append(1)
        uow.connection.execute(
            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
        )

    with pytest.raises(ConcurrencyConflict) as info:
        db.run_in_transaction(always_conflicts, attempts=3, base_delay=0.001)
    assert info.value.sqlstate == "40001"
    assert len(calls) == 3


def test_run_in_transaction_retries_a_deadlock(db: Database) -> None:
    a = db.accounts.create(name="A")
    b = db.accounts.create(name="B")
    barrier = threading.Barrier(2)
    calls: list[str] = []
    errors: list[BaseException] = []

    def lock_both(first: int, second: int) -> None:
        attempt = [0]

        def work(uow: UnitOfWork) -> None:
            calls.append("x")
            attempt[0] += 1
            conn = uow.connection
            conn.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (first,))
            if attempt[0] == 1:  # both hold their first lock before taking the second
                barrier.wait(timeout=5)
            conn.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (second,))

        try:
            db.run_in_transaction(work, attempts=5)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=lock_both, args=(a.id, b.id)),
        threading.Thread(target=lock_both, args=(b.id, a.id)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert errors == []
    assert len(calls) >= 3  # the deadlock victim ran again


def test_run_in_transaction_does_not_retry_other_errors(db: Database) -> None:
    calls: list[int] = []

    def fails(uow: UnitOfWork) -> None:
        calls.append(1)
        raise ValueError("not a conflict")

    with pytest.raises(ValueError, match="not a conflict"):
        db.run_in_transaction(fails)
    assert calls == [1]


def test_the_pool_connection_is_returned_clean_after_a_failure(db: Database) -> None:
    for _ in range(5):
        with pytest.raises(RuntimeError), db.unit_of_work() as uow:
            uow.accounts.create(name="Acme")
            raise RuntimeError
    stats = db.stats()
    assert stats["pool_size"] <= db.settings.pool_max_size
    with db.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_returns_the_functions_result(db: Database) -> None:
    def create(uow: UnitOfWork) -> Any:
        return uow.accounts.create(name="Acme").id

    account_id = db.run_in_transaction(create)
    assert db.accounts.require(account_id=account_id).name == "Acme"
