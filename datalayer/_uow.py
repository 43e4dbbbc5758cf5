"""The unit of work: every repository bound to one connection and one transaction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg

from ._cache import Cache
from .errors import DataLayerError, map_error
from .models.cached import PendingInvalidation
from .repositories import CacheInvalidationRepository, Repositories

__all__ = ["UnitOfWork"]


class _ConnectionSession:
    """Lends the unit of work's own connection, while the unit of work is open."""

    __slots__ = ("_cache", "_conn", "_journaled", "closed", "touched")

    def __init__(self, conn: psycopg.Connection[Any], cache: Cache | None = None):
        self._conn = conn
        self._cache = cache
        self._journaled: list[PendingInvalidation] = []
        self.closed = False
        self.touched: set[int] = set()  # accounts written: read-your-writes on replicas

    @property
    def cache(self) -> Cache | None:
        return self._cache

    @property
    def in_transaction(self) -> bool:
        return True

    def invalidate(self, pairs: Sequence[tuple[int, str]]) -> None:
        if self._cache is None or not self._cache.enabled:
            return
        self._journaled.extend(CacheInvalidationRepository(self)._journal(pairs))

    def connection(
        self, *, account_id: int | None = None, writes: bool = False
    ) -> _ConnectionSession:
        if self.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
        if writes and account_id is not None:
            self.touched.add(account_id)
        return self

    @contextmanager
    def atomic(self) -> Iterator[_ConnectionSession]:
        if self.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
        try:
            with self._conn.transaction():  # a savepoint: the unit of work still decides
                yield self
        except psycopg.Error as exc:
            raise map_error(exc) from exc

    def __enter__(self) -> psycopg.Connection[Any]:
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class UnitOfWork(Repositories):
    """Repositories sharing one transaction; made by ``Database.unit_of_work()``.

    Repositories never commit: the transaction commits when the ``with`` block
    ends normally and rolls back when it raises. Using the unit of work after
    its block raises ``DataLayerError``.
    """

    def __init__(self, conn: psycopg.Connection[Any], *, cache: Cache | None = None):
        self._conn_session = _ConnectionSession(conn, cache)
        super().__init__(self._conn_session)

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The transaction's connection, for SQL outside the repositories."""
        if self._conn_session.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
        return self._conn_session._conn

    def _close(self) -> None:
        self._conn_session.closed = True

    def _run_after_commit(self) -> None:
        """Committed: send the journaled invalidations to Redis (and forget them there)."""
        session = self._conn_session
        journaled, session._journaled = session._journaled, []
        if journaled and session._cache is not None:
            session._cache.apply(journaled)
