"""The pool as users rely on it: autocommit reads, session settings, timeouts, lost
connections, unreachable servers, exhaustion, secrets kept out of sight, prepared statements.

Every test builds its own ``Database`` with a unique ``application_name`` so that its
connections can be told apart in ``pg_stat_activity``. Time bounds are generous
correctness bounds ("does not hang"), not benchmarks.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from datalayer import AlreadyExists, Database, QueryTimeout, Settings, Unavailable

pytestmark = pytest.mark.both_apis

PASSWORD = "s3cret-pw"


def _settings(url: str, **overrides: Any) -> Settings:
    """Settings for ``url`` with a unique application_name and test-friendly pool sizes."""
    values: dict[str, Any] = {
        "database_url": url,
        "application_name": f"dl_pool_test_{uuid.uuid4().hex[:12]}",
        "pool_min_size": 1,
        "pool_max_size": 2,
        "pool_timeout": 5,
        "connect_timeout": 2,
    }
    values.update(overrides)
    return Settings(**values)


def _free_port() -> int:
    """A localhost TCP port that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _backends(admin: psycopg.Connection[Any], application_name: str) -> list[tuple[Any, ...]]:
    """(pid, state, xact_start) of every server backend with this application_name."""
    return admin.execute(
        "SELECT pid, state, xact_start FROM pg_stat_activity WHERE application_name = %s",
        [application_name],
    ).fetchall()


def _pids(admin: psycopg.Connection[Any], application_name: str) -> set[int]:
    return {row[0] for row in _backends(admin, application_name)}


@pytest.fixture
def admin(fresh_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection outside any pool, to watch and terminate the pool's backends."""
    with psycopg.connect(fresh_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Port of a server that accepts TCP connections and never sends a byte."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(client)

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=2)
        for client in held:
            client.close()
        server.close()


# --- autocommit and session settings -------------------------------------------------------


def test_repository_reads_outside_a_unit_of_work_leave_no_open_transaction(
    database: Callable[..., Database], fresh_url: str, admin: psycopg.Connection[Any]
) -> None:
    settings = _settings(fresh_url, pool_max_size=1)
    with database(settings) as db:
        with db.unit_of_work() as uow:
            account = uow.accounts.create(name="Acme")

        assert db.accounts.get(account_id=account.id) == account

        # pool_max_size=1: this is the very connection the read ran on.
        with db.connection() as conn:
            assert conn.autocommit is True
            assert conn.info.transaction_status is TransactionStatus.IDLE
            conn.execute("SELECT 1")
            assert conn.info.transaction_status is TransactionStatus.IDLE

        assert db.accounts.get(account_id=account.id) == account
        backends = _backends(admin, settings.application_name)
        assert len(backends) == 1
        _, state, xact_start = backends[0]
        assert state == "idle"
        assert xact_start is None


def test_pooled_connections_carry_the_configured_session_settings(
    database: Callable[..., Database], fresh_url: str, admin: psycopg.Connection[Any]
) -> None:
    settings = _settings(fresh_url, statement_timeout_ms=4321, lock_timeout_ms=1234)
    with database(settings) as db:
        with db.connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone() == ("4321ms",)
            assert conn.execute("SHOW lock_timeout").fetchone() == ("1234ms",)
            assert conn.execute("SHOW timezone").fetchone() == ("UTC",)
            assert conn.execute("SHOW application_name").fetchone() == (settings.application_name,)
            dbname = conn.info.dbname
        account = db.accounts.create(name="Acme")
        assert account.created_at.utcoffset() == timedelta(0)

        names = admin.execute(
            "SELECT datname FROM pg_stat_activity WHERE application_name = %s",
            [settings.application_name],
        ).fetchall()
        assert names
        assert {row[0] for row in names} == {dbname}


def test_a_statement_over_statement_timeout_raises_query_timeout_and_the_pool_recovers(
    database: Callable[..., Database],
    fresh_url: str,
) -> None:
    with database(_settings(fresh_url, statement_timeout_ms=200)) as db:
        # pg_sleep(30) ends only by a cancel; the server says which (not a timing check).
        with pytest.raises(QueryTimeout) as info, db.connection() as conn:
            conn.execute("SELECT pg_sleep(30)")

        assert info.value.sqlstate == "57014"
        assert "statement timeout" in str(info.value)
        with db.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.transaction_status is TransactionStatus.IDLE
        assert db.accounts.get(account_id=1) is None


# --- lost connections and unreachable servers ----------------------------------------------


def test_after_every_pooled_backend_is_terminated_the_next_call_gets_a_fresh_connection(
    database: Callable[..., Database], fresh_url: str, admin: psycopg.Connection[Any]
) -> None:
    settings = _settings(fresh_url, pool_min_size=2, pool_max_size=4, pool_timeout=5)
    name = settings.application_name
    with database(settings) as db:
        db.open(wait=True)
        with db.unit_of_work() as uow:
            account = uow.accounts.create(name="Acme")
        old = _pids(admin, name)
        assert len(old) >= 2

        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [name],
        )
        deadline = time.monotonic() + 5
        while _pids(admin, name) & old:
            assert time.monotonic() < deadline, "terminated backends did not go away"
            time.sleep(0.02)

        # The first call after the outage succeeds (how fast is the bench's business).
        assert db.accounts.get(account_id=account.id) == account

        new = _pids(admin, name)
        assert new
        assert not new & old

        with db.unit_of_work() as uow:
            other = uow.accounts.create(name="After the outage")
        assert db.accounts.get(account_id=other.id) == other
        assert db.stats()["pool_size"] <= settings.pool_max_size


def test_the_checkout_check_refuses_a_connection_whose_backend_was_terminated(
    fresh_url: str, admin: psycopg.Connection[Any]
) -> None:
    """``_alive`` on a pooled connection: healthy, then after pg_terminate_backend (the FATAL
    message and the end of the stream both arrived) refused, without a query."""
    from datalayer._database import _alive

    with Database(_settings(fresh_url, pool_min_size=1, pool_max_size=1)) as db:
        db.open(wait=True)
        conn = db._pool.getconn()
        try:
            assert _alive(conn) is True
            assert _alive(conn) is True  # checking consumes nothing a healthy one needs
            pid = conn.info.backend_pid
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 5
            while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "the terminated backend did not go away"
                time.sleep(0.01)
            assert _alive(conn) is False
            assert conn.closed
        finally:
            db._pool.putconn(conn)


def test_a_call_with_nothing_listening_raises_unavailable_within_the_pool_timeout(
    database: Callable[..., Database],
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/x"
    settings = _settings(url, pool_timeout=1, connect_timeout=1)
    with database(settings) as db:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            db.accounts.get(account_id=1)
        elapsed = time.monotonic() - start
    assert elapsed < settings.pool_timeout + 1


def test_a_call_to_a_server_that_never_answers_raises_unavailable_rather_than_hanging(
    database: Callable[..., Database],
    silent_server: int,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_server}/x"
    settings = _settings(url, pool_timeout=1, connect_timeout=1)
    with database(settings) as db:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            db.accounts.get(account_id=1)
        elapsed = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(Unavailable), db.unit_of_work():
            pass
        elapsed_uow = time.monotonic() - start
    bound = settings.pool_timeout + settings.connect_timeout + 1
    assert elapsed < bound
    assert elapsed_uow < bound


def test_open_and_wait_against_an_unreachable_server_raises_unavailable_promptly(
    database: Callable[..., Database],
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/x"
    settings = _settings(url, pool_timeout=1, connect_timeout=1)
    with closing(database(settings)) as db:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            db.open(wait=True)
        elapsed = time.monotonic() - start
    assert elapsed < settings.pool_timeout + 1


# --- exhaustion ----------------------------------------------------------------------------


def test_an_exhausted_pool_raises_unavailable_after_the_pool_timeout_and_recovers_on_release(
    database: Callable[..., Database],
    fresh_url: str,
) -> None:
    settings = _settings(fresh_url, pool_min_size=1, pool_max_size=1, pool_timeout=1)
    with database(settings) as db:
        held = threading.Event()
        release = threading.Event()
        errors: list[BaseException] = []
        holder_ids: list[int] = []

        def hold_a_unit_of_work() -> None:
            try:
                with db.unit_of_work() as uow:
                    holder_ids.append(uow.accounts.create(name="Holder").id)
                    held.set()
                    release.wait(10)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                held.set()

        holder = threading.Thread(target=hold_a_unit_of_work, name="holder")
        holder.start()
        try:
            assert held.wait(5)
            assert not errors
            start = time.monotonic()
            with pytest.raises(Unavailable):
                db.accounts.get(account_id=1)
            elapsed = time.monotonic() - start
        finally:
            release.set()
            holder.join(5)

        assert not errors
        assert 0.8 <= elapsed < settings.pool_timeout + 1
        assert [a.name for a in db.accounts.get_many(account_ids=holder_ids)] == ["Holder"]
        with db.unit_of_work() as uow:
            assert uow.accounts.create(name="Next").name == "Next"


# --- secrets ---------------------------------------------------------------------------------


def _texts_seen_by_users(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> tuple[list[str], list[logging.LogRecord]]:
    """Everything a user may print or log around a failing call and a failing open."""
    texts = [repr(settings), str(settings)]
    with Database(settings) as db:
        texts.append(repr(db))
        with pytest.raises(Unavailable) as info:
            db.accounts.get(account_id=1)
        texts += [
            str(info.value),
            repr(info.value),
            "".join(traceback.format_exception(info.value)),
        ]
    texts.append(repr(db))
    with closing(Database(settings)) as db, pytest.raises(Unavailable) as info:
        db.open(wait=True)
    texts += [str(info.value), "".join(traceback.format_exception(info.value))]

    records = [r for r in caplog.records if r.name.startswith(("datalayer", "psycopg"))]
    for record in records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    return texts, records


def test_a_password_in_the_database_url_never_shows_in_reprs_errors_or_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="datalayer")
    caplog.set_level(logging.DEBUG, logger="psycopg")
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{_free_port()}/x"
    settings = _settings(url, pool_timeout=1, connect_timeout=1)

    texts, records = _texts_seen_by_users(settings, caplog)

    assert "postgres:***@127.0.0.1" in repr(settings)
    assert any(r.name == "datalayer" for r in records)
    assert any(r.name.startswith("psycopg") for r in records)
    assert [t for t in texts if PASSWORD in t] == []


def test_a_password_given_as_a_url_query_parameter_never_shows_in_reprs(
    database: Callable[..., Database],
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{_free_port()}/x?password={PASSWORD}"
    settings = _settings(url, pool_timeout=1, connect_timeout=1)
    with database(settings) as db:
        texts = [repr(settings), repr(db), settings.safe_database_url]
    assert [t for t in texts if PASSWORD in t] == []


def test_a_multi_host_url_with_a_password_opens_and_is_shown_redacted(
    database: Callable[..., Database], fresh_url: str
) -> None:
    params = conninfo_to_dict(fresh_url)
    hosts = f"{params['host']}:{params['port']},{params['host']}:{params['port']}"
    url = f"postgresql://{params['user']}:{PASSWORD}@{hosts}/{params['dbname']}"
    settings = _settings(url)
    with closing(database(settings)) as db:
        db.open()
        assert db.accounts.get(account_id=1) is None
        texts = [repr(settings), repr(db)]
    assert [t for t in texts if PASSWORD in t] == []
    assert f"{params['user']}:***@" in repr(settings)


# --- prepared statements -------------------------------------------------------------------


def _prepared_after_ten_reads(db: Database) -> int:
    account = db.accounts.create(name="Acme")
    for _ in range(10):
        assert db.accounts.get(account_id=account.id) == account
    with db.connection() as conn:  # pool_max_size=1: the connection the reads ran on
        row = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()
    assert row is not None
    return int(row[0])


def test_prepare_threshold_none_runs_repeated_reads_without_prepared_statements(
    database: Callable[..., Database],
    fresh_url: str,
) -> None:
    settings = _settings(fresh_url, pool_max_size=1, prepare_threshold=None)
    with database(settings) as db:
        assert _prepared_after_ten_reads(db) == 0


def test_the_default_prepare_threshold_prepares_a_read_repeated_ten_times(
    database: Callable[..., Database], fresh_url: str
) -> None:
    settings = _settings(fresh_url, pool_max_size=1)
    assert settings.prepare_threshold == 5
    with database(settings) as db:
        assert _prepared_after_ten_reads(db) >= 1


# --- errors ----------------------------------------------------------------------------------


def test_failing_statements_leave_the_pool_healthy_and_its_size_bounded(
    database: Callable[..., Database], fresh_url: str, admin: psycopg.Connection[Any]
) -> None:
    settings = _settings(fresh_url, pool_min_size=1, pool_max_size=3)
    with database(settings) as db:
        account = db.accounts.create(name="Acme")
        db.users.create(account_id=account.id, email="dup@example.com")

        for i in range(20):
            if i % 2:
                with pytest.raises(AlreadyExists) as info:
                    db.users.create(account_id=account.id, email="DUP@example.com")
            else:
                with pytest.raises(AlreadyExists) as info, db.unit_of_work() as uow:
                    uow.users.create(account_id=account.id, email="Dup@Example.com")
            assert info.value.sqlstate == "23505"
            assert info.value.constraint == "users_email_key"

        assert db.stats()["pool_size"] <= settings.pool_max_size
        assert db.users.count(account_id=account.id) == 1
        with db.connection() as conn:
            assert conn.info.transaction_status is TransactionStatus.IDLE
        states = {row[1] for row in _backends(admin, settings.application_name)}
        assert states == {"idle"}
        assert len(_pids(admin, settings.application_name)) <= settings.pool_max_size


def test_on_acquire_reports_how_long_each_checkout_waited(
    database: Callable[..., Database], fresh_url: str
) -> None:
    waits: list[float] = []
    with database(database_url=fresh_url, pool_min_size=1, pool_max_size=1) as db:
        db.on_acquire = waits.append
        db.accounts.list(limit=1)
        assert len(waits) == 1
        assert waits[0] >= 0
        holding = threading.Event()
        released = threading.Event()

        def hold() -> None:
            with db.connection():
                holding.set()
                released.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        spans: list[float] = []

        def checkout() -> None:
            started = time.monotonic()
            db.accounts.list(limit=1)  # waits for the holder to give the only connection back
            spans.append(time.monotonic() - started)

        try:
            assert holding.wait(30)
            waiter = threading.Thread(target=checkout)
            waiter.start()
            deadline = time.monotonic() + 30
            while db.stats().get("requests_waiting", 0) < 1:  # the checkout is queued
                assert time.monotonic() < deadline, "the checkout never queued"
                time.sleep(0.005)
            queued_at = time.monotonic()
            time.sleep(0.05)  # a wait long enough to measure, not a synchronisation point
            released_at = time.monotonic()
        finally:
            released.set()
            holder.join()
        waiter.join()
    assert len(waits) == 3  # the first read, the holder, the queued checkout
    # The queued checkout's reported wait covers at least the time it was seen queued
    # before the release, and at most the whole call.
    assert released_at - queued_at <= waits[2] <= spans[0]
