"""The repository base class, query declarations, and binding them to loaded SQL.

A repository declares the queries it runs as class attributes::

    class AsyncUserRepository(AsyncRepository):
        aggregate = "users"                       # sql/users.sql
        _get = one("get_user", User)              # -- name: get_user :one

        async def get(self, *, account_id: int, user_id: int) -> User | None:
            return await self._get(account_id=account_id, user_id=user_id)

``bind_repositories`` checks every declaration against the loaded SQL once, at
import time, so a typo fails ``import datalayer`` rather than a request.
Declarations hold no I/O: a call goes to ``_exec_async``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Generic, Self, TypeVar, overload

from psycopg.rows import BaseRowFactory, scalar_row, tuple_row

from . import _exec_async
from ._cachecore import GLOBAL_ACCOUNT
from ._exec_async import AsyncSession
from ._loader import Cardinality, Query
from ._statement import model_rows
from .errors import SQLLoadError

__all__ = [
    "AsyncRepository",
    "AsyncSession",
    "bind_repositories",
    "copy_in",
    "execrows",
    "execute",
    "many",
    "model_of",
    "one",
    "scalar",
]

T = TypeVar("T")
R = TypeVar("R")
P = TypeVar("P", bound="AsyncRepository")


class AsyncRepository:
    """Base of every repository: holds the session and never commits.

    Subclasses set ``aggregate`` (the SQL file stem) and declare queries with
    ``one``, ``many``, ``scalar``, ``execute``, ``execrows`` and ``copy_in``.
    """

    aggregate: ClassVar[str]
    query_refs: ClassVar[dict[str, QueryRef[Any]]]

    def __init__(self, session: AsyncSession):
        self._session = session

    async def _invalidate(self, account_id: int | None, *tags: str) -> None:
        """Once the current transaction commits, make the cached values of ``tags`` stale.

        ``account_id`` is the account the tags belong to (``None``: global
        tags, such as a plan's). The invalidation is journaled in the
        transaction, so it reaches every process even if Redis or this process
        fails after the commit. Call it inside ``_changing()``.
        """
        account = GLOBAL_ACCOUNT if account_id is None else account_id
        await self._invalidate_each([(account, tag) for tag in tags])

    async def _invalidate_each(self, pairs: Sequence[tuple[int, str]]) -> None:
        """``_invalidate`` for ``(account_id, tag)`` pairs of several accounts."""
        if pairs:
            await self._session.invalidate(pairs)

    @asynccontextmanager
    async def _changing(self) -> AsyncIterator[Self]:
        """This repository in a transaction that its cache invalidations can join.

        The unit of work's own transaction, if there is one; else, when a
        cache is configured, a new one (without a cache there is nothing to
        journal, and each statement stays its own). Use what it yields for the
        change and its ``_invalidate``.
        """
        session = self._session
        cache = session.cache
        if session.in_transaction or cache is None or not cache.enabled:
            yield self
        else:
            async with self._atomic() as tx:
                yield tx

    @asynccontextmanager
    async def _atomic(self) -> AsyncIterator[Self]:
        """This repository bound to one transaction, for a method of several statements.

        Outside a unit of work the transaction is its own; inside one, a
        savepoint, so the caller's transaction still decides. Use what it
        yields (and ``_peer`` of it) for every statement of the block.
        """
        async with self._session.atomic() as session:
            yield type(self)(session)

    def _peer(self, repository: type[P]) -> P:
        """Another repository on this one's session (so inside its transaction too)."""
        return repository(self._session)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refs: dict[str, QueryRef[Any]] = {}
        for klass in reversed(cls.__mro__):
            refs.update({k: v for k, v in vars(klass).items() if isinstance(v, QueryRef)})
        cls.query_refs = refs


class QueryRef(Generic[R]):
    """A repository's use of one named query; bound to the loaded ``Query`` at import.

    Read from a repository instance it is a callable taking the query's
    parameters as keywords and returning ``R``.
    """

    cardinality: ClassVar[Cardinality]

    def __init__(self, name: str, rows: BaseRowFactory[Any] = tuple_row):
        self.name = name
        self.rows = rows
        self.query: Query | None = None
        self.owner: type | None = None
        self.attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.owner = owner
        self.attr = attr

    def describe(self) -> str:
        owner = self.owner.__name__ if self.owner else "?"
        return f"{owner}.{self.attr}"

    def bound_query(self) -> Query:
        """The loaded query; ``SQLLoadError`` if binding never happened."""
        if self.query is None:
            raise SQLLoadError(f"{self.describe()}: query {self.name} was never bound")
        return self.query

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: AsyncRepository, owner: type) -> AsyncBound[R]: ...
    def __get__(self, obj: AsyncRepository | None, owner: type) -> Self | AsyncBound[R]:
        return self if obj is None else AsyncBound(self, obj._session)


class AsyncBound(Generic[R]):
    """A declaration read from a repository: call it with the query's parameters."""

    __slots__ = ("_ref", "_session")

    def __init__(self, ref: QueryRef[R], session: AsyncSession):
        self._ref = ref
        self._session = session

    async def __call__(self, **params: Any) -> R:
        ref = self._ref
        result: R = await _exec_async.execute(
            self._session, ref.query or ref.bound_query(), params, ref.rows
        )
        return result

    async def each(self, calls: Sequence[Mapping[str, Any]]) -> list[R]:
        """The query once per parameter set of ``calls``, pipelined on one connection.

        Each result in order (``_exec_async.execute_each``): for one statement per
        account of a claim across accounts. Use it in a transaction.
        """
        ref = self._ref
        results: list[R] = await _exec_async.execute_each(
            self._session, ref.query or ref.bound_query(), calls, ref.rows
        )
        return results


class one(QueryRef[T | None], Generic[T]):  # noqa: N801 - reads as a declaration
    """``:one`` → ``Model | None``; more than one row is an error in the SQL."""

    cardinality = "one"

    def __init__(self, name: str, model: type[T]):
        super().__init__(name, model_rows(model))
        self.model = model


class many(QueryRef[list[T]], Generic[T]):  # noqa: N801
    """``:many`` → ``list[Model]``."""

    cardinality = "many"

    def __init__(self, name: str, model: type[T]):
        super().__init__(name, model_rows(model))
        self.model = model


class scalar(QueryRef[T | None], Generic[T]):  # noqa: N801
    """``:scalar`` → the first column of the single row, or ``None`` for no row."""

    cardinality = "scalar"

    def __init__(self, name: str, kind: type[T]):
        super().__init__(name, scalar_row)
        self.kind = kind


class execute(QueryRef[None]):  # noqa: N801
    """``:exec`` → ``None``."""

    cardinality = "exec"


class execrows(QueryRef[int]):  # noqa: N801
    """``:execrows`` → the number of rows the statement affected."""

    cardinality = "execrows"


class copy_in(QueryRef[int]):  # noqa: N801
    """``:copy`` → a ``COPY … FROM STDIN (FORMAT BINARY)``; call with ``rows`` and ``types``.

    Returns the number of rows written. Binary COPY needs the PostgreSQL type
    name of every column (``types``), in the statement's column order.
    """

    cardinality = "copy"

    @overload  # type: ignore[override]
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: AsyncRepository, owner: type) -> AsyncBoundCopy: ...
    def __get__(self, obj: AsyncRepository | None, owner: type) -> Self | AsyncBoundCopy:
        return self if obj is None else AsyncBoundCopy(self, obj._session)


class AsyncBoundCopy:
    """A ``copy_in`` declaration read from a repository: call it with ``rows`` and ``types``."""

    __slots__ = ("_ref", "_session")

    def __init__(self, ref: copy_in, session: AsyncSession):
        self._ref = ref
        self._session = session

    async def __call__(self, *, rows: Iterable[Sequence[Any]], types: Sequence[str]) -> int:
        return await _exec_async.copy_rows(self._session, self._ref.bound_query(), rows, types)


def bind_repositories(
    catalog: Mapping[str, Query], repositories: Iterable[type[AsyncRepository]]
) -> None:
    """Bind every repository's query declarations to ``catalog``; strict.

    Raises ``SQLLoadError`` when a declaration names a missing query, a query
    lives in another aggregate's file or has another cardinality, or a query
    of the catalog is used by no repository.
    """
    used: set[str] = set()
    for repo in repositories:
        for ref in repo.query_refs.values():
            query = catalog.get(ref.name)
            if query is None:
                raise SQLLoadError(
                    f"{ref.describe()} names query {ref.name}, which no SQL file defines "
                    f"(expected in {repo.aggregate}.sql)"
                )
            if query.aggregate != repo.aggregate:
                raise SQLLoadError(
                    f"query {ref.name} is used by {ref.describe()} (aggregate "
                    f"{repo.aggregate!r}) but lives in {query.path.name}",
                    path=query.path,
                    line=query.line,
                )
            if query.cardinality != ref.cardinality:
                raise SQLLoadError(
                    f"query {ref.name} is :{query.cardinality} but {ref.describe()} "
                    f"declares it with {type(ref).__name__}() (:{ref.cardinality})",
                    path=query.path,
                    line=query.line,
                )
            ref.query = query
            used.add(ref.name)
    for name, query in catalog.items():
        if name not in used:
            raise SQLLoadError(
                f"query {name} is not used by any repository", path=query.path, line=query.line
            )


def model_of(ref: QueryRef[Any]) -> type | None:
    """The model a ``one``/``many`` declaration maps rows to, else ``None``."""
    return ref.model if isinstance(ref, one | many) else None
