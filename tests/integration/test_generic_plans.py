"""Prepared statements keep their indexes when PostgreSQL switches to a generic plan.

psycopg prepares a query after five runs (prepare_threshold) and PostgreSQL may
then plan it once without parameter values. A filter such as
``:p IS NULL OR col = :p`` is decided per call in a custom plan, but a generic
plan cannot use it as an index condition and reads every row of the account
instead. Each test PREPAREs a repository's query, forces the generic plan and
asserts that an index range is bounded by the parameter.

One fresh clone per module, seeded small (as in test_plans_explain.py). At this
size files and api_keys hold a page or two and the planner rightly prefers a
Seq Scan, so the plans are taken with ``enable_seqscan = off``: the question is
whether an index *can* serve the parameter, which is what matters at production
size (an account with 300k files counted one status in 35 ms instead of 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
import psycopg.sql
import pytest
from conftest import _clone, pg_url

from datalayer._loader import Query
from datalayer._ops.seed import seed_database
from datalayer.repositories import ApiKeyRepository, FileRepository


@pytest.fixture(scope="module")
def seeded(template_dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """A fresh clone seeded small, for this module only (its plans must not see other tests)."""
    janitor = _clone(template_dbname)
    with (
        janitor,
        psycopg.connect(pg_url(janitor.dbname), autocommit=True, prepare_threshold=None) as conn,
    ):
        conn.execute("SET timezone = 'UTC'")
        # Files and keys are what these tests read: few events are enough.
        seed_database(conn, accounts=60, events=2_000, analytics=500, seed=3, progress=None)
        yield conn


def _query(query: Query | None) -> Query:
    assert query is not None
    return query


def _prepare(conn: psycopg.Connection[Any], query: Query, types: Mapping[str, str]) -> None:
    conn.execute(
        f"PREPARE generic_probe ({', '.join(types[p] for p in query.params)})"
        f" AS {query.positional_sql}"
    )


def _args(query: Query, params: Mapping[str, Any]) -> psycopg.sql.Composable:
    return psycopg.sql.SQL(", ").join(psycopg.sql.Literal(params[p]) for p in query.params)


def generic_plan(
    conn: psycopg.Connection[Any],
    query: Query,
    types: Mapping[str, str],
    params: Mapping[str, Any],
) -> Mapping[str, Any]:
    """The generic plan of ``query`` prepared with ``types``, as a JSON tree."""
    assert params.keys() == query.param_set, "parameters must match the query"
    try:
        _prepare(conn, query, types)
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            conn.execute("SET LOCAL enable_seqscan = off")
            row = conn.execute(
                psycopg.sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE generic_probe ({})").format(
                    _args(query, params)
                )
            ).fetchone()
    finally:
        conn.execute("DEALLOCATE generic_probe")
    assert row is not None
    return dict((row[0] if not isinstance(row[0], str) else json.loads(row[0]))[0]["Plan"])


def run_generic(
    conn: psycopg.Connection[Any],
    query: Query,
    types: Mapping[str, str],
    params: Mapping[str, Any],
) -> list[tuple[Any, ...]]:
    """The rows of ``query`` run as a prepared statement under its generic plan."""
    try:
        _prepare(conn, query, types)
        with conn.transaction(force_rollback=True):
            conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            cur = conn.execute(
                psycopg.sql.SQL("EXECUTE generic_probe ({})").format(_args(query, params))
            )
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.execute("DEALLOCATE generic_probe")


def index_conditions(node: Mapping[str, Any], relation: str) -> list[str]:
    """The index conditions of every index scan of ``relation`` in the plan.

    A Bitmap Index Scan names only its index, so ``relation``'s indexes are
    recognised by name (``files_...`` for files).
    """
    index = str(node.get("Index Name", ""))
    ours = node.get("Relation Name") == relation or index.startswith(f"{relation}_")
    found = [node["Index Cond"]] if ours and "Index Cond" in node else []
    for child in node.get("Plans", ()):
        found += index_conditions(child, relation)
    return found


def one_row(conn: psycopg.Connection[Any], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql.encode()).fetchone()
    assert row is not None, sql
    return tuple(row)


# -- files ----------------------------------------------------------------------------------

COUNT_FILES_TYPES = {"account_id": "bigint", "status": "text"}


@pytest.fixture(scope="module")
def busy_files_account(seeded: psycopg.Connection[Any]) -> int:
    (account_id,) = one_row(
        seeded, "SELECT account_id FROM files GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )
    return int(account_id)


def test_count_files_of_one_status_probes_the_status_even_as_a_generic_prepared_plan(
    seeded: psycopg.Connection[Any], busy_files_account: int
) -> None:
    query = _query(FileRepository._count.query)
    params = {"account_id": busy_files_account, "status": "failed"}
    tree = generic_plan(seeded, query, COUNT_FILES_TYPES, params)
    conditions = index_conditions(tree, "files")
    assert conditions, "files is not read through an index"
    status_param = f"status = ${query.params.index('status') + 1}"
    assert any(status_param in c for c in conditions), conditions


@pytest.mark.parametrize("status", [None, "ready", "failed", "deleted", "unknown"])
def test_count_files_as_a_generic_prepared_plan_counts_what_a_plain_count_does(
    seeded: psycopg.Connection[Any], busy_files_account: int, status: str | None
) -> None:
    query = _query(FileRepository._count.query)
    params = {"account_id": busy_files_account, "status": status}
    (expected,) = one_row(
        seeded,
        f"SELECT count(*) FROM files WHERE account_id = {busy_files_account} AND "
        + ("status <> 'deleted'" if status is None else f"status = '{status}'"),
    )
    assert run_generic(seeded, query, COUNT_FILES_TYPES, params) == [(expected,)]


# -- api keys -------------------------------------------------------------------------------

KEY_HASHES_TYPES = {"account_id": "bigint", "key_id": "bigint"}


@pytest.fixture(scope="module")
def api_key(seeded: psycopg.Connection[Any]) -> tuple[int, int]:
    account_id, key_id = one_row(
        seeded, "SELECT account_id, id FROM api_keys ORDER BY 1, 2 LIMIT 1"
    )
    return int(account_id), int(key_id)


def test_list_api_key_hashes_of_one_key_probes_its_id_even_as_a_generic_prepared_plan(
    seeded: psycopg.Connection[Any], api_key: tuple[int, int]
) -> None:
    query = _query(ApiKeyRepository._hashes.query)
    account_id, key_id = api_key
    tree = generic_plan(
        seeded, query, KEY_HASHES_TYPES, {"account_id": account_id, "key_id": key_id}
    )
    conditions = index_conditions(tree, "api_keys")
    assert conditions, "api_keys is not read through an index"
    id_param = f"id = ${query.params.index('key_id') + 1}"
    assert any(id_param in c for c in conditions), conditions


@pytest.mark.parametrize("which", ["all", "one"])
def test_list_api_key_hashes_as_a_generic_prepared_plan_returns_the_account_keys(
    seeded: psycopg.Connection[Any], api_key: tuple[int, int], which: str
) -> None:
    query = _query(ApiKeyRepository._hashes.query)
    account_id, key_id = api_key
    params = {"account_id": account_id, "key_id": key_id if which == "one" else None}
    where = f"account_id = {account_id}" + (f" AND id = {key_id}" if which == "one" else "")
    expected = seeded.execute(f"SELECT secret_hash FROM api_keys WHERE {where}".encode()).fetchall()
    rows = run_generic(seeded, query, KEY_HASHES_TYPES, params)
    assert expected
    assert sorted(rows) == sorted(tuple(r) for r in expected)
