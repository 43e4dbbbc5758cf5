"""Read replicas: where a read that may lag runs, and read-your-writes per account by WAL LSN.

After a write that names an account commits, the primary's WAL position
(``pg_current_wal_lsn()``) is remembered for that account: in Redis when the
database has one (so every process honours it), in memory otherwise. A replica
read for that account runs on a replica only once its
``pg_last_wal_replay_lsn()`` has passed that position; it waits up to
``replica_wait_ms`` for it, then reads the primary. A replica that cannot be
reached, or replays more than ``replica_max_lag_ms`` behind what it received,
is skipped for a second. Every outcome is counted (``AsyncDatabase.stats()``).
"""

from __future__ import annotations

import asyncio  # async-only
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import PoolTimeout

from ._lazy import LazyModule
from ._uow_async import AsyncUnitOfWork, restore_session
from .errors import DataLayerError, map_error
from .repositories import AsyncRepositories

if TYPE_CHECKING:
    import redis.asyncio as redis
    from psycopg_pool import AsyncConnectionPool

    from ._cache_async import AsyncCache
    from ._settings import Settings
else:  # imported at first use: see _lazy
    redis = LazyModule("redis.asyncio")  # async-only
    # sync: redis = LazyModule("redis")

__all__ = ["CURRENT_LSN", "AsyncLsnMarks", "AsyncReplicaReads", "AsyncReplicas"]

log = logging.getLogger("datalayer")

# Keep the larger LSN: two writers may report theirs in either order.
_MAX_LSN = """
local old = redis.call('GET', KEYS[1])
if (not old) or tonumber(old) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""

_LAG = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()"
    " THEN 0 ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000 END"
)
_REPLAYED = "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"
CURRENT_LSN = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"

OUTCOMES = (
    "replica_reads",  # ran on a replica (no mark, or the replica had replayed it)
    "replica_waited",  # of those, after waiting for the replica to replay the mark
    "replica_fell_back_stale",  # read the primary: the replica had not replayed the mark in time
    "replica_fell_back_down",  # read the primary: no replica reachable and replaying in time
)


class AsyncLsnMarks:
    """The primary's WAL position after each account's last committed write.

    In Redis (``redis_url``; keys ``<namespace>:lsn:<system id>:<account>``,
    the primary's ``pg_control_system()`` identifier, which its replicas
    share; kept for ``ttl_s``) or, without one, in this process's memory. A Redis error
    counts as no mark for reads, so a read may then see a replica's older
    state for a moment; writes log it.
    """

    def __init__(self, redis_url: str | None, *, namespace: str = "dl", ttl_s: int = 60):
        self._memory: dict[int, int] = {}
        self._lock = threading.Lock()
        self._ttl = ttl_s
        self._namespace = namespace
        self.scope: str | None = None  # the cluster's system identifier (Redis keys only)
        self._client: redis.Redis | None = None
        self._max: Any = None
        if redis_url:
            self._client = redis.Redis.from_url(
                redis_url, socket_timeout=0.2, socket_connect_timeout=0.2
            )
            self._max = self._client.register_script(_MAX_LSN)

    def _key(self, account_id: int) -> str:
        return f"{self._namespace}:lsn:{self.scope}:{account_id}"

    async def learn_scope(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read the cluster's system identifier on ``conn`` once (primary or replica alike)."""
        if self.scope is None and self._client is not None:
            cur = await conn.execute(
                "SELECT system_identifier FROM pg_control_system()", prepare=False
            )
            row = await cur.fetchone()
            self.scope = str(row[0]) if row is not None else "unknown"

    async def remember(self, account_ids: Sequence[int], lsn: int) -> None:
        """Record that ``account_ids`` were written up to WAL position ``lsn``."""
        if self._client is not None:
            try:
                for account in account_ids:
                    await self._max(keys=[self._key(account)], args=[lsn, self._ttl])
            except redis.RedisError as exc:
                log.warning("cannot record a write's LSN in Redis: %s", exc)
            return
        with self._lock:
            for account in account_ids:
                if self._memory.get(account, -1) < lsn:
                    self._memory[account] = lsn

    async def mark(self, account_id: int) -> int | None:
        """The WAL position a read of ``account_id`` must see, or ``None``."""
        if self._client is not None:
            try:
                value = await self._client.get(self._key(account_id))
            except redis.RedisError:
                return None
            return None if value is None else int(value)
        return self._memory.get(account_id)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _AsyncReplica:
    """One replica's pool and what is known of its health."""

    def __init__(self, pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
        self.pool = pool
        self.skip_until = 0.0
        self.checked_at = 0.0


class AsyncReplicas:
    """A database's replica pools and the choice of where each read runs."""

    def __init__(
        self,
        pools: Sequence[AsyncConnectionPool[psycopg.AsyncConnection[Any]]],
        marks: AsyncLsnMarks,
        *,
        wait_ms: int,
        max_lag_ms: int,
        checkout_timeout: float = 0.5,
    ):
        self._replicas = [_AsyncReplica(p) for p in pools]
        self.marks = marks
        self._wait = wait_ms / 1000
        self._max_lag_ms = max_lag_ms
        self._timeout = checkout_timeout
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(OUTCOMES, 0)

    def __len__(self) -> int:
        return len(self._replicas)

    async def open(self) -> None:
        for replica in self._replicas:
            await replica.pool.open(wait=False)

    async def close(self) -> None:
        for replica in self._replicas:
            await replica.pool.close()
        await self.marks.close()

    async def remember_writes(
        self, conn: psycopg.AsyncConnection[Any], accounts: Sequence[int]
    ) -> None:
        """Committed writes to ``accounts`` on ``conn`` (the primary's): remember its WAL end."""
        if not accounts:
            return
        await self.marks.learn_scope(conn)
        cur = await conn.execute(CURRENT_LSN, prepare=False)
        row = await cur.fetchone()
        if row is not None:
            await self.marks.remember(accounts, int(row[0]))

    @asynccontextmanager
    async def read_only_work(
        self,
        account_id: int | None,
        isolation: psycopg.IsolationLevel | None,
        primary: Callable[[], Any],
    ) -> AsyncIterator[AsyncUnitOfWork]:
        """A read-only unit of work on a replica fit to read ``account_id`` (else the primary):
        nothing to commit or invalidate."""
        async with self.connection(account_id, primary) as conn:
            uow: AsyncUnitOfWork | None = None
            try:
                await conn.set_isolation_level(isolation)
                await conn.set_read_only(True)
                async with conn.transaction():
                    uow = AsyncUnitOfWork(conn)
                    yield uow
            except psycopg.Error as exc:
                raise map_error(exc) from exc
            finally:
                if uow is not None:
                    uow._close()
                await restore_session(conn)

    async def lags(self) -> list[tuple[bool, float | None]]:
        """Per replica: (still a standby, replay lag in ms); ``(False, None)`` when it cannot
        be reached within the checkout timeout."""
        found: list[tuple[bool, float | None]] = []
        for replica in self._replicas:
            try:
                async with replica.pool.connection(timeout=self._timeout) as conn:
                    cur = await conn.execute(_LAG, prepare=False)
                    row = await cur.fetchone()
            except (psycopg.Error, PoolTimeout):
                found.append((False, None))
                continue
            standby = bool(row and row[0])
            found.append((standby, float(row[1]) if row and row[1] is not None else 0.0))
        return found

    @property
    def max_lag_ms(self) -> int:
        """The replay lag past which a replica is skipped."""
        return self._max_lag_ms

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] += 1

    async def _healthy(self, replica: _AsyncReplica, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Whether ``replica`` may serve reads (its lag checked at most once a second)."""
        now = time.monotonic()
        if now - replica.checked_at < 1.0:
            return True
        cur = await conn.execute(_LAG, prepare=False)
        row = await cur.fetchone()
        replica.checked_at = now
        if row is None or not row[0] or (row[1] or 0) > self._max_lag_ms:
            log.info(
                "replica skipped for 1s: %s", "not in recovery" if row and not row[0] else "lag"
            )
            replica.skip_until = now + 1.0
            replica.checked_at = 0.0
            return False
        return True

    async def _caught_up(self, conn: psycopg.AsyncConnection[Any], mark: int) -> tuple[bool, bool]:
        """(replayed ``mark`` within the wait, had to wait)."""
        deadline = time.monotonic() + self._wait
        waited = False
        while True:
            cur = await conn.execute(_REPLAYED, prepare=False)
            row = await cur.fetchone()
            if row is not None and row[0] is not None and int(row[0]) >= mark:
                return True, waited
            if time.monotonic() >= deadline:
                return False, waited
            waited = True
            await asyncio.sleep(min(0.005, max(0.0, deadline - time.monotonic())))

    @asynccontextmanager
    async def connection(
        self, account_id: int | None, primary: Callable[[], Any]
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A replica connection fit to read ``account_id``, else the primary's (``primary()``)."""
        mark: int | None = None
        looked = account_id is None
        now = time.monotonic()
        candidates = [r for r in self._replicas if r.skip_until <= now]
        random.shuffle(candidates)
        stale = False
        for replica in candidates:
            try:
                conn = await replica.pool.getconn(timeout=self._timeout)
            except Exception:
                replica.skip_until = time.monotonic() + 1.0
                continue
            try:
                if not looked:
                    await self.marks.learn_scope(conn)
                    mark, looked = await self.marks.mark(account_id), True  # type: ignore[arg-type]
                usable = await self._healthy(replica, conn)
                waited = False
                if usable and mark is not None:
                    usable, waited = await self._caught_up(conn, mark)
                    stale = stale or not usable
            except psycopg.Error:
                replica.skip_until = time.monotonic() + 1.0
                await replica.pool.putconn(conn)
                continue
            except BaseException:  # cancelled (or interrupted) while choosing: give it back
                await replica.pool.putconn(conn)
                raise
            if not usable:
                await replica.pool.putconn(conn)
                continue
            self._count("replica_reads")
            if waited:
                self._count("replica_waited")
            try:
                yield conn
            finally:
                await replica.pool.putconn(conn)
            return
        self._count("replica_fell_back_stale" if stale else "replica_fell_back_down")
        async with primary() as conn:
            yield conn


class _AsyncReplicaSession:
    """Lends a replica connection per read statement; refuses writes."""

    __slots__ = ("_primary", "_replicas")

    def __init__(self, replicas: AsyncReplicas, primary: Callable[[], Any]):
        self._replicas = replicas
        self._primary = primary

    @property
    def cache(self) -> AsyncCache | None:
        return None

    @property
    def in_transaction(self) -> bool:
        return False

    async def invalidate(self, pairs: Sequence[tuple[int, str]]) -> None:
        raise DataLayerError("db.replica is for reads; write through db or a unit of work")

    def connection(
        self, *, account_id: int | None = None, writes: bool = False
    ) -> Any:  # AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]
        if writes:
            raise DataLayerError("db.replica is for reads; write through db or a unit of work")
        return self._replicas.connection(account_id, self._primary)

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[Any]:
        raise DataLayerError("db.replica is for reads; write through db or a unit of work")
        yield  # pragma: no cover


class AsyncReplicaReads(AsyncRepositories):
    """Every repository, reading from a replica (``db.replica.usage_reports.…``).

    Reads may lag the primary, except for an account this or another process
    wrote: those wait for the replica to replay the write, or read the
    primary. Writes raise ``DataLayerError``. Without replicas every read
    goes to the primary.
    """

    def __init__(self, replicas: AsyncReplicas, primary: Callable[[], Any]):
        super().__init__(_AsyncReplicaSession(replicas, primary))


def async_replicas_for(
    settings: Settings,
    pool: Callable[[str, str], AsyncConnectionPool[psycopg.AsyncConnection[Any]]],
) -> AsyncReplicas | None:
    """The replicas of ``settings.replica_urls`` (``None`` without any); ``pool(url, name)``
    makes each one's pool, not yet open."""
    if not settings.replica_urls:
        return None
    pools = [
        pool(url, f"{settings.application_name}-replica{i}")
        for i, url in enumerate(settings.replica_urls)
    ]
    return AsyncReplicas(
        pools,
        AsyncLsnMarks(settings.redis_url),
        wait_ms=settings.replica_wait_ms,
        max_lag_ms=settings.replica_max_lag_ms,
    )
