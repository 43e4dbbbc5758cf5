"""The repository base class, query descriptors, and binding them to loaded SQL.

A repository declares the queries it runs as class attributes::

    class UserRepository(Repository):
        aggregate = "users"                       # sql/users.sql
        _get = one("get_user", User)              # -- name: get_user :one

        def get(self, *, account_id: int, user_id: int) -> User | None:
            return self._get(account_id=account_id, user_id=user_id)

``bind_repositories`` checks every declaration against the loaded SQL once, at
import time, so a typo fails ``import datalayer`` rather than a request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, Self, TypeVar, overload

import psycopg
from psycopg.rows import BaseRowFactory, scalar_row, tuple_row

from ._loader import Cardinality, Query

if TYPE_CHECKING:
    from ._cache import Cache
from .errors import DataLayerError, InvalidInput, SQLLoadError, map_error

__all__ = [
    "Repository",
    "Session",
    "bind_repositories",
    "copy_in",
    "execrows",
    "execute",
    "many",
    "one",
    "scalar",
]

T = TypeVar("T")


class Session(Protocol):
    """Where a repository gets its connection: a pool (autocommit) or a unit of work."""

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        """Lend a connection for one statement; errors raised are datalayer errors."""
        ...

    def atomic(self) -> AbstractContextManager[Session]:
        """A session whose statements share one transaction (a savepoint inside a unit of work)."""
        ...

    @property
    def cache(self) -> Cache | None:
        """The Redis cache of the database, or ``None`` without one."""
        ...

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the session's work is committed (never after a rollback)."""
        ...


class Repository:
    """Base of every repository: holds the session and never commits.

    Subclasses set ``aggregate`` (the SQL file stem) and declare queries with
    ``one``, ``many``, ``scalar``, ``execute`` and ``execrows``.
    """

    aggregate: ClassVar[str]
    query_refs: ClassVar[dict[str, _QueryRef]]

    def __init__(self, session: Session):
        self._session = session

    def _invalidate(self, *tags: str) -> None:
        """After the current transaction commits, make the cached values of ``tags`` stale."""
        cache = self._session.cache
        if cache is not None and cache.enabled and tags:
            self._session.after_commit(lambda: cache.invalidate(*tags))

    def _atomic(self) -> AbstractContextManager[Session]:
        """For a method of several statements: they commit or roll back together.

        Outside a unit of work this is a transaction of its own; inside one, a
        savepoint, so the caller's transaction still decides.
        """
        return self._session.atomic()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        refs: dict[str, _QueryRef] = {}
        for klass in reversed(cls.__mro__):
            refs.update({k: v for k, v in vars(klass).items() if isinstance(v, _QueryRef)})
        cls.query_refs = refs


def _check_params(query: Query, params: Mapping[str, Any]) -> None:
    if params.keys() != query.param_set:
        missing = sorted(query.param_set - params.keys())
        extra = sorted(params.keys() - query.param_set)
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(extra)}")
        raise TypeError(f"query {query.name} ({query.location}): {'; '.join(parts)}")


class _QueryRef:
    """A repository's use of one named query; bound to the loaded ``Query`` at import."""

    cardinality: ClassVar[Cardinality]

    def __init__(self, name: str):
        self.name = name
        self.query: Query | None = None
        self.owner: type | None = None
        self.attr = ""

    def __set_name__(self, owner: type, attr: str) -> None:
        self.owner = owner
        self.attr = attr

    def describe(self) -> str:
        owner = self.owner.__name__ if self.owner else "?"
        return f"{owner}.{self.attr}"

    def _run(self, session: Session, params: Mapping[str, Any]) -> Any:
        query = self.query
        if query is None:
            raise SQLLoadError(f"{self.describe()}: query {self.name} was never bound")
        _check_params(query, params)
        with session.connection() as conn:
            try:
                cur = conn.cursor(row_factory=self.row_factory())
                cur.execute(query.sql, params)
                return self._result(query, cur)
            except psycopg.Error as exc:
                raise map_error(exc) from exc
            except UnicodeEncodeError as exc:  # e.g. a lone surrogate in a str parameter
                raise InvalidInput(f"not encodable as UTF-8 text: {exc.reason}") from None

    def row_factory(self) -> BaseRowFactory[Any]:
        return tuple_row

    def _result(self, query: Query, cur: psycopg.Cursor[Any]) -> Any:
        return None


class _Bound(Generic[T]):
    __slots__ = ("_ref", "_session")

    def __init__(self, ref: _QueryRef, session: Session):
        self._ref = ref
        self._session = session

    def __call__(self, **params: Any) -> T:
        result: T = self._ref._run(self._session, params)
        return result


def model_rows(model: type[T]) -> BaseRowFactory[T]:
    """Rows as ``model`` instances: psycopg's ``class_row``, minus its per-execute costs.

    A named query's result columns are fixed by its SQL (and held to the
    model's fields by check-sql), so their names are read from the first
    result and reused while the column count agrees; a pydantic model is
    built by its validator directly. Measured on a primary-key read: 10 µs of
    ``class_row``'s 14 µs over tuple rows saved per call.
    """
    validator = getattr(model, "__pydantic_validator__", None)
    build: Callable[[dict[str, Any]], T] = (
        validator.validate_python if validator is not None else lambda kw: model(**kw)
    )
    names: tuple[str, ...] = ()

    def factory(cursor: psycopg.Cursor[Any]) -> Callable[[Sequence[Any]], T]:
        nonlocal names
        result = cursor.pgresult
        count = result.nfields if result is not None else 0
        if count != len(names):
            if result is None or not count:
                return _no_rows
            encoding = cursor.connection.info.encoding
            names = tuple((result.fname(i) or b"").decode(encoding) for i in range(count))
        columns = names

        def make(values: Sequence[Any]) -> T:
            return build(dict(zip(columns, values, strict=True)))

        return make

    return factory  # type: ignore[return-value]


def _no_rows(values: Sequence[Any]) -> Any:
    raise psycopg.InterfaceError("the statement returned no rows")


class _ModelRef(_QueryRef, Generic[T]):
    def __init__(self, name: str, model: type[T]):
        super().__init__(name)
        self.model = model
        self._factory: BaseRowFactory[T] = model_rows(model)

    def row_factory(self) -> BaseRowFactory[Any]:
        return self._factory


class one(_ModelRef[T]):  # noqa: N801 - reads as a declaration: one("get_user", User)
    """``:one`` → ``Model | None``; more than one row is an error in the SQL."""

    cardinality = "one"

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repository, owner: type) -> _Bound[T | None]: ...
    def __get__(self, obj: Repository | None, owner: type) -> Self | _Bound[T | None]:
        return self if obj is None else _Bound(self, obj._session)

    def _result(self, query: Query, cur: psycopg.Cursor[Any]) -> Any:
        if cur.rowcount > 1:
            raise DataLayerError(
                f"query {query.name} ({query.location}) returned {cur.rowcount} rows; "
                ":one expects at most one"
            )
        return cur.fetchone()


class many(_ModelRef[T]):  # noqa: N801
    """``:many`` → ``list[Model]``."""

    cardinality = "many"

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repository, owner: type) -> _Bound[list[T]]: ...
    def __get__(self, obj: Repository | None, owner: type) -> Self | _Bound[list[T]]:
        return self if obj is None else _Bound(self, obj._session)

    def _result(self, query: Query, cur: psycopg.Cursor[Any]) -> Any:
        return cur.fetchall()


class scalar(_QueryRef, Generic[T]):  # noqa: N801
    """``:scalar`` → the first column of the single row, or ``None`` for no row."""

    cardinality = "scalar"

    def __init__(self, name: str, kind: type[T]):
        super().__init__(name)
        self.kind = kind

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repository, owner: type) -> _Bound[T | None]: ...
    def __get__(self, obj: Repository | None, owner: type) -> Self | _Bound[T | None]:
        return self if obj is None else _Bound(self, obj._session)

    def row_factory(self) -> BaseRowFactory[Any]:
        return scalar_row

    def _result(self, query: Query, cur: psycopg.Cursor[Any]) -> Any:
        return cur.fetchone()


class execute(_QueryRef):  # noqa: N801
    """``:exec`` → ``None``."""

    cardinality = "exec"

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repository, owner: type) -> _Bound[None]: ...
    def __get__(self, obj: Repository | None, owner: type) -> Self | _Bound[None]:
        return self if obj is None else _Bound(self, obj._session)


class execrows(_QueryRef):  # noqa: N801
    """``:execrows`` → the number of rows the statement affected."""

    cardinality = "execrows"

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repository, owner: type) -> _Bound[int]: ...
    def __get__(self, obj: Repository | None, owner: type) -> Self | _Bound[int]:
        return self if obj is None else _Bound(self, obj._session)

    def _result(self, query: Query, cur: psycopg.Cursor[Any]) -> Any:
        return cur.rowcount


class copy_in(_QueryRef):  # noqa: N801
    """``:copy`` → a ``COPY … FROM STDIN (FORMAT BINARY)``; call with ``rows`` and ``types``.

    Returns the number of rows written. Binary COPY needs the PostgreSQL type
    name of every column (``types``), in the statement's column order.
    """

    cardinality = "copy"

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repository, owner: type) -> _BoundCopy: ...
    def __get__(self, obj: Repository | None, owner: type) -> Self | _BoundCopy:
        return self if obj is None else _BoundCopy(self, obj._session)

    def _copy(self, session: Session, rows: Iterable[Sequence[Any]], types: Sequence[str]) -> int:
        query = self.query
        if query is None:
            raise SQLLoadError(f"{self.describe()}: query {self.name} was never bound")
        count = 0
        with session.connection() as conn:
            try:
                with conn.cursor() as cur, cur.copy(query.sql) as copy:
                    copy.set_types(list(types))
                    for row in rows:
                        copy.write_row(row)
                        count += 1
            except psycopg.Error as exc:
                raise map_error(exc) from exc
        return count


class _BoundCopy:
    __slots__ = ("_ref", "_session")

    def __init__(self, ref: copy_in, session: Session):
        self._ref = ref
        self._session = session

    def __call__(self, *, rows: Iterable[Sequence[Any]], types: Sequence[str]) -> int:
        return self._ref._copy(self._session, rows, types)


def bind_repositories(
    catalog: Mapping[str, Query], repositories: Iterable[type[Repository]]
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


def model_of(ref: _QueryRef) -> type | None:
    """The model a ``one``/``many`` declaration maps rows to, else ``None``."""
    return ref.model if isinstance(ref, _ModelRef) else None
