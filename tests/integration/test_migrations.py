"""yoyo migrations through datalayer: create, apply, roll back, race."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import pg_url
from overlap import wait_until_queried
from psycopg import sql

from datalayer import Settings
from datalayer._ops.migrate import _MIGRATE_LOCK_KEY, migrate, rollback, status
from datalayer._resources import migrations_dir


@pytest.fixture
def new_dbname() -> Iterator[str]:
    """A database name that does not exist yet; dropped after the test."""
    name = f"dl_new_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def _schema_dump(dbname: str) -> str:
    out = subprocess.run(
        ["pg_dump", "--schema-only", "--no-owner", "-d", pg_url(dbname)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # Comments and pg_dump's per-run \restrict key differ between two dumps of one schema.
    return "\n".join(
        line
        for line in out.splitlines()
        if not line.startswith(("--", "\\restrict", "\\unrestrict"))
    )


def test_migrate_creates_a_missing_database_and_applies_everything(new_dbname: str) -> None:
    settings = Settings(database_url=pg_url(new_dbname))
    applied = migrate(settings)
    expected = sorted(p.stem for p in migrations_dir().glob("*.sql") if ".rollback" not in p.name)
    assert applied == expected
    assert {"accounts", "users"} <= _tables(pg_url(new_dbname))
    assert migrate(settings) == []  # idempotent
    assert all(s.applied for s in status(settings))


def test_rollback_all_then_migrate_gives_an_identical_schema(new_dbname: str) -> None:
    settings = Settings(database_url=pg_url(new_dbname))
    migrate(settings)
    before = _schema_dump(new_dbname)
    rolled = rollback(settings, count=None)
    assert rolled  # newest first
    assert not ({"accounts", "users"} & _tables(pg_url(new_dbname)))
    assert not any(s.applied for s in status(settings))
    migrate(settings)
    assert _schema_dump(new_dbname) == before


def test_two_processes_migrating_at_once_both_succeed_and_apply_once(new_dbname: str) -> None:
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(new_dbname)))
    env = {**os.environ, "DATABASE_URL": pg_url(new_dbname)}
    cmd = [sys.executable, "-m", "datalayer._cli", "migrate"]
    with psycopg.connect(pg_url(new_dbname), autocommit=True) as holder:
        # Hold the migration lock until both processes are seen asking for it: they are
        # then contending at the same time, and one must wait for the other's migrations.
        holder.execute("SELECT pg_advisory_lock(%s)", [_MIGRATE_LOCK_KEY])
        procs = [
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        try:
            with psycopg.connect(pg_url("postgres"), autocommit=True) as watcher:
                asking = wait_until_queried(
                    watcher,
                    new_dbname,
                    "pg_try_advisory_lock",
                    2,
                    exclude=holder.info.backend_pid,
                )
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", [_MIGRATE_LOCK_KEY])
    outputs = [p.communicate(timeout=60) for p in procs]
    assert len(set(asking)) == 2
    assert [p.returncode for p in procs] == [0, 0], outputs
    stdout = "".join(o[0] for o in outputs)
    assert stdout.count("applied 0001_accounts_users") == 1
    assert "database is up to date" in stdout
    with psycopg.connect(pg_url(new_dbname)) as conn:
        row = conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()
    assert row is not None
    assert row[0] == len(status(Settings(database_url=pg_url(new_dbname))))


def test_a_failing_migration_is_rolled_back_and_reported(new_dbname: str, tmp_path: Path) -> None:
    for source in migrations_dir().glob("*.sql"):
        (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "9999_broken.sql").write_text(
        "-- depends: 0001_accounts_users\n"
        "CREATE TABLE half_done (id bigint);\n"
        "SELECT nope FROM nowhere;\n"
    )
    (tmp_path / "9999_broken.rollback.sql").write_text("DROP TABLE half_done;\n")
    settings = Settings(database_url=pg_url(new_dbname))
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(settings, directory=tmp_path)
    assert "half_done" not in _tables(pg_url(new_dbname))
    assert [s.id for s in status(settings, directory=tmp_path) if not s.applied] == ["9999_broken"]
