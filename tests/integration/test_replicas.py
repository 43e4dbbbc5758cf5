"""Read replicas with read-your-writes by WAL LSN, against a real streaming replica.

``replicated`` (tests/scaleout_servers.py) is a primary of the tests' own with
the migrated schema and a ``pg_basebackup -R`` replica of it. Staleness is made
deterministic by pausing the replica's replay (``pg_wal_replay_pause()``).
Every test runs on ``Database`` and again on ``AsyncDatabase`` (``both_apis``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from conftest import CACHE_KEYS, REDIS_URL
from scaleout_servers import ReplicatedDatabase

from datalayer import AsyncDatabase, Database, DataLayerError, InvalidInput, Settings
from datalayer._bench.scenarios import Profile, Result, scale_out_lookups

# Needs a part a bare machine may lack: skipped there, a failure under CI (tests/servers.py).
pytestmark = [pytest.mark.requires_parts("replica"), pytest.mark.both_apis]

Maker = Callable[..., Database]

REDIS = f"{REDIS_URL}/0"


def _settings(rep: ReplicatedDatabase, **changes: object) -> Settings:
    values: dict[str, object] = {
        "database_url": rep.app_url(rep.primary),
        "replica_urls": (rep.app_url(rep.replica),),
        "pool_min_size": 0,
        "pool_max_size": 4,
        "replica_wait_ms": 300,
        "replica_max_lag_ms": 600_000,
    }
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


def _replay(rep: ReplicatedDatabase, action: str) -> None:
    with psycopg.connect(rep.replica.url(rep.dbname), autocommit=True) as conn:
        if action == "pause":
            conn.execute("SELECT pg_wal_replay_pause()")
            deadline = time.monotonic() + 10
            while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone() != ("paused",):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        else:
            conn.execute("SELECT pg_wal_replay_resume()")


def _caught_up(rep: ReplicatedDatabase) -> None:
    """Wait until the replica has replayed everything the primary wrote so far."""
    with psycopg.connect(rep.primary.url(rep.dbname), autocommit=True) as primary:
        row = primary.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None
    with psycopg.connect(rep.replica.url(rep.dbname), autocommit=True) as replica:
        deadline = time.monotonic() + 10
        query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
        while replica.execute(query, (row[0],)).fetchone() != (True,):
            assert time.monotonic() < deadline
            time.sleep(0.01)


def _on_replica(rep: ReplicatedDatabase, account_id: int) -> str:
    with psycopg.connect(rep.replica.url(rep.dbname), autocommit=True) as conn:
        row = conn.execute("SELECT name FROM accounts WHERE id = %s", (account_id,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def rdb(replicated: ReplicatedDatabase, database: Maker) -> Iterator[Database]:
    with database(_settings(replicated)) as db:
        yield db
    _replay(replicated, "resume")


def test_a_write_then_a_replica_read_of_that_account_never_sees_the_old_value(
    replicated: ReplicatedDatabase, rdb: Database
) -> None:
    mine = rdb.accounts.create(name="before")
    other = rdb.accounts.create(name="other")
    _caught_up(replicated)
    _replay(replicated, "pause")
    rdb.accounts.update(account_id=mine.id, name="after")
    assert _on_replica(replicated, mine.id) == "before"  # the replica is stale
    before = rdb.stats()
    got = rdb.replica.accounts.get(account_id=mine.id)
    assert got is not None
    assert got.name == "after"
    after = rdb.stats()
    assert after["replica_fell_back_stale"] == before["replica_fell_back_stale"] + 1
    # Another account's read still uses the (stale, but not for it) replica.
    assert rdb.replica.accounts.get(account_id=other.id) == other
    assert rdb.stats()["replica_reads"] == after["replica_reads"] + 1
    _replay(replicated, "resume")
    got = rdb.replica.accounts.get(account_id=mine.id)  # the replica catches up: served there
    assert got is not None
    assert got.name == "after"
    assert rdb.stats()["replica_reads"] == after["replica_reads"] + 2


def test_a_write_in_a_unit_of_work_is_remembered_when_it_commits(
    replicated: ReplicatedDatabase, rdb: Database
) -> None:
    account = rdb.accounts.create(name="uow-before")
    _caught_up(replicated)
    _replay(replicated, "pause")
    with rdb.unit_of_work() as uow:
        uow.accounts.update(account_id=account.id, name="uow-after")
    got = rdb.replica.accounts.get(account_id=account.id)
    assert got is not None
    assert got.name == "uow-after"


def test_another_process_honours_the_marks_through_redis(
    replicated: ReplicatedDatabase, database: Maker
) -> None:
    """A reader on the same API as the writer honours its marks, and so does a sync one."""
    settings = _settings(replicated, redis_url=REDIS, cache_keys=CACHE_KEYS)
    with (
        database(settings) as writer,
        database(settings) as reader,
        Database(settings) as sync_reader,
    ):
        account = writer.accounts.create(name=f"redis-{uuid.uuid4().hex[:6]}")
        _caught_up(replicated)
        _replay(replicated, "pause")
        try:
            writer.accounts.update(account_id=account.id, name="seen-elsewhere")
            for each in (reader, sync_reader):
                got = each.replica.accounts.get(account_id=account.id)
                assert got is not None
                assert got.name == "seen-elsewhere"
                assert each.stats()["replica_fell_back_stale"] == 1
        finally:
            _replay(replicated, "resume")


def test_a_replica_lagging_past_the_bound_is_skipped(
    replicated: ReplicatedDatabase, database: Maker
) -> None:
    with database(_settings(replicated, replica_max_lag_ms=0)) as db:
        account = db.accounts.create(name="lagging")
        _caught_up(replicated)
        _replay(replicated, "pause")
        try:
            time.sleep(0.05)
            db.accounts.create(name="more WAL the replica receives but does not replay")
            with psycopg.connect(replicated.replica.url(replicated.dbname)) as replica:
                received = "SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()"
                deadline = time.monotonic() + 10
                while replica.execute(received).fetchone() != (True,):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            assert db.replica.accounts.get(account_id=account.id) == account
            stats = db.stats()
            assert (stats["replica_reads"], stats["replica_fell_back_down"]) == (0, 1)
            [check] = [c for c in db.health().checks if c.name == "replica:1"]
            assert check.status == "warning"
            assert check.value is not None
            assert check.value > 0
        finally:
            _replay(replicated, "resume")


def test_a_read_only_unit_of_work_on_a_replica_reads_its_accounts_writes_and_only_reads(
    replicated: ReplicatedDatabase, rdb: Database
) -> None:
    mine = rdb.accounts.create(name="uow-mine")
    other = rdb.accounts.create(name="uow-other")
    _caught_up(replicated)
    _replay(replicated, "pause")
    rdb.accounts.update(account_id=mine.id, name="uow-mine-after")
    before = rdb.stats()
    with rdb.unit_of_work(read_only=True, replica=True, account_id=mine.id) as uow:
        got = uow.accounts.get(account_id=mine.id)
        assert got is not None
        assert got.name == "uow-mine-after"  # from the primary: the replica had not replayed it
    with rdb.unit_of_work(read_only=True, replica=True, account_id=other.id) as uow:
        assert uow.accounts.get(account_id=other.id) == other
        with pytest.raises(DataLayerError):  # read-only, and a standby besides
            uow.accounts.create(name="nope")
    after = rdb.stats()
    assert after["replica_fell_back_stale"] == before["replica_fell_back_stale"] + 1
    assert after["replica_reads"] == before["replica_reads"] + 1
    with pytest.raises(InvalidInput, match="read_only"), rdb.unit_of_work(replica=True):
        pass
    with pytest.raises(InvalidInput), rdb.unit_of_work(read_only=True, replica=True, account_id=0):
        pass


def test_health_reports_a_streaming_replica_and_its_lag(rdb: Database) -> None:
    [check] = [c for c in rdb.health().checks if c.name == "replica:1"]
    assert check.status == "ok"
    assert check.value is not None
    assert check.value < 10_000


def test_writes_through_the_replica_attribute_are_refused(rdb: Database) -> None:
    with pytest.raises(DataLayerError, match=r"db\.replica is for reads"):
        rdb.replica.accounts.create(name="nope")


def test_a_database_without_replicas_reads_the_primary_through_the_same_attribute(
    db: Database,
) -> None:
    account = db.accounts.create(name="no replicas")
    assert db.replica.accounts.get(account_id=account.id) == account


def test_with_the_replica_killed_reads_continue_on_the_primary(
    replicated: ReplicatedDatabase, rdb: Database
) -> None:
    account = rdb.accounts.create(name="survivor")
    replicated.replica.stop("immediate")
    try:
        for _ in range(3):
            assert rdb.replica.accounts.get(account_id=account.id) == account
        assert rdb.stats()["replica_fell_back_down"] == 3
    finally:
        replicated.replica.start()


@pytest.mark.sync_api_only("the bench is sync")
def test_the_bench_times_a_replica_read_with_its_lsn_check_against_the_direct_read(
    rdb: Database,
) -> None:
    account = rdb.accounts.create(name="bench")
    results: list[Result] = []
    scale_out_lookups(rdb, results, Profile(iterations=20), account.id)
    assert {(r.name, r.threads, r.baseline) for r in results} == {
        (name, threads, None if name == "pk_lookup_direct" else "pk_lookup_direct")
        for name in ("pk_lookup_direct", "replica_pk_lookup")
        for threads in (1, 4)
    }
    assert rdb.stats()["replica_reads"] > 0


def test_an_async_replica_read_cancelled_while_it_waits_for_replay_gives_its_connection_back(
    replicated: ReplicatedDatabase,
) -> None:
    """A task cancelled in the read-your-writes wait leaves the replica pool whole."""

    async def work() -> None:
        async with AsyncDatabase(_settings(replicated, replica_wait_ms=30_000)) as db:
            assert db._replicas is not None
            pool = db._replicas._replicas[0].pool
            account = await db.accounts.create(name="cancel-before")
            _caught_up(replicated)
            _replay(replicated, "pause")
            try:
                await db.accounts.update(account_id=account.id, name="cancel-after")
                read = asyncio.create_task(db.replica.accounts.get(account_id=account.id))
                deadline = time.monotonic() + 10
                while not _lent(pool.get_stats()):  # the read holds a replica connection
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.005)
                assert not read.done()  # waiting for the replica to replay the update
                read.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await read
                # Given back: at once, or (cancelled mid-statement, so closed by the pool)
                # replaced by a new connection, which counts as lent until it is made.
                deadline = time.monotonic() + 5
                while _lent(pool.get_stats()):
                    assert time.monotonic() < deadline, "the replica connection was not given back"
                    await asyncio.sleep(0.01)
            finally:
                _replay(replicated, "resume")
            got = await db.replica.accounts.get(account_id=account.id)
            assert got is not None
            assert got.name == "cancel-after"
            assert db.stats()["replica_reads"] == 1

    asyncio.run(work())


def _lent(stats: dict[str, int]) -> int:
    return stats.get("pool_size", 0) - stats.get("pool_available", 0)
