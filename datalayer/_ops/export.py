"""Per-account export (GDPR-style): every row of one tenant, in one archive with a manifest.

The archive is a ``.tar.gz`` holding one ``<table>.csv`` per table (CSV with a
header, rows in primary-key order) and ``manifest.json`` (account, time,
schema version, and per table the row count and the SHA-256 of its CSV).
Tables are found in the catalog, so a table added by a later migration is
exported without a change here: every table with an ``account_id`` column,
plus the ``accounts`` row itself. Everything is read in one repeatable-read
snapshot, so the files agree with each other.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..errors import DataLayerError, NotFound
from .migrate import schema_version

__all__ = ["ExportResult", "export_account", "read_export_manifest"]


@dataclass(frozen=True)
class ExportResult:
    """Where the archive went and how many rows of each table it holds."""

    path: Path
    rows: dict[str, int]


def _tenant_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, list[str]]]:
    """Each non-partition table of ``public`` with an ``account_id`` column, and its PK columns."""
    rows = conn.execute(
        """
        SELECT c.relname,
               array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                     ORDER BY k.n)
        FROM pg_class c
        JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
        WHERE c.relnamespace = 'public'::regnamespace
          AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attname = 'account_id' AND NOT a.attisdropped)
        ORDER BY c.relname
        """
    ).fetchall()
    return [(str(name), list(pk)) for name, pk in rows]


def _copy_csv(conn: psycopg.Connection[Any], query: sql.Composable) -> bytes:
    buffer = io.BytesIO()
    copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT csv, HEADER true)").format(query)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for chunk in copy:
            buffer.write(chunk)
    return buffer.getvalue()


def export_account(database_url: str, account_id: int, out: Path) -> ExportResult:
    """Write every row of ``account_id`` to the ``.tar.gz`` file ``out``.

    Raises ``NotFound`` when the account does not exist (deleted accounts are
    exported too), ``DataLayerError`` when ``out`` exists already.
    """
    if out.exists():
        raise DataLayerError(f"{out} exists; choose another file")
    files: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    # One transaction, nothing prepared: safe through a transaction pooler too.
    with psycopg.connect(database_url, prepare_threshold=None) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        found = conn.execute("SELECT 1 FROM accounts WHERE id = %s", (account_id,)).fetchone()
        if found is None:
            raise NotFound(f"account {account_id} not found")
        account_id_literal = sql.Literal(account_id)
        queries: list[tuple[str, sql.Composable]] = [
            ("accounts", sql.SQL("SELECT * FROM accounts WHERE id = {}").format(account_id_literal))
        ]
        for table, pk in _tenant_tables(conn):
            queries.append(
                (
                    table,
                    sql.SQL("SELECT * FROM {} WHERE account_id = {} ORDER BY {}").format(
                        sql.Identifier(table),
                        account_id_literal,
                        sql.SQL(", ").join(sql.Identifier(c) for c in pk),
                    ),
                )
            )
        for table, query in queries:
            files[f"{table}.csv"] = _copy_csv(conn, query)
            row = conn.execute(sql.SQL("SELECT count(*) FROM ({}) q").format(query)).fetchone()
            counts[table] = int(row[0]) if row else 0
        version = schema_version(conn)
    manifest = {
        "account_id": account_id,
        "created_at": datetime.now(UTC).isoformat(),
        "schema_version": version,
        "tables": {
            name.removesuffix(".csv"): {
                "rows": counts[name.removesuffix(".csv")],
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            for name, data in files.items()
        },
    }
    files["manifest.json"] = json.dumps(manifest, indent=2).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    partial.rename(out)
    return ExportResult(out, counts)


def read_export_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an export, after checking every file against it.

    Raises ``DataLayerError`` naming the first file whose checksum differs.
    """
    with tarfile.open(path, "r:gz") as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise DataLayerError(f"{path}: no manifest.json")
        manifest: dict[str, Any] = json.loads(member.read())
        for table, meta in manifest["tables"].items():
            data = tar.extractfile(f"{table}.csv")
            if data is None or hashlib.sha256(data.read()).hexdigest() != meta["sha256"]:
                raise DataLayerError(f"{path}: {table}.csv does not match its manifest")
    return manifest
