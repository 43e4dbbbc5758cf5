"""check-sql prepares every named query against the migrated schema and checks its model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import pg_url
from pydantic import BaseModel

from datalayer._loader import parse_sql
from datalayer._ops.checksql import check_queries
from datalayer._repository import Repository, bind_repositories, many, one, scalar
from datalayer._resources import sql_dir
from datalayer.repositories import REPOSITORIES


class Row(BaseModel):
    id: int
    email: str
    deleted_at: datetime | None


class NarrowRow(BaseModel):
    id: int
    email: int  # wrong: email is text
    deleted_at: datetime  # wrong: the column is nullable


def _problems(conn: psycopg.Connection[Any], text: str, decl: Any) -> list[str]:
    class Checked(Repository):
        aggregate = "probe"
        _q = decl

    bind_repositories({q.name: q for q in parse_sql(text, "probe.sql")}, [Checked])
    return [str(p) for p in check_queries(conn, [Checked])]


def test_the_shipped_queries_all_match_the_schema_and_models(conn: psycopg.Connection[Any]) -> None:
    assert check_queries(conn, REPOSITORIES) == []


def test_a_misspelt_column_is_reported_with_file_line_and_query(
    conn: psycopg.Connection[Any],
) -> None:
    text = "-- name: get_probe :one\nSELECT id, emial AS email, deleted_at\nFROM users;\n"
    problems = _problems(conn, text, one("get_probe", Row))
    assert len(problems) == 1
    assert problems[0].startswith("probe.sql:1: get_probe:")
    assert 'column "emial" does not exist' in problems[0]


def test_a_missing_table_and_a_syntax_error_are_reported(conn: psycopg.Connection[Any]) -> None:
    missing = _problems(
        conn, "-- name: get_probe :one\nSELECT id FROM nowhere\n", one("get_probe", Row)
    )
    assert 'relation "nowhere" does not exist' in missing[0]
    syntax = _problems(
        conn, "-- name: get_probe :one\nSELEC id FROM users\n", one("get_probe", Row)
    )
    assert "syntax error" in syntax[0]


def test_result_columns_must_match_the_model_fields(conn: psycopg.Connection[Any]) -> None:
    text = "-- name: get_probe :one\nSELECT id, email, role FROM users WHERE id = :id\n"
    problems = _problems(conn, text, one("get_probe", Row))
    assert len(problems) == 2
    assert "Row fields missing from the result: deleted_at" in problems[0]
    assert "result columns with no field in Row: role" in problems[1]


def test_column_types_and_nullability_must_fit_the_model(conn: psycopg.Connection[Any]) -> None:
    text = "-- name: get_probe :many\nSELECT id, email, deleted_at FROM users\n"
    problems = _problems(conn, text, many("get_probe", NarrowRow))
    assert any("column email is str in PostgreSQL but int in the model" in p for p in problems)
    assert any(
        "column deleted_at is nullable but NarrowRow.deleted_at is not" in p for p in problems
    )


def test_a_scalar_query_must_return_one_column(conn: psycopg.Connection[Any]) -> None:
    text = "-- name: get_probe :scalar\nSELECT id, email FROM users\n"
    (problem,) = _problems(conn, text, scalar("get_probe", int))
    assert ":scalar returns 2 columns" in problem


def test_a_parameter_of_unknown_type_is_reported(conn: psycopg.Connection[Any]) -> None:
    text = "-- name: get_probe :scalar\nSELECT :x IS NULL\n"
    (problem,) = _problems(conn, text, scalar("get_probe", bool))
    assert "could not determine data type of parameter $1" in problem


@pytest.mark.parametrize("broken", [True, False])
def test_the_cli_exits_non_zero_naming_file_and_query_for_a_misspelt_column(
    shared_dbname: str, tmp_path: Path, broken: bool
) -> None:
    shutil.copytree(sql_dir(), tmp_path / "sql")
    users = tmp_path / "sql" / "users.sql"
    if broken:
        users.write_text(
            users.read_text().replace(
                "WHERE account_id = :account_id AND id = :id;",
                "WHERE account_id = :account_id AND idd = :id;",
            )
        )
    result = subprocess.run(
        [sys.executable, "-m", "datalayer._cli", "check-sql", "--sql-dir", str(tmp_path / "sql")],
        env={**os.environ, "DATABASE_URL": pg_url(shared_dbname)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if broken:
        assert result.returncode == 1
        assert f"{users}:" in result.stderr
        assert "get_user" in result.stderr
        assert 'column "idd" does not exist' in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert "queries match the schema" in result.stdout
