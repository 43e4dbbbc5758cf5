"""``check-sql``: prepare every named query against the migrated schema and compare with its model.

PostgreSQL itself parses and plans each statement (PREPARE via libpq), so a
misspelt table or column, a syntax error or an undeterminable parameter type
is found before the query ever runs. The described result columns are then
compared with the fields of the pydantic model the repository maps them to:
same names, compatible types, and a non-nullable field is never fed from a
nullable table column.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import re
import types
import typing
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
import pydantic
from psycopg import pq
from psycopg.pq.abc import PGresult
from pydantic import BaseModel

from .._loader import Query
from .._repository import QueryRef, Repository, model_of

__all__ = ["Problem", "check_queries"]

# Type OID -> Python types a model field may use for that column.
_COMPATIBLE: dict[int, tuple[type, ...]] = {
    16: (bool,),
    17: (bytes,),
    19: (str,),  # name
    20: (int,),
    21: (int,),
    23: (int,),
    25: (str,),
    26: (int,),  # oid
    114: (dict, list),  # json
    3802: (dict, list),  # jsonb
    700: (float,),
    701: (float,),
    1042: (str,),  # char(n)
    1043: (str,),  # varchar
    1082: (dt.date,),
    1083: (dt.time,),
    1114: (dt.datetime,),
    1184: (dt.datetime,),
    1186: (dt.timedelta,),
    1700: (decimal.Decimal,),
    2950: (uuid.UUID,),
    869: (ipaddress.IPv4Address, ipaddress.IPv6Address),  # inet
}


# pydantic's constrained date/time types are marker classes, not subclasses.
_PYDANTIC_MARKERS: dict[Any, type] = {
    pydantic.AwareDatetime: dt.datetime,
    pydantic.NaiveDatetime: dt.datetime,
    pydantic.PastDatetime: dt.datetime,
    pydantic.FutureDatetime: dt.datetime,
    pydantic.PastDate: dt.date,
    pydantic.FutureDate: dt.date,
}


@dataclass(frozen=True, slots=True)
class Problem:
    """A query that does not fit the schema or its model."""

    query: Query
    message: str

    def __str__(self) -> str:
        return f"{self.query.location}: {self.query.name}: {self.message}"


def _field_types(annotation: Any) -> tuple[set[type], bool]:
    """The concrete types a field annotation accepts, and whether it accepts None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _field_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        found: set[type] = set()
        nullable = False
        for arg in typing.get_args(annotation):
            inner, inner_null = _field_types(arg)
            found |= inner
            nullable |= inner_null
        return found, nullable
    if origin is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}, None in typing.get_args(annotation)
    if annotation is type(None) or annotation is None:
        return set(), True
    if annotation is typing.Any:
        return {object}, True
    if origin is not None:
        return {origin}, False
    if annotation in _PYDANTIC_MARKERS:
        return {_PYDANTIC_MARKERS[annotation]}, False
    if isinstance(annotation, type):
        return {annotation}, False
    return {object}, True


def _nullable_columns(conn: psycopg.Connection[Any], res: PGresult) -> dict[int, bool]:
    """For each result column that is a plain table column: whether that column is nullable."""
    pairs = [(i, res.ftable(i), res.ftablecol(i)) for i in range(res.nfields)]
    wanted = [(i, t, c) for i, t, c in pairs if t and c > 0]
    if not wanted:
        return {}
    rows = conn.execute(
        "SELECT attrelid::bigint, attnum::int, NOT attnotnull FROM pg_attribute"
        " WHERE (attrelid::bigint, attnum::int) IN (SELECT * FROM unnest(%s::bigint[], %s::int[]))",
        ([t for _, t, _ in wanted], [c for _, _, c in wanted]),
    ).fetchall()
    nullable = {(t, c): n for t, c, n in rows}
    return {i: nullable.get((t, c), True) for i, t, c in wanted}


def _compare(
    conn: psycopg.Connection[Any], query: Query, ref: QueryRef[Any], res: PGresult
) -> list[str]:
    names = [(res.fname(i) or b"").decode() for i in range(res.nfields)]
    card = query.cardinality
    if card == "scalar":
        return [] if len(names) == 1 else [f":scalar returns {len(names)} columns, expected 1"]
    model = model_of(ref)
    if model is None:
        return []
    if not names:
        return [f":{card} returns no columns but maps to {model.__name__}"]
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    problems: list[str] = []
    fields = model.model_fields
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        problems.append(f"duplicate result columns: {', '.join(dupes)}")
    missing = [f for f in fields if f not in names and fields[f].is_required()]
    extra = [n for n in names if n not in fields]
    if missing:
        problems.append(f"{model.__name__} fields missing from the result: {', '.join(missing)}")
    if extra:
        problems.append(f"result columns with no field in {model.__name__}: {', '.join(extra)}")
    nullable = _nullable_columns(conn, res)
    for i, name in enumerate(names):
        if name not in fields:
            continue
        accepted, field_nullable = _field_types(fields[name].annotation)
        compatible = _COMPATIBLE.get(res.ftype(i))
        if compatible and object not in accepted:
            ok = any(issubclass(c, a) for c in compatible for a in accepted)
            if not ok:
                wanted = " | ".join(sorted(a.__name__ for a in accepted)) or "None"
                got = " | ".join(c.__name__ for c in compatible)
                problems.append(f"column {name} is {got} in PostgreSQL but {wanted} in the model")
        if nullable.get(i) and not field_nullable:
            problems.append(f"column {name} is nullable but {model.__name__}.{name} is not")
    return problems


def check_queries(
    conn: psycopg.Connection[Any], repositories: Iterable[type[Repository]]
) -> list[Problem]:
    """Prepare each bound query of ``repositories`` on ``conn``; return every problem found.

    ``conn`` must be an autocommit connection to a migrated database. Nothing
    is committed: the check runs in one transaction that is rolled back, in
    which temp-table DDL (staging tables) is executed so that the queries
    using those tables can be prepared. A ``:copy`` query is checked by
    preparing a SELECT of its table and columns (COPY cannot be prepared).
    """
    problems: list[Problem] = []
    # One transaction, rolled back: temp-table DDL is executed so the queries
    # that use the table can be prepared after it.
    conn.execute("BEGIN")
    try:
        for repo in repositories:
            for ref in repo.query_refs.values():
                if ref.query is not None:
                    problems.extend(_check_one(conn, ref.query, ref))
    finally:
        conn.execute("ROLLBACK")
    return problems


_COPY = re.compile(r"^\s*COPY\s+(\w+)\s*\(([^)]*)\)\s+FROM\s+STDIN", re.IGNORECASE)
_TEMP_DDL = re.compile(r"^\s*CREATE\s+TEMP(ORARY)?\s+TABLE", re.IGNORECASE)


def _error(result: PGresult) -> str:
    return (
        (result.error_message or b"")
        .decode(errors="replace")
        .strip()
        .removeprefix("ERROR:")
        .strip()
    )


def _check_one(conn: psycopg.Connection[Any], query: Query, ref: QueryRef[Any]) -> list[Problem]:
    """Check one query inside a savepoint, so a failure leaves the transaction usable."""
    pgconn = conn.pgconn
    pgconn.exec_(b"SAVEPOINT check_sql")
    try:
        if _TEMP_DDL.match(query.positional_sql) and not query.params:
            # Executed (and rolled back with the check) so later queries can use the table.
            result = pgconn.exec_(query.positional_sql.encode())
            return (
                []
                if result.status == pq.ExecStatus.COMMAND_OK
                else [Problem(query, _error(result))]
            )
        probe = query.positional_sql
        if query.cardinality == "copy":
            match = _COPY.match(query.positional_sql)
            if not match:
                return [Problem(query, "a :copy query must be COPY table (columns) FROM STDIN")]
            # COPY cannot be prepared; a SELECT of its columns checks table and columns.
            # The text comes from the project's own SQL files, never from input.
            probe = f"SELECT {match.group(2)} FROM {match.group(1)}"  # noqa: S608
        result = pgconn.prepare(b"", probe.encode())
        if result.status != pq.ExecStatus.COMMAND_OK:
            return [Problem(query, _error(result))]
        if query.cardinality == "copy":
            return []
        described = pgconn.describe_prepared(b"")
        return [Problem(query, m) for m in _compare(conn, query, ref, described)]
    finally:
        if pgconn.transaction_status == pq.TransactionStatus.INERROR:
            pgconn.exec_(b"ROLLBACK TO SAVEPOINT check_sql")
        pgconn.exec_(b"RELEASE SAVEPOINT check_sql")
