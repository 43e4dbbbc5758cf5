"""Running a named query on a session: the only place the library opens a cursor.

A ``AsyncSession`` lends connections (a pool, one statement each, or a unit of
work's own connection); ``execute`` runs one query on it and shapes the result
by the query's cardinality; ``copy_rows`` feeds a ``COPY … FROM STDIN``. Every
psycopg error leaves here as a datalayer error (``errors.map_error``). What a
statement is (its parameters, routing, row shape) is in ``_statement``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg.rows import BaseRowFactory

from . import _telemetry
from ._loader import Query
from ._statement import check_params, model_rows
from .errors import DataLayerError, InvalidInput, map_error

if TYPE_CHECKING:
    from ._cache_async import AsyncCache

__all__ = [
    "AsyncSession",
    "check_params",
    "copy_rows",
    "execute",
    "execute_each",
    "model_rows",
]


class AsyncSession(Protocol):
    """Where a repository gets its connection: a pool (autocommit), a unit of work, replicas."""

    def connection(
        self, *, account_id: int | None = None, writes: bool = False
    ) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        """Lend a connection for one statement; errors raised are datalayer errors.

        ``account_id`` is the account the statement reads or ``writes``: a
        replica session picks a replica that has replayed that account's
        writes, and the primary's sessions remember where its writes end.
        """
        ...

    def atomic(self) -> AbstractAsyncContextManager[AsyncSession]:
        """A session whose statements share one transaction (a savepoint inside a unit of work)."""
        ...

    @property
    def cache(self) -> AsyncCache | None:
        """The Redis cache of the database, or ``None`` without one."""
        ...

    @property
    def in_transaction(self) -> bool:
        """Whether statements run in one transaction (a unit of work), not one each."""
        ...

    async def invalidate(self, pairs: Sequence[tuple[int, str]]) -> None:
        """Make the cached values of ``(account_id, tag)`` pairs stale once the work commits.

        Journaled in the session's transaction (so the change and its
        invalidation commit together or not at all), sent to Redis after the
        commit, never after a rollback. Raises ``DataLayerError`` outside a
        transaction when a cache is configured.
        """
        ...


async def _shape(query: Query, cur: psycopg.AsyncCursor[Any]) -> Any:
    """What a statement of the query's cardinality returns (``copy`` goes through copy_rows)."""
    cardinality = query.cardinality
    if cardinality == "many":
        return await cur.fetchall()
    if cardinality == "one":
        if cur.rowcount > 1:
            raise DataLayerError(
                f"query {query.name} ({query.location}) returned {cur.rowcount} rows; "
                ":one expects at most one"
            )
        return await cur.fetchone()
    if cardinality == "scalar":
        return await cur.fetchone()
    if cardinality == "execrows":
        return cur.rowcount
    return None


async def execute(
    session: AsyncSession, query: Query, params: Mapping[str, Any], rows: BaseRowFactory[Any]
) -> Any:
    """Run ``query`` with ``params`` on a connection of ``session``; rows made by ``rows``.

    Returns what the cardinality says: ``:one`` a row or ``None`` (more than
    one row is a ``DataLayerError``), ``:many`` a list, ``:scalar`` the row's
    value or ``None``, ``:exec`` ``None``, ``:execrows`` the affected count.
    Raises ``TypeError`` for missing or unexpected parameters, ``InvalidInput``
    for text that cannot be encoded, and datalayer errors for the rest.
    """
    if params.keys() != query.param_set:
        check_params(query, params)  # raises, naming what is missing or unexpected
    account = params.get(query.account_param)
    async with session.connection(
        account_id=account if type(account) is int else None, writes=query.writes
    ) as conn:
        telemetry = _telemetry.ACTIVE
        if telemetry is None:
            return await _run(conn, query, params, rows)
        with telemetry.statement(conn, query):
            return await _run(conn, query, params, rows)


async def execute_each(
    session: AsyncSession,
    query: Query,
    calls: Sequence[Mapping[str, Any]],
    rows: BaseRowFactory[Any],
) -> list[Any]:
    """Run ``query`` once per parameter set of ``calls``, pipelined on one connection.

    The statements run one after the other, as ``execute`` would run them,
    but are sent together (psycopg's pipeline mode): one wait for the server
    instead of one per statement, as when a claim across accounts runs one
    statement per account (``datalayer._fanout``). Returns each statement's
    result, in order. The first error stops the rest and leaves here as a
    datalayer error; run it in a transaction, so that nothing of a failed
    batch stays.
    """
    for params in calls:
        check_params(query, params)
    if not calls:
        return []
    async with session.connection(writes=query.writes) as conn:
        telemetry = _telemetry.ACTIVE
        if telemetry is None:
            return await _run_each(conn, query, calls, rows)
        with telemetry.statement(conn, query):
            return await _run_each(conn, query, calls, rows)


async def _run_each(
    conn: psycopg.AsyncConnection[Any],
    query: Query,
    calls: Sequence[Mapping[str, Any]],
    rows: BaseRowFactory[Any],
) -> list[Any]:
    try:
        async with conn.pipeline():
            cursors = []
            for params in calls:
                cur = conn.cursor(row_factory=rows)
                await cur.execute(query.sql, params)
                cursors.append(cur)
        return [await _shape(query, cur) for cur in cursors]
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"not encodable as UTF-8 text: {exc.reason}") from None


# A connection's attribute holding its idle cursor. Making a psycopg cursor (its
# adapters, its transformer) costs about 7 µs, a fifth of a primary-key read on a
# local server, so a statement takes the connection's idle cursor, if it has one,
# and leaves it there once its result is read. ``dict.pop`` takes it atomically:
# two statements on one connection at once (threads, tasks) never share a cursor.
# A ``:many`` result stays off it, so an idle connection holds no large result.
_IDLE_CURSOR = "_datalayer_idle_cursor"


async def _run(
    conn: psycopg.AsyncConnection[Any],
    query: Query,
    params: Mapping[str, Any],
    rows: BaseRowFactory[Any],
) -> Any:
    try:
        reuse = query.cardinality != "many"
        cur = conn.__dict__.pop(_IDLE_CURSOR, None) if reuse else None
        if cur is None:
            cur = conn.cursor(row_factory=rows)
        else:
            cur.pgresult = None  # so that no row maker is made from the last result
            cur.row_factory = rows
        await cur.execute(query.sql, params)
        result = await _shape(query, cur)
        if reuse:
            conn.__dict__[_IDLE_CURSOR] = cur
        return result
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    except UnicodeEncodeError as exc:  # e.g. a lone surrogate in a str parameter
        raise InvalidInput(f"not encodable as UTF-8 text: {exc.reason}") from None


async def copy_rows(
    session: AsyncSession, query: Query, rows: Iterable[Sequence[Any]], types: Sequence[str]
) -> int:
    """Feed ``rows`` to the ``COPY … FROM STDIN (FORMAT BINARY)`` of ``query``; return the count.

    Binary COPY needs the PostgreSQL type name of every column (``types``), in
    the statement's column order.
    """
    async with session.connection(writes=True) as conn:
        telemetry = _telemetry.ACTIVE
        if telemetry is None:
            return await _copy(conn, query, rows, types)
        with telemetry.statement(conn, query) as span:
            count = await _copy(conn, query, rows, types)
            span.set_attribute("db.operation.batch.size", count)
            return count


async def _copy(
    conn: psycopg.AsyncConnection[Any],
    query: Query,
    rows: Iterable[Sequence[Any]],
    types: Sequence[str],
) -> int:
    count = 0
    try:
        async with conn.cursor() as cur, cur.copy(query.sql) as copy:
            copy.set_types(list(types))
            for row in rows:
                await copy.write_row(row)
                count += 1
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    return count
