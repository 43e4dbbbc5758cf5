"""Monthly partitions of the event tables: create ahead, list, and add indexes without blocking.

Partitions are named ``<parent>_YYYY_MM`` and cover ``[first of month, first of
next month)`` in UTC. There is no DEFAULT partition (DOMAIN.md): an event for a
month without a partition is refused with ``PartitionMissing``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from .._window import oldest_accepted
from ..errors import DataLayerError, InvalidInput, map_error

__all__ = [
    "PARTITIONED_TABLES",
    "PartitionInfo",
    "add_months",
    "create_partitioned_index",
    "ensure_partitions",
    "inherit_parent_access",
    "list_partitions",
    "month_start",
]

log = logging.getLogger("datalayer")

# The time-partitioned tables. `ensure` reaches back to the oldest accepted
# event time (_window), so last month's partition exists while it is accepted.
PARTITIONED_TABLES: tuple[str, ...] = ("usage_events", "analytics_events")

_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition: its range ``[start, end)``, estimated rows and total size."""

    parent: str
    name: str
    start: datetime | None
    end: datetime | None
    estimated_rows: int | None
    size_bytes: int


def month_start(moment: datetime) -> datetime:
    """The first instant (UTC) of the month containing ``moment`` (which must be aware)."""
    if moment.tzinfo is None:
        raise InvalidInput("must be timezone-aware", field="moment")
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def add_months(start: datetime, months: int) -> datetime:
    """``start`` (a month start) moved by ``months`` whole months."""
    index = start.year * 12 + start.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(parent: str, start: datetime) -> str:
    """``usage_events`` and 2026-11 → ``usage_events_2026_11``."""
    return f"{parent}_{start:%Y_%m}"


def _parse_bound(text: str) -> tuple[datetime | None, datetime | None]:
    match = _BOUND.search(text)
    if not match:
        return None, None
    # pg_get_expr prints bounds in the session's time zone; report them in UTC.
    return (
        datetime.fromisoformat(match.group(1)).astimezone(UTC),
        datetime.fromisoformat(match.group(2)).astimezone(UTC),
    )


def list_partitions(
    conn: psycopg.Connection[Any], parents: tuple[str, ...] | None = None
) -> list[PartitionInfo]:
    """Every partition of ``parents`` (default: all partitioned event tables), oldest first.

    ``estimated_rows`` is the planner's estimate (``None`` before the first ANALYZE).
    """
    rows = conn.execute(
        """
        SELECT parent.relname, child.relname, pg_get_expr(child.relpartbound, child.oid),
               child.reltuples::bigint, pg_total_relation_size(child.oid)
        FROM pg_inherits i
        JOIN pg_class parent ON parent.oid = i.inhparent
        JOIN pg_class child ON child.oid = i.inhrelid
        WHERE parent.relname = ANY(%s) AND parent.relkind = 'p'
          AND parent.relnamespace = 'public'::regnamespace
        ORDER BY parent.relname, child.relname
        """,
        (list(parents or PARTITIONED_TABLES),),
    ).fetchall()
    result = []
    for parent, name, bound, tuples, size in rows:
        start, end = _parse_bound(bound or "")
        result.append(
            PartitionInfo(parent, name, start, end, None if tuples < 0 else int(tuples), int(size))
        )
    return sorted(result, key=lambda p: (p.parent, p.start or datetime.min.replace(tzinfo=UTC)))


def _create_one(
    conn: psycopg.Connection[Any],
    parent: str,
    start: datetime,
    *,
    lock_timeout_ms: int,
    attempts: int,
) -> bool:
    """Create one month's partition unless it exists; retry when the parent is busy."""
    name = partition_name(parent, start)
    end = add_months(start, 1)
    statement = sql.SQL(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {parent}"
        " FOR VALUES FROM ({start}) TO ({end})"
    ).format(
        name=sql.Identifier(name),
        parent=sql.Identifier(parent),
        start=sql.Literal(start),
        end=sql.Literal(end),
    )
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                # Serialise creators of this parent; the loser then sees the table.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"partitions:{parent}",)
                )
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
                if exists and exists[0]:
                    return False
                # CREATE … PARTITION OF locks the parent; never queue behind a long
                # query (and make every writer queue behind us): give up fast, retry.
                conn.execute(
                    sql.SQL("SET LOCAL lock_timeout = {}").format(
                        sql.Literal(f"{lock_timeout_ms}ms")
                    )
                )
                conn.execute(statement)
                inherit_parent_access(conn, parent, name)
            log.info("created partition %s", name)
            return True
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts:
                raise DataLayerError(
                    f"could not lock {parent} to create {name} after {attempts} attempts"
                ) from None
            time.sleep(random.uniform(0, 0.05 * 2**attempt))
        except psycopg.Error as exc:
            raise map_error(exc) from exc
    return False  # pragma: no cover - the loop returns or raises


# What a table grants, role by role (0 is PUBLIC), leaving out its owner's implicit rights.
_GRANTS = """
SELECT a.grantee, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = to_regclass(%s) AND a.grantee <> c.relowner
"""
_PRIVILEGE_WORDS = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)


def inherit_parent_access(conn: psycopg.Connection[Any], parent: str, name: str) -> None:
    """Give partition ``name`` the owner and the grants of ``parent``, no more, no less.

    Whoever creates a partition (a superuser, a member of the owner role) it
    belongs to the parent's owner, and the owner's default privileges do not
    leave it writable where the parent is not (``DELETE`` on a month of an
    append-only table). Run it in the transaction that creates the partition.
    """
    owners = conn.execute(
        "SELECT pg_get_userbyid(p.relowner), p.relowner = c.relowner"
        " FROM pg_class p, pg_class c WHERE p.oid = to_regclass(%s) AND c.oid = to_regclass(%s)",
        (parent, name),
    ).fetchone()
    if owners is None:
        raise DataLayerError(f"{name} or its parent {parent} does not exist")
    table = sql.Identifier(name)
    if not owners[1]:
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(owners[0])))
    wanted = {(g, r, p) for g, r, p in conn.execute(_GRANTS, (parent,)) if p in _PRIVILEGE_WORDS}
    held = {(g, r, p) for g, r, p in conn.execute(_GRANTS, (name,)) if p in _PRIVILEGE_WORDS}
    for changes, verb, word in ((held - wanted, "REVOKE", "FROM"), (wanted - held, "GRANT", "TO")):
        for _, role, privilege in sorted(changes, key=lambda c: (c[0], c[2])):
            grantee = sql.SQL("PUBLIC") if role is None else sql.Identifier(role)
            conn.execute(
                sql.SQL("{} {} ON {} {} {}").format(
                    sql.SQL(verb), sql.SQL(privilege), table, sql.SQL(word), grantee
                )
            )


def ensure_partitions(
    conn: psycopg.Connection[Any],
    *,
    ahead: int = 3,
    start: datetime | None = None,
    now: datetime | None = None,
    parents: tuple[str, ...] | None = None,
    lock_timeout_ms: int = 2000,
    attempts: int = 10,
) -> list[str]:
    """Create every missing monthly partition from ``start`` through ``ahead`` months after now.

    ``start`` defaults to the month of the oldest accepted event (35 days ago).
    Idempotent and safe to run from several processes at once. ``conn`` must
    be in autocommit mode. Returns the names of the partitions created.
    """
    if ahead < 0:
        raise InvalidInput("must be >= 0", field="ahead")
    if not conn.autocommit:
        raise DataLayerError("ensure_partitions needs an autocommit connection")
    now = now or datetime.now(UTC)
    first = month_start(start if start is not None else oldest_accepted(now))
    last = add_months(month_start(now), ahead)
    created = []
    for parent in parents or PARTITIONED_TABLES:
        month = first
        while month <= last:
            if _create_one(conn, parent, month, lock_timeout_ms=lock_timeout_ms, attempts=attempts):
                created.append(partition_name(parent, month))
            month = add_months(month, 1)
    return created


def create_partitioned_index(
    conn: psycopg.Connection[Any], parent: str, name: str, columns: list[str]
) -> None:
    """Add an index to a partitioned table without blocking writes.

    ``CREATE INDEX … ON ONLY`` the parent (instant, invalid until complete),
    then per partition ``CREATE INDEX CONCURRENTLY`` and ``ALTER INDEX …
    ATTACH PARTITION``; the parent index turns valid with the last attach, and
    partitions created later get the index automatically. Rerunning after a
    failure resumes: an invalid leftover index is dropped and rebuilt.
    ``conn`` must be in autocommit mode (CONCURRENTLY cannot run in a transaction).
    Raises ``DataLayerError`` if the parent index is not valid at the end.
    """
    if not conn.autocommit:
        raise DataLayerError("create_partitioned_index needs an autocommit connection")
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    conn.execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON ONLY {} ({})").format(
            sql.Identifier(name), sql.Identifier(parent), cols
        )
    )
    for part in list_partitions(conn, (parent,)):
        covered = conn.execute(
            "SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(%s) AND x.indrelid = to_regclass(%s)",
            (name, part.name),
        ).fetchone()
        if covered is not None:  # attached already (or created with the partition)
            continue
        child = f"{part.name}_{name}"[:63]
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (child,)
        ).fetchone()
        if valid is not None and not valid[0]:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(child)))
        conn.execute(
            sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {} ({})").format(
                sql.Identifier(child), sql.Identifier(part.name), cols
            )
        )
        conn.execute(
            sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                sql.Identifier(name), sql.Identifier(child)
            )
        )
    valid = conn.execute(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)
    ).fetchone()
    if not (valid and valid[0]):
        raise DataLayerError(f"index {name} on {parent} is still invalid; rerun to resume")
