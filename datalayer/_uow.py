"""The unit of work: every repository bound to one connection and one transaction."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg

from ._cache import Cache
from .errors import DataLayerError, map_error
from .repositories import Repositories

__all__ = ["UnitOfWork"]


class _ConnectionSession:
    """Lends the unit of work's own connection, while the unit of work is open."""

    __slots__ = ("_cache", "_conn", "_hooks", "closed")

    def __init__(self, conn: psycopg.Connection[Any], cache: Cache | None = None):
        self._conn = conn
        self._cache = cache
        self._hooks: list[Callable[[], None]] = []
        self.closed = False

    @property
    def cache(self) -> Cache | None:
        return self._cache

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._hooks.append(fn)

    def connection(self) -> _ConnectionSession:
        if self.closed:
            raise DataLayerError("this unit of work has ended; open a new one")
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
        hooks, self._conn_session._hooks = self._conn_session._hooks, []
        for hook in hooks:
            hook()
