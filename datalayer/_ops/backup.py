"""Backups with ``pg_dump -Fc`` and a manifest of row counts and checksums; verified restores.

The manifest beside ``<db>-<UTC time>.dump`` records, for every public table
but yoyo's, the row count and the md5 of its rows in order, all read in the
snapshot pg_dump dumps. A restore is verified against it. Passwords travel in
``PGPASSWORD``, never on a command line or in a message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .._conninfo import conninfo_params, with_dbname
from ..errors import AlreadyExists, DataLayerError, map_error
from .migrate import schema_version

__all__ = ["backup", "restore_backup", "verify_backup"]

log = logging.getLogger("datalayer")

_VERSION = re.compile(r"\b(\d+)(?:\.\d+)?")


def _split(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and the environment that carries the password."""
    params = conninfo_params(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    return make_conninfo("", **params), env


def _run(args: list[str], env: dict[str, str], what: str) -> str:
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)  # noqa: S603 - fixed argv, no shell
    except FileNotFoundError as exc:
        raise DataLayerError(f"{args[0]} is not installed or not on PATH") from exc
    if done.returncode != 0:
        raise DataLayerError(f"{what} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def public_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """The tables of ``public`` (partitioned parents, not their partitions), yoyo's excluded."""
    rows = conn.execute(
        """
        SELECT relname FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
          AND NOT relispartition AND relname NOT LIKE '\\_yoyo%' AND relname NOT LIKE 'yoyo%'
        ORDER BY relname
        """
    ).fetchall()
    return [str(r[0]) for r in rows]


def table_checksums(
    conn: psycopg.Connection[Any], *, ignore_columns: frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """Per public table (yoyo's excluded): ``{"rows": count, "md5": md5 of the ordered rows}``.

    Rows are rendered as text in UTC with ISO dates, so two databases holding
    the same rows give the same checksums. Columns named in ``ignore_columns``
    (bookkeeping such as ``refreshed_at``) are left out of the md5.
    """
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("SET DateStyle = 'ISO, YMD'")
    conn.execute("SET extra_float_digits = 1")
    result: dict[str, dict[str, Any]] = {}
    tables = public_tables(conn)
    for position, table in enumerate(tables, start=1):
        log.info("checksumming %s (%d of %d)", table, position, len(tables))
        columns = [
            str(r[0])
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (table,),
            )
            if str(r[0]) not in ignore_columns
        ]
        row = conn.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                " FROM (SELECT {} FROM {}) t"
            ).format(sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table))
        ).fetchone()
        assert row is not None
        result[table] = {"rows": int(row[0]), "md5": str(row[1])}
    return result


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_pg_dump_version(server_version: int, env: dict[str, str]) -> None:
    text = _run(["pg_dump", "--version"], env, "pg_dump --version")
    match = _VERSION.search(text)
    client = int(match.group(1)) if match else 0
    server = server_version // 10000
    if client < server:
        raise DataLayerError(
            f"pg_dump {client} cannot dump a PostgreSQL {server} server: "
            f"install pg_dump {server} or newer (found: {text.strip()})"
        )


def manifest_path(dump_path: Path) -> Path:
    """``x.dump`` → ``x.manifest.json``."""
    return dump_path.with_suffix(".manifest.json")


def backup(database_url: str, out_dir: Path) -> Path:
    """Dump ``database_url`` into ``out_dir/<db>-<UTC time>.dump`` with its manifest; return it.

    Counts and checksums are read in the very snapshot pg_dump dumps. Raises
    ``DataLayerError`` when pg_dump is older than the server or fails.
    """
    conninfo, env = _split(database_url)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with psycopg.connect(database_url) as conn:
            _check_pg_dump_version(conn.info.server_version, env)
            dbname = conn.info.dbname
            stamp = datetime.now(UTC)
            path = out_dir / f"{dbname}-{stamp:%Y%m%dT%H%M%S%fZ}.dump"
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            tables = table_checksums(conn)
            version = schema_version(conn)
            server = conn.execute("SHOW server_version").fetchone()
            # The exporting transaction stays open while pg_dump reads its snapshot.
            log.info("running pg_dump -Fc into %s", path)
            _run(
                ["pg_dump", "-Fc", f"--snapshot={row[0]}", "-f", str(path), "--dbname", conninfo],
                env,
                "pg_dump",
            )
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    manifest = {
        "created_at": stamp.isoformat(),
        "database": dbname,
        "server_version": server[0] if server else None,
        "schema_version": version,
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "tables": tables,
    }
    manifest_path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("backed up %s to %s (%d bytes)", dbname, path, manifest["size_bytes"])
    return path


def _load_manifest(dump_path: Path) -> dict[str, Any]:
    """The manifest of ``dump_path``, after checking the file's sha256 against it."""
    mpath = manifest_path(dump_path)
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as exc:
        raise DataLayerError(f"cannot read backup manifest {mpath}: {exc}") from exc
    if not dump_path.exists():
        raise DataLayerError(f"backup {dump_path} does not exist")
    if _sha256(dump_path) != manifest.get("sha256"):
        raise DataLayerError(f"backup {dump_path} is corrupted: its sha256 differs from {mpath}")
    return dict(manifest)


def _database_exists(admin: psycopg.Connection[Any], name: str) -> bool:
    return (
        admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        is not None
    )


def _restore_verified(
    dump_path: Path, manifest: dict[str, Any], server_url: str, dbname: str
) -> None:
    """Create ``dbname``, pg_restore into it and compare with ``manifest``; drop it on failure."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname))
        )
    url = with_dbname(server_url, dbname)
    try:
        conninfo, env = _split(url)
        log.info("running pg_restore of %s into %s", dump_path, dbname)
        _run(
            # Owners and grants name roles the target server may not have: the
            # restored objects belong to the restoring role, and `datalayer
            # restore` then applies the role policy (_ops/roles.py) afresh.
            [
                "pg_restore",
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--dbname",
                conninfo,
                str(dump_path),
            ],
            env,
            f"pg_restore of {dump_path}",
        )
        with psycopg.connect(url) as conn:
            found = table_checksums(conn)
        expected = manifest.get("tables", {})
        if found != expected:
            diff = sorted(t for t in set(found) | set(expected) if found.get(t) != expected.get(t))
            raise DataLayerError(
                f"restore of {dump_path} does not match its manifest; tables differing: "
                + ", ".join(diff)
            )
    except BaseException:
        _drop_database(server_url, dbname)
        raise


def _drop_database(server_url: str, dbname: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )


def verify_backup(dump_path: Path, *, scratch_url_base: str) -> None:
    """Restore ``dump_path`` into a scratch database and compare it with the manifest.

    ``scratch_url_base`` connects to the server (any existing database, e.g.
    ``postgres``); the scratch database is dropped afterwards. Raises
    ``DataLayerError`` on a file whose sha256 differs, a failed restore, or any
    table whose count or checksum differs.
    """
    dump_path = Path(dump_path)
    manifest = _load_manifest(dump_path)
    scratch = f"dl_verify_{uuid.uuid4().hex[:16]}"
    try:
        _restore_verified(dump_path, manifest, scratch_url_base, scratch)
        _drop_database(scratch_url_base, scratch)
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    log.info("verified backup %s", dump_path)


def restore_backup(dump_path: Path, *, into: str, overwrite: bool = False) -> None:
    """Restore ``dump_path`` into the database that ``into`` (a URL or conninfo) names.

    The dump is restored into a temporary database and verified against its
    manifest; only then is it renamed to the target, so a bad dump never
    replaces anything. Owners and grants are not restored (the objects belong to
    the restoring role): ``datalayer restore`` applies the role policy after
    this, as ``migrate`` does. Raises ``AlreadyExists`` if the target exists and
    ``overwrite`` is false (with ``overwrite`` it is dropped, connections
    included), ``DataLayerError`` if the dump is corrupted or does not verify.
    """
    dump_path = Path(dump_path)
    target = conninfo_params(into).get("dbname", "")
    if not target:
        raise DataLayerError("restore_backup: `into` must name a database")
    server_url = with_dbname(into, "postgres")
    manifest = _load_manifest(dump_path)
    try:
        with psycopg.connect(server_url, autocommit=True) as admin:
            if _database_exists(admin, target) and not overwrite:
                raise AlreadyExists(
                    f"database {target} already exists; pass overwrite to replace it"
                )
        staging = f"dl_restore_{uuid.uuid4().hex[:16]}"
        _restore_verified(dump_path, manifest, server_url, staging)
        with psycopg.connect(server_url, autocommit=True) as admin:
            if overwrite:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(target)
                    )
                )
            admin.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(staging), sql.Identifier(target)
                )
            )
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    log.info("restored %s into database %s", dump_path, target)
