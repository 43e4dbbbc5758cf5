"""The distribution step: the migrated schema laid out on a Citus cluster, sharded by account.

``datalayer migrate`` runs the same migrations on plain PostgreSQL and on a
Citus coordinator; on a coordinator (the ``citus`` extension is installed in
the database) it then runs ``distribute``, which gives every table its place,
with the layout ``datalayer check-distribution`` assumes (``distribution.py``):

* **reference** tables (replicated to every node): the price book (plans,
  their meters and seals) and meters, invoice number counters, and the global
  lookups;
* **distributed** tables: ``accounts`` by ``id``, every other table with an
  ``account_id`` by it, all colocated with ``accounts`` (an account's rows of
  every table live in one shard group, so tenant-scoped statements, joins and
  foreign keys stay on one node); the monthly partitioned event tables keep
  their partitions, each distributed alike;
* **local** tables (the coordinator's own): the maintenance worker's
  bookkeeping and yoyo's.

It is idempotent: a table Citus already knows keeps its place, and a table a
later migration creates is placed by the next ``migrate``. The foreign keys of
the tables being placed are dropped while they are placed and added back after,
in the same transaction: Citus refuses a key to a table not yet placed, the
tenant tables' keys form cycles, and creating a reference table that local
tables reference would turn those into "Citus local" tables, which (with an
identity column) cannot be distributed any more.

The triggers Citus refuses on distributed and reference tables
(``PLAIN_ONLY_TRIGGERS``) are dropped here, and each guarantee they held is
kept on the cluster by another mechanism (README: Scaling out with Citus).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from .distribution import (
    DISTRIBUTION_COLUMN,
    PLAIN_ONLY_TRIGGERS,
    table_layout,
)

__all__ = ["Placement", "distribute", "has_citus"]

log = logging.getLogger("datalayer")


def has_citus(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn``'s database is a Citus coordinator (the extension is installed)."""
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone() is not None


@dataclass(slots=True)
class Placement:
    """What one ``distribute`` run did."""

    reference: list[str] = field(default_factory=list)
    distributed: list[str] = field(default_factory=list)
    dropped_triggers: list[str] = field(default_factory=list)


def _citus_tables(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Tables Citus knows, by name: 'distributed', 'reference' or 'local' (its own view)."""
    rows = conn.execute("SELECT table_name::text, citus_table_type FROM citus_tables").fetchall()
    return {str(name): str(kind) for name, kind in rows}


def _foreign_keys(conn: psycopg.Connection[Any], tables: set[str]) -> list[tuple[str, str, str]]:
    """(table, constraint, definition) of every foreign key from or to one of ``tables``."""
    rows = conn.execute(
        "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)"
        " FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid"
        " JOIN pg_class r ON r.oid = k.confrelid"
        " WHERE k.contype = 'f' AND k.conparentid = 0"
        "   AND c.relnamespace = current_schema()::regnamespace"
        "   AND (c.relname = ANY(%s) OR r.relname = ANY(%s))"
        " ORDER BY 1, 2",
        (sorted(tables), sorted(tables)),
    ).fetchall()
    return [(str(t), str(n), str(d)) for t, n, d in rows]


def _drop_plain_only_triggers(conn: psycopg.Connection[Any], placement: Placement) -> None:
    for table, triggers in PLAIN_ONLY_TRIGGERS.items():
        for trigger in triggers:
            exists = conn.execute(
                "SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
                (table, trigger),
            ).fetchone()
            if exists:
                conn.execute(
                    sql.SQL("DROP TRIGGER {} ON {}").format(
                        sql.Identifier(trigger), sql.Identifier(table)
                    )
                )
                placement.dropped_triggers.append(f"{table}.{trigger}")


def distribute(
    conn: psycopg.Connection[Any], *, role: str | None = None, shard_count: int | None = None
) -> Placement:
    """Place every table of the migrated schema on the Citus cluster (see the module doc).

    ``conn`` is the migration's autocommit connection on the coordinator; the
    step runs in a transaction of its own (all or nothing), as ``role`` (the
    schema's owner, which Citus requires) when given. Returns what
    it placed; an already placed schema gives an empty ``Placement``.
    ``shard_count`` (default: the cluster's ``citus.shard_count``, 32) is the
    number of shards of the colocation group, fixed when ``accounts`` is placed.
    """
    placement = Placement()
    layout = table_layout(conn)
    known = _citus_tables(conn)
    reference = {t for t, kind in layout.items() if kind == "reference"}
    distributed = {t for t, kind in layout.items() if kind == "distributed"}
    todo_reference = {t for t in reference if known.get(t) != "reference"}
    todo_distributed = {t for t in distributed if known.get(t) != "distributed"}
    if not todo_reference and not todo_distributed:
        return placement
    with conn.transaction():
        if role is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        _drop_plain_only_triggers(conn, placement)
        # Foreign keys wait until every table is placed: Citus refuses one to a
        # table not yet placed, and the tenant tables' keys form cycles
        # (billing_periods <-> invoices).
        parked = _foreign_keys(conn, todo_reference | todo_distributed)
        for table, constraint, _ in parked:
            conn.execute(
                sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                    sql.Identifier(table), sql.Identifier(constraint)
                )
            )
        # One connection per node for the whole transaction: foreign keys to
        # reference tables must see every earlier step of it.
        conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
        if shard_count is not None:
            conn.execute("SELECT set_config('citus.shard_count', %s, true)", (str(shard_count),))
        for table in sorted(todo_reference):
            conn.execute("SELECT create_reference_table(%s)", (table,))
            placement.reference.append(table)
        # accounts first: the colocation group every other table joins.
        for table in sorted(todo_distributed, key=lambda t: (t != "accounts", t)):
            if table == "accounts":
                conn.execute("SELECT create_distributed_table('accounts', 'id')")
            else:
                conn.execute(
                    "SELECT create_distributed_table(%s, %s, colocate_with => 'accounts')",
                    (table, DISTRIBUTION_COLUMN),
                )
            placement.distributed.append(table)
        for table, constraint, definition in parked:
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                    sql.Identifier(table), sql.Identifier(constraint), sql.SQL(definition)
                )
            )
    log.info(
        "citus: %d reference and %d distributed table(s) placed; dropped %s",
        len(placement.reference),
        len(placement.distributed),
        ", ".join(placement.dropped_triggers) or "no trigger",
    )
    return placement
