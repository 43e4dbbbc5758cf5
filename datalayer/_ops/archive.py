"""Archive old monthly partitions to verified gzip files, and restore them.

Detach, COPY to ``<name>.copy.gz`` + ``<name>.manifest.json``, verify, and only then
drop. Rerunnable: a detached, undropped partition is picked up again and a file
that fails verification is rewritten. Rollups are never touched, and neither are
usage cancellations (``usage_cancellations``): they are the audit record of
what was not billed, small, and kept with the rollups they shaped, so the
events of a restored month that were cancelled stay cancelled. (No event of an
archivable month can still be cancelled: archiving stops short of the accepted
window, and so does ``usage.cancel``.)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .._window import oldest_accepted
from ..errors import AlreadyExists, DataLayerError, InvalidInput, map_error
from .migrate import schema_version
from .partitions import (
    PARTITIONED_TABLES,
    add_months,
    inherit_parent_access,
    list_partitions,
    month_start,
)

__all__ = ["ArchiveResult", "archive_partitions", "restore_archive"]

log = logging.getLogger("datalayer")

_NAME = re.compile(r"^(?P<parent>[a-z_]+)_(?P<year>\d{4})_(?P<month>\d{2})$")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """One archived (or, with ``dry_run``, archivable) partition."""

    parent: str
    name: str
    start: datetime
    end: datetime
    rows: int | None  # None in a dry run
    file: Path
    manifest: Path
    dropped: bool


@dataclass(frozen=True, slots=True)
class _Candidate:
    parent: str
    name: str
    start: datetime
    end: datetime
    attached: bool


def _candidates(conn: psycopg.Connection[Any], cutoff: datetime) -> list[_Candidate]:
    """Attached partitions ending at or before ``cutoff``, then detached leftovers."""
    found = [
        _Candidate(p.parent, p.name, p.start, p.end, True)
        for p in list_partitions(conn)
        if p.start is not None and p.end is not None and p.end <= cutoff
    ]
    # A table named like a partition that no longer inherits from its parent:
    # an earlier run detached it and stopped before the drop.
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
          AND NOT c.relispartition
          AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
        ORDER BY c.relname
        """
    ).fetchall()
    for (name,) in rows:
        match = _NAME.match(name)
        if not match or match.group("parent") not in PARTITIONED_TABLES:
            continue
        start = datetime(int(match.group("year")), int(match.group("month")), 1, tzinfo=UTC)
        end = add_months(start, 1)
        if end > cutoff:
            log.warning("detached table %s is inside the retention window; left alone", name)
            continue
        found.append(_Candidate(match.group("parent"), name, start, end, False))
    return found


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _primary_key(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
        ORDER BY array_position(i.indkey::int2[], a.attnum)
        """,
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _detach(conn: psycopg.Connection[Any], cand: _Candidate) -> None:
    """Detach ``cand`` from its parent: CONCURRENTLY in autocommit, plainly otherwise."""
    pending = conn.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass(%s)",
        (cand.name,),
    ).fetchone()
    parent, child = sql.Identifier(cand.parent), sql.Identifier(cand.name)
    if pending is not None and pending[0]:  # an interrupted DETACH … CONCURRENTLY
        conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, child))
    elif conn.autocommit:
        conn.execute(
            sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, child)
        )
    else:
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, child))
    log.info("detached %s from %s", cand.name, cand.parent)


def _write(conn: psycopg.Connection[Any], cand: _Candidate, out_dir: Path) -> dict[str, Any]:
    """COPY the detached table into ``<name>.copy.gz`` and write its manifest."""
    columns = _columns(conn, cand.name)
    order = _primary_key(conn, cand.name) or columns
    query = sql.SQL("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        sql.Identifier(cand.name),
        sql.SQL(", ").join(sql.Identifier(c) for c in order),
    )
    path, tmp = out_dir / f"{cand.name}.copy.gz", out_dir / f"{cand.name}.copy.gz.tmp"
    digest, rows = hashlib.sha256(), 0
    with conn.transaction(), gzip.open(tmp, "wb") as out, conn.cursor().copy(query) as copy:
        for chunk in copy:
            data = bytes(chunk)
            digest.update(data)
            rows += data.count(b"\n")  # text format escapes newlines inside values
            out.write(data)
    _fsync_replace(tmp, path)
    manifest = {
        "table": cand.name,
        "parent": cand.parent,
        "range_start": cand.start.isoformat(),
        "range_end": cand.end.isoformat(),
        "columns": columns,
        "format": "text",
        "file": path.name,
        "rows": rows,
        "sha256": digest.hexdigest(),
        "schema_version": schema_version(conn),
        "created_at": datetime.now(UTC).isoformat(),
    }
    mtmp = out_dir / f"{cand.name}.manifest.json.tmp"
    mtmp.write_text(json.dumps(manifest, indent=2) + "\n")
    _fsync_replace(mtmp, _manifest_path(out_dir, cand.name))
    log.info("wrote %s (%d rows)", path, rows)
    return manifest


def _fsync_replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(final)


def _manifest_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.manifest.json"


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataLayerError(f"cannot read archive manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataLayerError(f"archive manifest {path} is not a JSON object")
    return data


def _verify_archive(file: Path, manifest: dict[str, Any]) -> None:
    """Re-read ``file``; raise ``DataLayerError`` naming it unless rows and sha256 match."""
    digest, rows = hashlib.sha256(), 0
    try:
        with gzip.open(file, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                rows += chunk.count(b"\n")
    except (OSError, EOFError, zlib.error) as exc:
        raise DataLayerError(f"archive {file} is unreadable: {exc}") from exc
    if rows != manifest.get("rows") or digest.hexdigest() != manifest.get("sha256"):
        raise DataLayerError(
            f"archive {file} does not match its manifest: {rows} rows, sha256 "
            f"{digest.hexdigest()} (manifest: {manifest.get('rows')} rows, "
            f"sha256 {manifest.get('sha256')})"
        )


def _verified_manifest(
    conn: psycopg.Connection[Any], cand: _Candidate, out_dir: Path
) -> dict[str, Any] | None:
    """The manifest of an existing archive of ``cand`` that verifies and matches the table."""
    file, mpath = out_dir / f"{cand.name}.copy.gz", _manifest_path(out_dir, cand.name)
    if not (file.exists() and mpath.exists()):
        return None
    try:
        manifest = _read_manifest(mpath)
        _verify_archive(file, manifest)
    except DataLayerError as exc:
        log.warning("rewriting archive of %s: %s", cand.name, exc)
        return None
    count = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(cand.name))
    ).fetchone()
    return manifest if count is not None and count[0] == manifest["rows"] else None


def _forget_keys(conn: psycopg.Connection[Any], cand: _Candidate) -> None:
    """Delete the idempotency keys of an archived usage partition's events.

    A key is remembered as long as its event is kept: once the month is
    archived, its events are older than any accepted event time. Runs before
    the drop, so a crash in between leaves the table for a rerun to finish.
    The month's events find their keys through usage_event_keys_pkey.
    """
    with conn.transaction():
        deleted = conn.execute(
            sql.SQL(
                "DELETE FROM usage_event_keys k USING {} e"
                " WHERE k.account_id = e.account_id AND k.idempotency_key = e.idempotency_key"
                " AND k.event_id = e.id"
            ).format(sql.Identifier(cand.name))
        ).rowcount
    log.info("forgot %d idempotency keys of %s", deleted, cand.name)


def _drop_detached(conn: psycopg.Connection[Any], name: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    log.info("dropped archived table %s", name)


def archive_partitions(
    conn: psycopg.Connection[Any],
    *,
    older_than_months: int = 13,
    out_dir: Path,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[ArchiveResult]:
    """Archive and drop every event partition that ends ``older_than_months`` before now.

    A partition is archived only when its whole range lies before the first day
    of the month ``older_than_months`` months before ``now``. With an autocommit
    ``conn`` it is detached CONCURRENTLY (writers are not blocked). ``dry_run``
    lists what would be archived and changes nothing. The idempotency keys of
    archived usage events are deleted with them: a key is remembered as long
    as its event is kept. Their cancellations are kept, as rollups are. Safe
    to rerun after a crash. Raises
    ``DataLayerError`` if a fresh archive fails verification (the table is then
    kept), ``InvalidInput`` when ``older_than_months`` would reach a month that
    still accepts events (1 can, early in a month: events up to 35 days old are
    accepted).
    """
    if type(older_than_months) is not int or not 1 <= older_than_months <= 1200:
        raise InvalidInput(
            "must be a whole number of months from 1 to 1200", field="older_than_months"
        )
    moment = now or datetime.now(UTC)
    cutoff = add_months(month_start(moment), -older_than_months)
    if cutoff > oldest_accepted(moment):
        # A month that still accepts late events must never be archived and dropped.
        raise InvalidInput(
            f"{older_than_months} month(s) would archive a month that still accepts events "
            f"(the accepted window reaches back to {oldest_accepted(moment):%Y-%m-%d})",
            field="older_than_months",
        )
    out_dir = Path(out_dir)
    results: list[ArchiveResult] = []
    try:
        candidates = _candidates(conn, cutoff)
        if not dry_run:
            out_dir.mkdir(parents=True, exist_ok=True)
        for cand in candidates:
            file, mpath = out_dir / f"{cand.name}.copy.gz", _manifest_path(out_dir, cand.name)
            rows: int | None = None
            if not dry_run:
                if cand.attached:
                    _detach(conn, cand)
                manifest = _verified_manifest(conn, cand, out_dir)
                if manifest is None:
                    manifest = _write(conn, cand, out_dir)
                    _verify_archive(file, manifest)
                if cand.parent == "usage_events":
                    _forget_keys(conn, cand)
                _drop_detached(conn, cand.name)
                rows = int(manifest["rows"])
            results.append(
                ArchiveResult(
                    cand.parent, cand.name, cand.start, cand.end, rows, file, mpath, not dry_run
                )
            )
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    return results


def restore_archive(conn: psycopg.Connection[Any], manifest_path: Path) -> int:
    """Recreate the partition described by ``manifest_path`` and load its rows; return the count.

    The file is verified against the manifest first: a corrupted or truncated
    file raises ``DataLayerError`` naming it, and nothing is created. Raises
    ``AlreadyExists`` if the partition exists. The partition and its rows appear
    in one transaction, with the idempotency keys of restored usage events
    (unless a key was stored again since); rollup queues are not touched
    (rollups were kept), and restored events that were cancelled stay
    cancelled (their cancellations were kept).
    """
    manifest_path = Path(manifest_path)
    manifest = _read_manifest(manifest_path)
    try:
        name, parent = str(manifest["table"]), str(manifest["parent"])
        start = datetime.fromisoformat(manifest["range_start"])
        end = datetime.fromisoformat(manifest["range_end"])
        columns = [str(c) for c in manifest["columns"]]
        file = manifest_path.parent / str(manifest["file"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataLayerError(f"archive manifest {manifest_path} is incomplete: {exc}") from exc
    if parent not in PARTITIONED_TABLES:
        raise DataLayerError(f"archive manifest {manifest_path} names unknown parent {parent}")
    _verify_archive(file, manifest)
    try:
        with conn.transaction():
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,):
                raise AlreadyExists(f"cannot restore {file}: table {name} already exists")
            conn.execute(
                sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name),
                    sql.Identifier(parent),
                    sql.Literal(start),
                    sql.Literal(end),
                )
            )
            inherit_parent_access(conn, parent, name)
            copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(
                sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            )
            with conn.cursor().copy(copy_in) as copy, gzip.open(file, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    copy.write(chunk)
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
            ).fetchone()
            count = int(row[0]) if row else -1
            if count != manifest["rows"]:
                raise DataLayerError(
                    f"restoring {file} loaded {count} rows, manifest says {manifest['rows']}"
                )
            if parent == "usage_events":  # their keys were forgotten with the archive
                conn.execute(
                    sql.SQL(
                        "INSERT INTO usage_event_keys"
                        " (account_id, idempotency_key, event_id, occurred_at)"
                        " SELECT account_id, idempotency_key, id, occurred_at FROM {}"
                        " ON CONFLICT (account_id, idempotency_key) DO NOTHING"
                    ).format(sql.Identifier(name))
                )
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    log.info("restored %s from %s (%d rows)", name, file, count)
    return count
