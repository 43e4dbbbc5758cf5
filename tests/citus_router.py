"""Which named queries Citus routes to one shard, read from EXPLAIN on a coordinator.

A helper for the Citus suite, not a test file. ``probe_queries`` prepares every
named query of ``datalayer.repositories`` on a Citus coordinator and explains
its execution (``EXPLAIN (COSTS OFF) EXECUTE``) with the account's id for the
tenant key (``account_id``, and ``id`` in ``sql/accounts.sql``) and, for every
other parameter, either NULL or a sample value of its type (two passes: a NULL
can fold a condition away and a value can keep it, so each pass may prune
shards the other does not). The ``Task Count`` lines of the plan say how many
shards each Citus scan runs on: 1 is routed to one shard, 0 is pruned to none,
the shard count is all of them. ``assert_every_tenant_query_is_routed`` is the
test body: every tenant-scoped query routed, except ``MULTI_SHARD_ON_PURPOSE``.

Everything runs in one transaction that is rolled back. The staging queries
need their temporary table: the probe runs ``create_usage_staging`` and
``create_analytics_staging`` first, in that transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from datalayer._loader import Query

Fill = Literal["null", "sample"]

# Named queries that run on every shard on purpose, with the reason. A tenant
# query (one with the tenant key among its parameters) listed here may have a
# task count above 1; every other tenant query must not.
MULTI_SHARD_ON_PURPOSE: dict[str, str] = {
    "finalize_invoice": (
        "takes the year's next number from invoice_number_counters, a reference table"
        " (gap-free numbering): a write to every node"
    ),
}

# Parameters of these types get a sample value in the "sample" pass; any other
# type gets NULL in both passes. Arrays hold one element, so that `= ANY(...)`
# and unnest() are not empty. Some values are evaluated while planning: text is
# 'day' (a unit date_trunc accepts) and a bigint[] sums to zero (a balanced
# ledger transaction).
_SAMPLES: dict[str, str] = {
    "bigint": "1",
    "integer": "1",
    "smallint": "1",
    "numeric": "1",
    "boolean": "true",
    "text": "day",
    "character": "XXX",
    "character varying": "x",
    "timestamp with time zone": "2026-12-01 00:00:00+00",
    "date": "2026-12-01",
    "interval": "1 hour",
    "bytea": "\\x00",
    "jsonb": "{}",
    "json": "{}",
    "bigint[]": "{0}",
    "integer[]": "{1}",
    "numeric[]": "{1}",
    "text[]": "{x}",
    "boolean[]": "{true}",
    "timestamp with time zone[]": "{2026-12-01 00:00:00+00}",
    "bytea[]": "{\\\\x00}",
    "jsonb[]": '{"{}"}',
}

# Statements that cannot be prepared (utility commands).
_UTILITY = ("CREATE ", "DROP ", "COPY ")
_STAGING_CREATORS = ("create_usage_staging", "create_analytics_staging")
_TASK_COUNT = re.compile(r"Task Count: (\d+)")
_STATEMENT = "datalayer_router_probe"


@dataclass(frozen=True, slots=True)
class QueryProbe:
    """What EXPLAIN said about one named query on the coordinator.

    ``task_counts`` holds the ``Task Count`` of every Citus scan of the plan
    (empty when the plan has none: it runs on the coordinator alone, or pulls
    rows to it); ``error`` is Citus's (or PostgreSQL's) refusal, if any.
    """

    query: Query
    fill: Fill
    task_counts: tuple[int, ...]
    error: str | None
    plan: str

    @property
    def tenant(self) -> bool:
        """Whether the query is scoped to one account by its parameters."""
        return bool(tenant_params(self.query))

    @property
    def routed(self) -> bool:
        """Whether every Citus scan of the plan runs on one shard at most."""
        return self.error is None and all(count <= 1 for count in self.task_counts)


def tenant_params(query: Query) -> tuple[str, ...]:
    """The query's parameters that carry the tenant key (the distribution column)."""
    keys = ("account_id", "id") if query.aggregate == "accounts" else ("account_id",)
    return tuple(name for name in query.params if name in keys)


def named_queries() -> list[Query]:
    """Every named query a repository uses, once each, in name order."""
    from datalayer.repositories import REPOSITORIES

    queries = {
        ref.query.name: ref.query
        for repo in REPOSITORIES
        for ref in repo.query_refs.values()
        if ref.query is not None
    }
    return [queries[name] for name in sorted(queries)]


def _preparable(query: Query) -> bool:
    if query.cardinality == "copy":
        return False
    return not query.positional_sql.lstrip().upper().startswith(_UTILITY)


def _argument(
    name: str, type_name: str, query: Query, account_id: int, fill: Fill
) -> sql.Composable:
    if name in tenant_params(query):
        return sql.SQL("{}::{}").format(sql.Literal(account_id), sql.SQL(type_name))
    sample = _SAMPLES.get(type_name) if fill == "sample" else None
    return sql.SQL("{}::{}").format(
        sql.Literal(sample) if sample is not None else sql.SQL("NULL"), sql.SQL(type_name)
    )


def _parameter_types(conn: psycopg.Connection[Any]) -> list[str] | None:
    """The probe's prepared statement's parameter types; None if it is not prepared."""
    row = conn.execute(
        "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s",
        [_STATEMENT],
        prepare=False,
    ).fetchone()
    return None if row is None else [str(name) for name in row[0] or ()]


def _explain(
    conn: psycopg.Connection[Any], query: Query, account_id: int, fill: Fill
) -> QueryProbe:
    def probe(
        task_counts: Iterable[int] = (), error: str | None = None, plan: str = ""
    ) -> QueryProbe:
        return QueryProbe(query, fill, tuple(task_counts), error, plan)

    # psycopg deallocates every prepared statement after a rollback (of a
    # savepoint too) when it has prepared some of its own: prepare=False keeps
    # it from preparing these, and the statement is deallocated only if it
    # still exists.
    statement = sql.Identifier(_STATEMENT)
    try:
        with conn.transaction():
            prepare = sql.SQL("PREPARE {} AS ").format(statement).as_bytes(conn)
            conn.execute(prepare + query.positional_sql.encode(), prepare=False)
        try:
            with conn.transaction():
                types = _parameter_types(conn) or []
                arguments = [
                    _argument(name, type_name, query, account_id, fill)
                    for name, type_name in zip(query.params, types, strict=True)
                ]
                execute = sql.SQL("EXPLAIN (COSTS OFF) EXECUTE {}").format(statement)
                if arguments:
                    execute = sql.SQL("{} ({})").format(execute, sql.SQL(", ").join(arguments))
                rows = conn.execute(execute, prepare=False).fetchall()
                plan = "\n".join(str(line) for (line,) in rows)
        finally:
            if _parameter_types(conn) is not None:
                conn.execute(sql.SQL("DEALLOCATE {}").format(statement), prepare=False)
    except psycopg.Error as exc:
        return probe(error=str(exc).strip())
    return probe((int(n) for n in _TASK_COUNT.findall(plan)), plan=plan)


def probe_queries(
    conn: psycopg.Connection[Any], *, account_id: int = 1, fill: Fill = "null"
) -> dict[str, QueryProbe]:
    """EXPLAIN every preparable named query on the coordinator ``conn`` (see the module doc).

    ``account_id`` is the tenant key's value (the account need not exist:
    routing depends on its hash alone). ``conn`` must be idle; everything runs
    in a transaction that is rolled back. COPY and the utility statements
    (``CREATE TEMP TABLE``, ``DROP TABLE``) are left out.
    """
    queries = named_queries()
    by_name = {query.name: query for query in queries}
    probes: dict[str, QueryProbe] = {}
    with conn.transaction(force_rollback=True):
        for creator in _STAGING_CREATORS:
            conn.execute(by_name[creator].sql, prepare=False)
        for query in queries:
            if _preparable(query):
                probes[query.name] = _explain(conn, query, account_id, fill)
    return probes


def router_task_counts(
    conn: psycopg.Connection[Any], *, account_id: int = 1, fill: Fill = "null"
) -> dict[str, list[int]]:
    """The ``Task Count``s of every named query's plan, by name (see ``probe_queries``).

    A query that Citus refuses is left out: ``probe_queries`` has its error.
    """
    return {
        name: list(probe.task_counts)
        for name, probe in probe_queries(conn, account_id=account_id, fill=fill).items()
        if probe.error is None
    }


def assert_every_tenant_query_is_routed(conn: psycopg.Connection[Any]) -> None:
    """Every named query explains on Citus, and every tenant query runs on one shard at most.

    Both passes (NULL and sample values for the other parameters). A tenant
    query is one whose parameters carry the tenant key (``tenant_params``);
    those in ``MULTI_SHARD_ON_PURPOSE`` may run on several shards.
    """
    failures: list[str] = []
    seen: set[str] = set()
    for fill in ("null", "sample"):
        for name, probe in probe_queries(conn, fill=fill).items():
            seen.add(name)
            if probe.error is not None:
                failures.append(f"{name} ({fill}): {probe.error.splitlines()[0]}")
            elif probe.tenant and not probe.routed and name not in MULTI_SHARD_ON_PURPOSE:
                failures.append(f"{name} ({fill}): Task Counts {list(probe.task_counts)}")
    assert not failures, "not routed to one shard, or refused:\n" + "\n".join(failures)
    stale = sorted(set(MULTI_SHARD_ON_PURPOSE) - seen)
    assert not stale, f"MULTI_SHARD_ON_PURPOSE names queries that do not exist: {stale}"
