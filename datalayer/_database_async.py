"""The database object: a psycopg connection pool, autocommit repositories, units of work.

Reads that may lag go to replicas when there are any (module ``_replicas``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import psycopg
from psycopg import pq
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.pool_async import AddConnection, MaintenanceTask

from . import _telemetry
from ._cache_async import AsyncCache
from ._cachecore import SigningKeys
from ._cached_async import AsyncCachedReads
from ._exec_async import AsyncSession
from ._health import HealthThresholds, assess
from ._pooler import BACKEND_PID, LOCAL_SETTINGS, local_settings, options_refused, pid_differs
from ._replicas_async import AsyncReplicaReads, AsyncReplicas, async_replicas_for
from ._settings import Settings
from ._uow_async import AsyncUnitOfWork, restore_session
from ._validation import Instant, validated
from .errors import (
    ConcurrencyConflict,
    DataLayerError,
    InvalidInput,
    ReadOnlyTransaction,
    Unavailable,
    map_error,
)
from .models.maintenance import Health
from .repositories import AsyncRepositories

__all__ = ["AsyncDatabase", "Isolation"]

log = logging.getLogger("datalayer")

T = TypeVar("T")
Isolation = Literal["read committed", "repeatable read", "serializable"]
_ISOLATION = {
    "read committed": psycopg.IsolationLevel.READ_COMMITTED,
    "repeatable read": psycopg.IsolationLevel.REPEATABLE_READ,
    "serializable": psycopg.IsolationLevel.SERIALIZABLE,
}


def _connection_kwargs(settings: Settings) -> dict[str, Any]:
    # Behind a declared pooler: no prepared statements, and no startup options (PgBouncer
    # refuses them or drops them; the role's defaults and SET LOCAL stand in for them).
    pooled = settings.pgbouncer is True
    # Sessions speak UTC whatever the server's default (DOMAIN.md: time is UTC at the boundaries).
    options = ["-c timezone=UTC"]
    if settings.statement_timeout_ms:
        options.append(f"-c statement_timeout={settings.statement_timeout_ms}")
    if settings.lock_timeout_ms:
        options.append(f"-c lock_timeout={settings.lock_timeout_ms}")
    if not settings.jit:
        options.append("-c jit=off")
    kwargs: dict[str, Any] = {
        # Single statements outside a unit of work need no BEGIN/COMMIT round trips.
        "autocommit": True,
        "application_name": settings.application_name,
        "connect_timeout": settings.connect_timeout,
        "prepare_threshold": None if pooled else settings.prepare_threshold,
        # Find a peer that vanished without a FIN within about a minute.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if options and not pooled:
        kwargs["options"] = " ".join(options)
    return kwargs


# The server is gone or no longer the primary (a demoted one refuses writes: 25006).
_SERVER_LOST = frozenset({"57P01", "57P02", "57P03", "25006"})


def _server_lost(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the connection's server is gone or demoted."""
    while exc is not None:
        state = getattr(exc, "sqlstate", None)
        if state is not None and (state.startswith("08") or state in _SERVER_LOST):
            return True
        exc = exc.__cause__
    return False


# Set in a connection's __dict__ when its server sent it a FATAL message while idle.
_FATAL_SEEN = "_datalayer_fatal_seen"


def _watch_for_fatal(conn: psycopg.AsyncConnection[Any]) -> None:
    """Mark ``conn`` when libpq hands its notice handlers a FATAL message: one that
    arrives on an idle connection (the server closing it) is treated as a notice. The
    mark is kept in the connection's ``__dict__``, not through a reference to it."""
    state = conn.__dict__

    def on_notice(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized == "FATAL":
            state[_FATAL_SEEN] = True

    conn.add_notice_handler(on_notice)


async def _alive(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle pooled connection can be handed out.

    An idle connection has nothing to read unless the server wrote to it: a
    FATAL message before closing (``pg_terminate_backend``, shutdown), EOF, or
    a notification. libpq's non-blocking read (``PQconsumeInput``) takes what
    is there without a round trip: an EOF (the server gone without a word) is
    an error there, and ``PQgetResult`` on the idle connection parses the rest
    without waiting, so that a FATAL (sent just before the EOF) reaches the
    handler of ``_watch_for_fatal``. Unlike poll(2) or ``PQisBusy`` these keep
    the GIL: a release per checkout made threads queue for it, and the
    library's primary-key read at 4 threads cost 1.08-1.12x the raw call
    instead of 1.03x. One read, not two: each empty read is a recvfrom(2)
    that holds the GIL.
    """
    if conn.closed:
        return False
    pgconn = conn.pgconn
    try:
        if pgconn.transaction_status == pq.TransactionStatus.IDLE:
            pgconn.consume_input()
            idle = pgconn.get_result() is None  # parses what came; never waits when idle
            if idle and pgconn.status == pq.ConnStatus.OK and _FATAL_SEEN not in conn.__dict__:
                return True
    except psycopg.OperationalError:
        pass
    with suppress(Exception):
        await conn.close()
    return False


class _AsyncPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """psycopg's pool, retrying a lost server at least every ``reconnect_max_delay`` seconds.

    psycopg_pool retries a failed connection after about 1 s and then doubles
    the pause (2, 4, 8, … 64 s) until ``reconnect_timeout``: callers kept
    getting ``Unavailable`` for up to half the outage after the server was
    back. Here every pause is capped at ``reconnect_max_delay``, less up to
    10 % so that pools that lost the server at the same moment do not retry in
    step. The attempt rate stays bounded whatever the number of waiting
    threads: each pool slot (at most ``max_size``) has at most one attempt
    pending, so a pool makes at most ``max_size`` attempts every
    ``0.9 * reconnect_max_delay`` seconds.
    """

    def __init__(self, conninfo: str, *, reconnect_max_delay: float, **kwargs: Any):
        self.reconnect_max_delay = reconnect_max_delay
        super().__init__(conninfo, **kwargs)

    async def _connect(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        """A new connection, watched for a FATAL message while idle (see ``_alive``)."""
        conn = await self._connect_once(timeout)
        _watch_for_fatal(conn)
        return conn

    async def _connect_once(self, timeout: float | None) -> psycopg.AsyncConnection[Any]:
        """A new connection; without the startup options once a pooler refused them."""
        try:
            return await super()._connect(timeout)
        except psycopg.OperationalError as exc:
            if not (isinstance(self.kwargs, dict) and "options" in self.kwargs):
                raise
            if not options_refused(exc):
                raise
            log.warning(
                "the server refused the startup options: a connection pooler (PgBouncer) "
                "in front of it; connecting without them (README: Scaling out on PostgreSQL)"
            )
            self.kwargs = {k: v for k, v in self.kwargs.items() if k != "options"}
            return await super()._connect(timeout)

    async def schedule_task(self, task: MaintenanceTask, delay: float) -> None:
        """Schedule ``task`` in ``delay`` seconds; a reconnection attempt, in at most the cap."""
        if isinstance(task, AddConnection):
            delay = min(delay, self.reconnect_max_delay * (1.0 - 0.1 * random.random()))
        await super().schedule_task(task, delay)


class _AsyncLease:
    """A pooled connection for one ``with`` block (a class: cheaper than a generator).

    With ``wrote`` (an account written, replicas configured), the primary's WAL
    position after the statement is remembered for that account.
    """

    __slots__ = ("_conn", "_db", "_wrote")

    def __init__(self, db: AsyncDatabase, wrote: int | None = None):
        self._db = db
        self._wrote = wrote

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._conn = await self._db._acquire()
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        try:
            if self._wrote is not None and exc_type is None:
                await self._db._remember_writes(self._conn, [self._wrote])
        finally:
            await self._db._release(self._conn, exc)


class _AsyncPoolSession:
    """Lends a pooled autocommit connection per statement."""

    __slots__ = ("_db",)

    def __init__(self, db: AsyncDatabase):
        self._db = db

    @property
    def cache(self) -> AsyncCache | None:
        return self._db.cache

    @property
    def in_transaction(self) -> bool:
        return False

    async def invalidate(self, pairs: Sequence[tuple[int, str]]) -> None:
        # Autocommit: the change is committed already, so a journal row written
        # now could be lost with this process. Repositories use _changing().
        cache = self._db.cache
        if cache.enabled and pairs:
            raise DataLayerError(
                "a cache invalidation outside a transaction; run the change in _changing()"
            )

    def connection(self, *, account_id: int | None = None, writes: bool = False) -> _AsyncLease:
        track = writes and account_id is not None and self._db._replicas is not None
        return _AsyncLease(self._db, account_id if track else None)

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[AsyncSession]:
        async with self._db.unit_of_work() as uow:
            yield uow._conn_session


def _probe_through(
    ref: weakref.ReferenceType[AsyncDatabase],
) -> Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]]:
    """A pool's ``configure`` callback that probes for a pooler while the database lives."""

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        db = ref()
        if db is not None:
            await db._configure(conn)

    return configure


class AsyncDatabase(AsyncRepositories):
    """A PostgreSQL database reached through a connection pool.

    Repository attributes (``db.accounts``, ``db.users``, …) run each call as
    one autocommit statement on a pooled connection. ``unit_of_work()`` binds
    them all to one connection and one transaction.

    Use as a context manager, or call ``open()`` and ``close()``. Any call
    that cannot get a working connection within ``settings.pool_timeout``
    seconds raises ``Unavailable``. While the server is unreachable the pool
    retries at least every ``settings.pool_reconnect_max_delay`` seconds (for
    ``pool_reconnect_timeout``), so calls succeed again within about that long
    after it is back.
    """

    def __init__(self, settings: Settings | None = None, **overrides: Any):
        """Build the pool, not yet open, from ``settings`` or ``Settings.from_env(**overrides)``.

        ``overrides`` given with ``settings`` replace its fields. Raises
        ``InvalidInput`` naming the setting when one is malformed, before any I/O.
        """
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif overrides:  # validated like any Settings (model_copy would not check them)
            settings = Settings.from_env({}, **{**settings.model_dump(), **overrides})
        self.settings = settings
        self._timeout = settings.pool_timeout
        # Called with the seconds each successful checkout waited (measurement,
        # e.g. `datalayer bench --pool-sweep`); None costs nothing.
        self.on_acquire: Callable[[float], None] | None = None
        # Whether connections pass through a transaction pooler (settings, or found out).
        self._pooled = settings.pgbouncer is True
        self._local_settings = local_settings(settings)
        # The pools hold their probe through a weak reference, not a bound method: a cycle
        # (Database -> pool -> Database) would keep closed pools alive until a full GC.
        configure = _probe_through(weakref.ref(self)) if settings.pgbouncer is None else None
        pools: dict[str, Any] = {  # what the primary's and each replica's pool share
            "kwargs": _connection_kwargs(settings),
            "max_size": settings.pool_max_size,
            "timeout": settings.pool_timeout,
            "max_lifetime": settings.pool_max_lifetime,
            "max_idle": settings.pool_max_idle,
            "reconnect_timeout": settings.pool_reconnect_timeout,
            "reconnect_max_delay": settings.pool_reconnect_max_delay,
            "configure": configure,
        }
        self._pool = _AsyncPool(
            settings.database_url,
            min_size=settings.pool_min_size,
            open=False,
            name=settings.application_name,
            **pools,
        )
        self.pool_name = _telemetry.register_pool(self._pool)
        if settings.otel and _telemetry.ACTIVE is None:
            _telemetry.instrument()
        keys = settings.cache_keys
        self.cache = AsyncCache(
            settings.redis_url,
            keys=SigningKeys.parse(keys.get_secret_value()) if keys is not None else None,
        )
        super().__init__(_AsyncPoolSession(self))
        # Pending invalidations that a writer could not send reach this process's
        # reads within 2 * cache.journal_every seconds (see Cache).
        journal = self.cache_invalidations
        self.cache.attach_journal(lambda limit: journal.pending(limit=limit), journal._forget)
        self.cached = AsyncCachedReads(self, self.cache)
        self._replicas: AsyncReplicas | None = async_replicas_for(
            settings,
            lambda url, name: _AsyncPool(url, min_size=0, open=False, name=name, **pools),
        )
        # Reads that may lag: on a replica when there is one fit to read (module _replicas).
        self.replica = (
            AsyncReplicaReads(self._replicas, lambda: _AsyncLease(self)) if self._replicas else self
        )

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Probe each new connection for a pooler; behind one, never prepare on it."""
        cur = await conn.execute(BACKEND_PID, prepare=False)
        if pid_differs(await cur.fetchone(), conn):
            conn.prepare_threshold = None
            if not self._pooled:
                log.warning(
                    "%s reaches PostgreSQL through a connection pooler (PgBouncer): prepared "
                    "statements are off (README: Scaling out on PostgreSQL)",
                    self.settings.safe_database_url,
                )
            self._pooled = True

    @property
    def behind_pooler(self) -> bool:
        """Whether the connections pass through a transaction pooler such as PgBouncer.

        True with ``Settings(pgbouncer=True)``, or once a new connection was
        found to (``pgbouncer=None``, the default); prepared statements are
        then off and units of work set their session settings per transaction.
        """
        return self._pooled

    def __repr__(self) -> str:
        state = "closed" if self._pool.closed else "open"
        return f"<{type(self).__name__} {self.settings.safe_database_url} ({state})>"

    async def open(self, *, wait: bool = False) -> Self:
        """Open the pool; with ``wait=True`` block until ``pool_min_size`` connections exist.

        Raises ``Unavailable`` when ``wait=True`` and the database cannot be
        reached within ``pool_timeout``. Without waiting, the pool connects in
        the background and the first call waits at most ``pool_timeout``.
        """
        await self._pool.open(wait=False)
        if self._replicas is not None:
            await self._replicas.open()
        if wait:
            try:
                await self._pool.wait(timeout=self._timeout)
            except Exception as exc:
                raise Unavailable(
                    f"cannot reach {self.settings.safe_database_url} within {self._timeout}s"
                ) from exc
        log.info("pool open: %s", self.settings.safe_database_url)
        return self

    async def close(self) -> None:
        """Close the pool and every connection in it, and the cache's connections."""
        _telemetry.unregister_pool(self.pool_name)
        await self._pool.close()
        if self._replicas is not None:
            await self._replicas.close()
        await self.cache.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _remember_writes(
        self, conn: psycopg.AsyncConnection[Any], accounts: Sequence[int]
    ) -> None:
        """Committed writes to ``accounts`` on ``conn``: remember where the primary's WAL is."""
        if self._replicas is not None:
            await self._replicas.remember_writes(conn, accounts)

    async def _release(self, conn: psycopg.AsyncConnection[Any], exc: BaseException | None) -> None:
        """Return ``conn`` to the pool; after a failover signal, drop every idle one too.

        On 57P01-57P03 (shutdown), class 08 (connection lost), 25006 (a read-only
        transaction: the primary was demoted) or a broken connection, the other
        idle connections reach the same server: the pool closes them at once
        and connects anew (to the new primary, with a multi-host URL and
        ``target_session_attrs=read-write``) instead of lending them again.
        """
        lost = exc is not None and (conn.broken or _server_lost(exc))
        if lost:
            with suppress(Exception):
                await conn.close()
        await self._pool.putconn(conn)
        if lost:
            log.warning("the server went away or was demoted: dropping the idle connections")
            await self._pool.drain()

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        started = time.monotonic()
        remaining = self._timeout
        while True:
            try:
                conn = await self._pool.getconn(timeout=remaining)
            except Exception as exc:
                raise map_error(exc) from exc
            if await _alive(conn):
                if self.on_acquire is not None:
                    self.on_acquire(time.monotonic() - started)
                return conn
            log.info("discarding a dead pooled connection")
            await self._pool.putconn(conn)
            remaining = started + self._timeout - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"no working connection to {self.settings.safe_database_url} "
                    f"within {self._timeout}s"
                )

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """Lend a raw pooled connection (autocommit) for SQL outside the repositories.

        psycopg errors raised inside the block are re-raised as datalayer errors.
        """
        async with self._session.connection() as conn:
            try:
                yield conn
            except psycopg.Error as exc:
                raise map_error(exc) from exc

    @asynccontextmanager
    async def unit_of_work(
        self,
        *,
        isolation: Isolation | None = None,
        read_only: bool = False,
        replica: bool = False,
        account_id: int | None = None,
    ) -> AsyncIterator[AsyncUnitOfWork]:
        """One connection, one transaction: commit when the block ends, roll back on any exception.

        Repositories reached through the yielded ``AsyncUnitOfWork`` share the
        transaction. Errors at COMMIT (deferred constraints, serialization
        failures) are raised as datalayer errors; nothing was committed then.

        ``replica=True`` (with ``read_only=True``) runs it on a replica, as
        ``db.replica`` reads do: one that has replayed ``account_id``'s writes
        (read-your-writes), else on the primary; without replicas, on the
        primary. Raises ``InvalidInput`` for an unknown ``isolation``, a
        non-bool flag, ``replica`` without ``read_only`` or a bad
        ``account_id``, before connecting. With telemetry on, a
        ``datalayer.unit_of_work`` span holds the spans of its statements.
        """
        telemetry = _telemetry.ACTIVE
        if telemetry is None:
            async with self._unit_of_work(isolation, read_only, replica, account_id) as uow:
                yield uow
            return
        attributes = {
            "db.system.name": "postgresql",
            "datalayer.read_only": read_only is True,
            "datalayer.replica": replica is True,
        }
        # async-only: begin
        with telemetry.span("datalayer.unit_of_work", **attributes):
            async with self._unit_of_work(isolation, read_only, replica, account_id) as uow:
                yield uow
        # async-only: end
        # sync: with (
        # sync:     telemetry.span("datalayer.unit_of_work", **attributes),
        # sync:     self._unit_of_work(isolation, read_only, replica, account_id) as uow,
        # sync: ):
        # sync:     yield uow

    @asynccontextmanager
    async def _unit_of_work(
        self, isolation: Isolation | None, read_only: bool, replica: bool, account_id: int | None
    ) -> AsyncIterator[AsyncUnitOfWork]:
        """``unit_of_work`` without its span."""
        if isolation is not None and (type(isolation) is not str or isolation not in _ISOLATION):
            raise InvalidInput(
                f"must be one of {', '.join(sorted(_ISOLATION))} or None", field="isolation"
            )
        if type(read_only) is not bool:
            raise InvalidInput("must be a bool", field="read_only")
        if type(replica) is not bool:
            raise InvalidInput("must be a bool", field="replica")
        if replica and not read_only:
            raise InvalidInput(
                "a unit of work on a replica must be read_only=True", field="replica"
            )
        if account_id is not None and (type(account_id) is not int or account_id < 1):
            raise InvalidInput("must be a positive int or None", field="account_id")
        if replica and self._replicas is not None:
            level = _ISOLATION[isolation] if isolation else None

            def primary() -> _AsyncLease:
                return _AsyncLease(self)

            async with self._replicas.read_only_work(account_id, level, primary) as work:
                yield work
            return
        conn = await self._acquire()
        uow: AsyncUnitOfWork | None = None
        failed: BaseException | None = None
        try:
            await conn.set_isolation_level(_ISOLATION[isolation] if isolation else None)
            await conn.set_read_only(True if read_only else None)
            async with conn.transaction():
                if self._pooled:  # startup options never reached this server connection
                    await conn.execute(LOCAL_SETTINGS, self._local_settings)
                uow = AsyncUnitOfWork(conn, cache=self.cache)
                yield uow
            if self._replicas is not None:  # committed: where its writes end
                await self._remember_writes(conn, sorted(uow._conn_session.touched))
        except psycopg.Error as exc:
            failed = exc
            raise map_error(exc) from exc
        except BaseException as exc:
            failed = exc
            raise
        finally:
            if uow is not None:
                uow._close()
            await restore_session(conn)
            if read_only and getattr(failed, "sqlstate", None) == "25006":
                failed = None  # this unit of work's own read-only refusal, not a demotion
            await self._release(conn, failed)
        # Committed: now (never before, never after a rollback) invalidate caches.
        await uow._run_after_commit()

    async def run_in_transaction(
        self,
        fn: Callable[[AsyncUnitOfWork], Awaitable[T]],
        *,
        attempts: int = 5,
        isolation: Isolation | None = None,
        read_only: bool = False,
        base_delay: float = 0.01,
        max_delay: float = 0.5,
    ) -> T:
        """Run ``fn(uow)`` in a unit of work, retrying on serialization failure or deadlock.

        Up to ``attempts`` tries; between them a random sleep of up to
        ``base_delay * 2**n`` seconds (capped at ``max_delay``: "full jitter").
        ``fn`` must be safe to run again: its database work is rolled back on a
        conflict, anything else it did is not. Raises ``InvalidInput`` for a
        bad argument (before connecting), ``ConcurrencyConflict`` after the
        last attempt, and any other error at once.
        """
        if not callable(fn):
            raise InvalidInput("must be a function of the unit of work", field="fn")
        _check_backoff(attempts, 100, base_delay, max_delay)

        async def once() -> T:
            async with self.unit_of_work(isolation=isolation, read_only=read_only) as uow:
                return await fn(uow)

        return await _with_backoff(once, (ConcurrencyConflict,), attempts, base_delay, max_delay)

    async def retry(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        attempts: int = 20,
        base_delay: float = 0.05,
        max_delay: float = 1.0,
    ) -> T:
        """Call ``fn()`` until it succeeds, retrying while the database is unreachable.

        For a failover: retries on ``Unavailable`` (connection lost, server
        shutting down, no connection within ``pool_timeout``) and
        ``ReadOnlyTransaction`` (a demoted primary), up to ``attempts`` tries
        with a random sleep of up to ``base_delay * 2**n`` seconds (capped at
        ``max_delay``) between them. A call that failed this way may or may
        not have committed, so ``fn`` must be idempotent: ``usage.record`` and
        ``record_batch`` with idempotency keys, ``billing.generate_invoice``,
        ``billing.record_payment`` with its key (README: Scaling out on
        PostgreSQL). Raises ``InvalidInput`` for a bad argument, the last
        error after the last attempt, any other error at once.
        """
        if not callable(fn):
            raise InvalidInput("must be a function of no arguments", field="fn")
        _check_backoff(attempts, 1000, base_delay, max_delay)
        retry_on = (Unavailable, ReadOnlyTransaction)
        return await _with_backoff(fn, retry_on, attempts, base_delay, max_delay)

    @validated
    async def health(
        self, *, now: Instant | None = None, thresholds: HealthThresholds | None = None
    ) -> Health:
        """Whether this database, its pool, its cache and its periodic work are healthy.

        Reads the pool's counters, pings Redis (when configured), asks each
        replica (when configured) for its replay lag, and reads the
        lags of what the maintenance jobs drain (rollup queues, partitions
        ahead, overdue renewals, uninvoiced closed periods, the last backup)
        and the jobs' state; ``thresholds`` (default ``HealthThresholds()``)
        mark each ``ok``, ``warning`` or ``failing``. Never raises for an
        unreachable database: that is a failing check. ``InvalidInput`` for a
        bad argument.
        """
        moment = now or datetime.now(UTC)
        lags, jobs, error = None, [], None
        try:
            lags = await self.maintenance.lags(now=moment)
            jobs = await self.maintenance.jobs()
        except DataLayerError as exc:
            error = f"{type(exc).__name__}: {exc}"
        cache = await self.cache.ping() if self.cache.enabled else None
        replicas = self._replicas
        return assess(
            moment,
            pool=self.stats(),
            lags=lags,
            jobs=jobs,
            database_error=error,
            cache_reachable=cache,
            replicas=await replicas.lags() if replicas is not None else (),
            replica_max_lag_ms=replicas.max_lag_ms if replicas is not None else 0,
            thresholds=thresholds,
        )

    def stats(self) -> dict[str, int]:
        """The pool's counters (``psycopg_pool`` names: pool_size, pool_available,
        requests_waiting, requests_num, requests_errors, connections_lost, …), and
        with replicas where ``db.replica`` reads went: ``replica_reads``,
        ``replica_waited``, ``replica_fell_back_stale``, ``replica_fell_back_down``."""
        stats = dict(self._pool.get_stats())
        if self._replicas is not None:
            stats.update(self._replicas.counts)
        return stats


def _check_backoff(attempts: Any, most: int, base_delay: Any, max_delay: Any) -> None:
    """Refuse retry arguments out of range, naming the argument."""
    if type(attempts) is not int or not 1 <= attempts <= most:
        raise InvalidInput(f"must be an int from 1 to {most}", field="attempts")
    for name, delay in (("base_delay", base_delay), ("max_delay", max_delay)):
        if type(delay) not in (int, float) or not 0 <= delay <= 60:
            raise InvalidInput("must be a number of seconds from 0 to 60", field=name)


async def _with_backoff(
    call: Callable[[], Awaitable[T]],
    retry_on: tuple[type[DataLayerError], ...],
    attempts: int,
    base_delay: float,
    max_delay: float,
) -> T:
    """``call()``, again after a random sleep of up to ``base_delay * 2**n`` seconds (capped at
    ``max_delay``: "full jitter") while it raises one of ``retry_on``, ``attempts`` times at
    most; the last error is raised."""
    attempt = 1
    while True:
        try:
            return await call()
        except retry_on as exc:
            if attempt >= attempts:
                raise
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1)))
            sqlstate = getattr(exc, "sqlstate", None)
            log.info(
                "retrying after %s%s (attempt %d of %d, sleeping %.3fs)",
                type(exc).__name__,
                f" ({sqlstate})" if sqlstate else "",
                attempt,
                attempts,
                delay,
            )
            await asyncio.sleep(delay)
            attempt += 1
