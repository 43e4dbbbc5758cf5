"""The unit of work: every repository bound to one connection and one transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from types import TracebackType
from typing import Any

import psycopg

from ._cache_async import AsyncCache
from .errors import DataLayerError, map_error
from .models.cached import PendingInvalidation
from .repositories import AsyncCacheInvalidationRepository, AsyncRepositories

__all__ = ["AsyncUnitOfWork", "restore_session"]


class _AsyncConnectionSession:
    """Lends the unit of work's own connection, while the unit of work is open."""

    __slots__ = ("_cache", "_conn", "_journaled", "closed", "touched")

    def __init__(self, conn: psycopg.AsyncConnection[Any], cache: AsyncCache | None = None):
        self._conn = conn
        self._cache = cache
        self._journaled: list[PendingInvalidation] = []
        self.closed = False
        self.touched: set[int] = set()  # accounts written: read-your-writes on replicas

    @property
    def cache(self) -> AsyncCache | None:
        return self._cache

    @property
    def in_transaction(self) -> bool:
        return True

    async def invalidate(self, pairs: Sequence[tuple[int, str]]) -> None:
        if self._cache is None or not self._cache.enabled:
            return
        self._journaled.extend(await AsyncCacheInvalidationRepository(self)._journal(pairs))

    def connection(
        self, *, account_id: int | None = None, writes: bool = False
    ) -> _AsyncConnectionSession:
        if self.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
        if writes and account_id is not None:
            self.touched.add(account_id)
        return self

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[_AsyncConnectionSession]:
        if self.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
        try:
            async with self._conn.transaction():  # a savepoint: the unit of work still decides
                yield self
        except psycopg.Error as exc:
            raise map_error(exc) from exc

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class AsyncUnitOfWork(AsyncRepositories):
    """Repositories sharing one transaction; made by ``AsyncDatabase.unit_of_work()``.

    Repositories never commit: the transaction commits when the ``with`` block
    ends normally and rolls back when it raises. Using the unit of work after
    its block raises ``DataLayerError``.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], *, cache: AsyncCache | None = None):
        self._conn_session = _AsyncConnectionSession(conn, cache)
        super().__init__(self._conn_session)

    @property
    def connection(self) -> psycopg.AsyncConnection[Any]:
        """The transaction's connection, for SQL outside the repositories."""
        if self._conn_session.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
        return self._conn_session._conn

    def _close(self) -> None:
        self._conn_session.closed = True

    async def _run_after_commit(self) -> None:
        """Committed: send the journaled invalidations to Redis (and forget them there)."""
        session = self._conn_session
        journaled, session._journaled = session._journaled, []
        if journaled and session._cache is not None:
            await session._cache.apply(journaled)


async def restore_session(conn: psycopg.AsyncConnection[Any]) -> None:
    """After a unit of work on ``conn``: its isolation level and read-only mode back to the
    session's defaults (best effort: a broken connection is dropped by the pool anyway)."""
    with suppress(Exception):
        await conn.set_isolation_level(None)
        await conn.set_read_only(None)
