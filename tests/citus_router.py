"""Which named queries Citus routes to one shard, read from EXPLAIN on a coordinator.

A helper for the Citus suite, not a test file. ``probe_queries`` prepares every
named query of ``datalayer.repositories`` on a Citus coordinator and explains
its execution (``EXPLAIN (COSTS OFF) EXECUTE``) with the account's id for the
tenant key (``account_id``, and ``id`` in ``sql/accounts.sql``) and, for every
other parameter, either NULL or a sample value of its type (two passes: a NULL
can fold a condition away and a value can keep it, so each pass may prune
shards the other does not). The ``Task Count`` lines of the plan say how many
shards each Citus scan runs on: 1 is routed to one shard, 0 is pruned to none,
the shard count is all of them. A plan with none runs on the coordinator (the
local tables), or is an INSERT ... SELECT from parameters that the coordinator
sends to the shards of its rows (the account's only, for a tenant statement).
``assert_every_tenant_query_is_routed`` is the test body: every tenant-scoped
query routed, except ``MULTI_SHARD_ON_PURPOSE``.

Each query is explained in a transaction of its own, rolled back (Citus runs
the subplans of a plan, the writes of data-modifying CTEs among them, while
explaining it). The staging queries need their temporary table: the probe runs
the query that creates it (``create_usage_staging``,
``create_analytics_staging``) first, in that transaction, then *executes* the
query on the empty table instead of explaining it: Citus explains the
coordinator's part of a plan over a connection of its own, which cannot see
the transaction's temporary table (while executing it reads it in place).
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
# task count above 1; every other tenant query must not. The global ones are
# listed too, so that this is the one list of what is multi-shard and why.
# (finalize_invoice is not here: its invoice update is routed; the counter it
# bumps is a reference table, which every write updates on every node.)
MULTI_SHARD_ON_PURPOSE: dict[str, str] = {
    "get_accounts_by_ids": "batch read of many accounts, one id list across shards",
    "find_known_accounts": "batch validation of an ingestion batch's accounts, across shards",
    "list_accounts": "a keyset page of every account, across shards",
    "queued_usage_accounts": "lists the accounts with queued usage hours, across shards",
    "queued_analytics_accounts": "lists the accounts with queued analytics days, across shards",
    "maintenance_lags": "the operator's view of every queue and backlog, across shards",
    "get_top_accounts": "a cross-tenant report: the largest accounts of a meter",
    "get_monthly_revenue": "a cross-tenant report: revenue of every account by month",
    "list_ended_chain_periods": "the billing run's scan for ended chains of every account",
    "list_plan_subscriber_cache_keys": "every account subscribed to a plan (cache invalidation)",
    # The work queues' candidate reads (datalayer/_fanout.py): lock-free reads across
    # accounts, each candidate then claimed by a statement pinned to its account.
    "list_claimable_files": "the file queue's next candidates, read without locks",
    "list_due_subscriptions": "the renewals due, read without locks",
    "list_closed_periods": "the billing run's closed periods, read without locks",
    "list_drafts": "the billing run's drafts to finalise, read without locks",
    "list_expired_reservation_accounts": "the accounts with expired quota reservations",
    "list_cache_invalidations": "the cache journal's entries of every account since a cursor",
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
_CREATE_TEMP = re.compile(r"CREATE\s+TEMP(?:ORARY)?\s+TABLE\s+(\w+)", re.IGNORECASE)
_TASK_COUNT = re.compile(r"Task Count: (\d+)")
_STATEMENT = "datalayer_router_probe"


@dataclass(frozen=True, slots=True)
class QueryProbe:
    """What EXPLAIN said about one named query on the coordinator.

    ``task_counts`` holds the ``Task Count`` of every Citus scan of the plan
    (empty when the plan has none: it runs on the coordinator alone, or pulls
    rows to it); ``error`` is Citus's (or PostgreSQL's) refusal, if any.
    ``explained`` is false for a staging query, which was executed instead
    (no plan, no task counts).
    """

    query: Query
    fill: Fill
    task_counts: tuple[int, ...]
    error: str | None
    plan: str
    explained: bool = True

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
    conn: psycopg.Connection[Any],
    query: Query,
    account_id: int,
    fill: Fill,
    setup: Iterable[Query] = (),
    *,
    explain: bool = True,
) -> QueryProbe:
    """Prepare ``query`` and explain (or execute) it in a transaction of its own, rolled back.

    A transaction per query: Citus runs a plan's subplans (the writes of
    data-modifying CTEs) while explaining it, and an error there can leave the
    whole distributed transaction unusable, not only a savepoint. ``setup``
    runs first in the same transaction (the staging table a query reads);
    with ``explain`` false the query is executed instead of explained.
    """
    # psycopg deallocates every prepared statement after a rollback when it has
    # prepared some of its own: prepare=False keeps it from preparing these, and
    # the probe's statement is deallocated only if it still exists.
    statement = sql.Identifier(_STATEMENT)
    try:
        with conn.transaction(force_rollback=True):
            for statement_before in setup:
                conn.execute(statement_before.sql, prepare=False)
            prepare = sql.SQL("PREPARE {} AS ").format(statement).as_bytes(conn)
            conn.execute(prepare + query.positional_sql.encode(), prepare=False)
            types = _parameter_types(conn) or []
            arguments = [
                _argument(name, type_name, query, account_id, fill)
                for name, type_name in zip(query.params, types, strict=True)
            ]
            execute = sql.SQL("EXECUTE {}").format(statement)
            if arguments:
                execute = sql.SQL("{} ({})").format(execute, sql.SQL(", ").join(arguments))
            if not explain:
                conn.execute(execute, prepare=False)
                return QueryProbe(query, fill, (), None, "", explained=False)
            explained = sql.SQL("EXPLAIN (COSTS OFF) {}").format(execute)
            rows = conn.execute(explained, prepare=False).fetchall()
    except psycopg.Error as exc:
        return QueryProbe(query, fill, (), str(exc).strip(), "", explained=explain)
    finally:
        with conn.transaction():
            if _parameter_types(conn) is not None:
                conn.execute(sql.SQL("DEALLOCATE {}").format(statement), prepare=False)
    plan = "\n".join(str(line) for (line,) in rows)
    counts = tuple(int(n) for n in _TASK_COUNT.findall(plan))
    return QueryProbe(query, fill, counts, None, plan)


def _staging_tables(queries: Iterable[Query]) -> dict[str, Query]:
    """The temporary tables the staging queries create, with the query that creates each."""
    tables = {}
    for query in queries:
        match = _CREATE_TEMP.match(query.positional_sql.lstrip())
        if match:
            tables[match.group(1)] = query
    return tables


def probe_queries(
    conn: psycopg.Connection[Any], *, account_id: int = 1, fill: Fill = "null"
) -> dict[str, QueryProbe]:
    """EXPLAIN every preparable named query on the coordinator ``conn`` (see the module doc).

    ``account_id`` is the tenant key's value (the account need not exist:
    routing depends on its hash alone). ``conn`` must be idle (autocommit or
    not); each query is explained in a transaction of its own that is rolled
    back; one that reads a staging table is executed instead, on the empty
    table created first in its transaction. COPY and the utility statements
    (``CREATE TEMP TABLE``, ``DROP TABLE``) are left out.
    """
    queries = named_queries()
    staging = _staging_tables(queries)
    probes: dict[str, QueryProbe] = {}
    for query in queries:
        if _preparable(query):
            setup = [
                creator
                for table, creator in staging.items()
                if re.search(rf"\b{table}\b", query.positional_sql)
            ]
            # A staging query is executed: see the module doc.
            probes[query.name] = _explain(conn, query, account_id, fill, setup, explain=not setup)
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
