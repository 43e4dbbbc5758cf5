"""Backups: pg_dump with a manifest, verified restores, corrupted dumps refused."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import pg_url
from psycopg import sql

from datalayer import AlreadyExists, DataLayerError
from datalayer._ops import backup as _backup
from datalayer._ops.backup import backup, restore_backup, table_checksums, verify_backup


@pytest.fixture
def seeded_url(fresh_admin_url: str) -> str:
    """A fresh database with rows in a few tables, partitioned ones included."""
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum')"
        )
        conn.execute(
            """
            INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,
                                      idempotency_key, properties)
            SELECT g % 5 + 1, 'api_calls', g / 3.0, now() - g * interval '1 minute',
                   'k' || g, jsonb_build_object('n', g)
            FROM generate_series(1, 500) g
            """
        )
    return fresh_admin_url


@pytest.fixture
def new_dbname() -> Iterator[str]:
    """A database name nobody uses yet; dropped after the test if something created it."""
    name = f"dl_restored_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url("postgres"), autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def checksums(url: str) -> dict[str, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        return table_checksums(conn)


def database_exists(name: str) -> bool:
    with psycopg.connect(pg_url("postgres")) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def spy_databases(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the scratch/staging databases the backup module creates from now on."""
    created: list[str] = []
    real = _backup._restore_verified

    def spy(dump_path: Path, manifest: dict[str, Any], server_url: str, dbname: str) -> None:
        created.append(dbname)
        real(dump_path, manifest, server_url, dbname)

    monkeypatch.setattr(_backup, "_restore_verified", spy)
    return created


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def test_backup_then_restore_into_a_new_database_gives_identical_tables(
    seeded_url: str, tmp_path: Path, new_dbname: str
) -> None:
    path = backup(seeded_url, tmp_path)

    manifest = json.loads(path.with_suffix(".manifest.json").read_text())
    assert path.name.endswith(".dump")
    assert manifest["tables"]["usage_events"]["rows"] == 500
    assert manifest["tables"]["meters"]["rows"] == 1
    assert not any("yoyo" in t for t in manifest["tables"])
    assert manifest["schema_version"].startswith("00")
    assert manifest["size_bytes"] == path.stat().st_size

    restore_backup(path, into=pg_url(new_dbname))

    restored = checksums(pg_url(new_dbname))
    assert restored == checksums(seeded_url)
    assert restored == manifest["tables"]


def test_verify_backup_restores_into_a_scratch_database_and_drops_it(
    seeded_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = backup(seeded_url, tmp_path)
    created = spy_databases(monkeypatch)

    verify_backup(path, scratch_url_base=pg_url("postgres"))

    assert len(created) == 1
    assert not database_exists(created[0])


def test_a_backup_whose_rows_differ_from_its_manifest_fails_verification(
    seeded_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = backup(seeded_url, tmp_path)
    mpath = path.with_suffix(".manifest.json")
    manifest = json.loads(mpath.read_text())
    manifest["tables"]["usage_events"]["rows"] = 499
    mpath.write_text(json.dumps(manifest))

    created = spy_databases(monkeypatch)

    with pytest.raises(DataLayerError, match="tables differing: usage_events"):
        verify_backup(path, scratch_url_base=pg_url("postgres"))
    assert not database_exists(created[0])  # the scratch database is dropped on failure too


def test_a_corrupted_dump_is_refused(
    seeded_url: str, tmp_path: Path, new_dbname: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = backup(seeded_url, tmp_path)
    flip_bytes(path)
    created = spy_databases(monkeypatch)

    with pytest.raises(DataLayerError, match=r"\.dump is corrupted"):
        verify_backup(path, scratch_url_base=pg_url("postgres"))
    with pytest.raises(DataLayerError, match=r"\.dump is corrupted"):
        restore_backup(path, into=pg_url(new_dbname))

    assert created == []  # refused before any database was made
    assert not database_exists(new_dbname)


def test_restoring_into_an_existing_database_needs_overwrite(
    seeded_url: str, tmp_path: Path, fresh_dbname: str, new_dbname: str
) -> None:
    path = backup(seeded_url, tmp_path)
    restore_backup(path, into=pg_url(new_dbname))
    with psycopg.connect(pg_url(new_dbname), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('extra', 'Extra', 'x', 'sum')"
        )

    with pytest.raises(AlreadyExists, match=new_dbname):
        restore_backup(path, into=pg_url(new_dbname))
    assert checksums(pg_url(new_dbname))["meters"]["rows"] == 2  # untouched

    restore_backup(path, into=pg_url(new_dbname), overwrite=True)
    assert checksums(pg_url(new_dbname)) == checksums(seeded_url)


def test_a_pg_dump_older_than_the_server_is_refused_naming_both_versions(
    fresh_admin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "pg_dump"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.22'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")

    with pytest.raises(DataLayerError, match=r"pg_dump 11 cannot dump a PostgreSQL 1[5-9]"):
        backup(fresh_admin_url, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.dump"))


def test_the_password_goes_to_the_environment_never_the_command_line() -> None:
    from datalayer._ops.backup import _split

    conninfo, env = _split("postgresql://alice:s3cret@db.example:5432/app")

    assert "s3cret" not in conninfo
    assert env["PGPASSWORD"] == "s3cret"
