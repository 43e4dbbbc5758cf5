"""The migrated schema, read from pg_catalog, follows the rules of DOMAIN.md.

Scope: tables of the public schema, without yoyo's bookkeeping (``_yoyo_*``,
``yoyo_lock``) and without partitions (``relispartition``): a partition inherits
its columns, keys and constraints from its parent, which is checked instead.

A rule that a table breaks is a schema bug: the table's case is marked
``xfail(strict=True)`` with the reason, never dropped from the rule.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[Any]

TABLES = (
    "accounts",
    "users",
    "meters",
    "plans",
    "plan_meters",
    "subscriptions",
    "usage_events",
    "usage_event_keys",
    "usage_rollups",
    "usage_rollup_queue",
    "usage_cancellations",
    "quota_counters",
    "quota_reservations",
    "analytics_events",
    "analytics_daily_rollups",
    "analytics_daily_users",
    "analytics_rollup_queue",
    "files",
    "api_keys",
    "invoice_number_counters",
    "invoices",
    "invoice_lines",
    "payments",
    "ledger_transactions",
    "ledger_entries",
    "cache_invalidations",
    "billing_periods",
    "pending_invoice_items",
    "credit_notes",
    "refunds",
    "credit_grants",
    "credit_applications",
    "maintenance_jobs",
    "maintenance_runs",
    "user_emails",
    "api_key_hashes",
    "plan_seals",
    "plan_meter_seals",
    "plan_archivals",
)
# The tenant root (its id *is* the account id), the shared reference tables, and the
# maintenance worker's own bookkeeping (no tenant's data; local tables on a cluster).
NON_TENANT_TABLES = (
    "accounts", "meters", "plans", "plan_meters", "plan_seals", "plan_meter_seals",
    "plan_archivals", "invoice_number_counters", "maintenance_jobs", "maintenance_runs",
)  # fmt: skip
# The documented global lookups (DOMAIN.md rule 1), login by email and authentication by
# key hash, each with the tenant table whose rows reference it: keyed by the global key
# alone (reference tables on a cluster), naming the owning account, referencing nothing.
# No unique key of a tenant table leaves out account_id (migrations/0019_global_lookups.sql).
LOOKUP_TABLES = {"user_emails": "users", "api_key_hashes": "api_keys"}
TENANT_TABLES = tuple(t for t in TABLES if t not in NON_TENANT_TABLES and t not in LOOKUP_TABLES)

# The rollup queues are per-shard work logs, not entities: rows are appended by a
# statement trigger in the writer's transaction and drained (deleted) by
# `datalayer rollups refresh`. Nothing references them, nothing is looked up by
# their key, and nothing in them must be unique, so their primary key is a plain
# identity. They are exempt from "the primary key includes account_id" only; they
# must still carry account_id NOT NULL, have no other unique constraint and no
# foreign key in or out (test_a_rollup_queue_is_a_plain_work_log checks that the
# exemption stays that narrow). Distributing them by account_id later means a
# one-statement primary key change on a drained table.
QUEUE_TABLES = ("usage_rollup_queue", "analytics_rollup_queue")

EVENT_TABLES = ("usage_events", "analytics_events")
STATUS_LIKE_COLUMNS = (
    "status",
    "kind",
    "granularity",
    "category",
    "environment",
    "limit_kind",
    "role",
)

SCOPE = """
    c.relnamespace = 'public'::regnamespace
    AND c.relkind IN ('r', 'p')
    AND NOT c.relispartition
    AND NOT starts_with(c.relname, '_yoyo_')
    AND c.relname <> 'yoyo_lock'
"""

COLUMNS = f"""
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
           pg_get_expr(d.adbin, d.adrelid), a.attidentity
    FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
    WHERE {SCOPE}
    ORDER BY c.relname, a.attnum
"""


def _columns(conn: Conn) -> list[tuple[str, str, str, bool, str | None, str]]:
    return conn.execute(COLUMNS).fetchall()


def _attnames(conn: Conn, table: str) -> dict[int, str]:
    rows = conn.execute(
        "SELECT attnum, attname FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        [table],
    ).fetchall()
    return dict(rows)


def _unique_keys(conn: Conn, table: str) -> dict[str, tuple[bool, list[str | None]]]:
    """Every unique index of ``table`` (constraint-backed or not): is_primary, key columns.

    An expression key column is ``None``; INCLUDE columns are left out.
    """
    names = _attnames(conn, table)
    rows = conn.execute(
        """
        SELECT i.indexrelid::regclass::text, i.indisprimary,
               (i.indkey::int2[])[0:i.indnkeyatts - 1]
        FROM pg_index i
        WHERE i.indrelid = %s::regclass AND i.indisunique
        """,
        [table],
    ).fetchall()
    return {name: (primary, [names.get(k) for k in keys]) for name, primary, keys in rows}


def _foreign_keys(conn: Conn, table: str) -> list[tuple[str, str, list[str], list[str]]]:
    """(name, referenced table, referencing columns, referenced columns) of ``table``."""
    rows = conn.execute(
        """
        SELECT conname, confrelid::regclass::text, conkey, confkey
        FROM pg_constraint
        WHERE conrelid = %s::regclass AND contype = 'f' AND conparentid = 0
        ORDER BY conname
        """,
        [table],
    ).fetchall()
    mine = _attnames(conn, table)
    result = []
    for name, target, conkey, confkey in rows:
        theirs = _attnames(conn, target)
        result.append((name, target, [mine[k] for k in conkey], [theirs[k] for k in confkey]))
    return result


def test_the_schema_holds_exactly_the_tables_these_rules_know(conn: Conn) -> None:
    rows = conn.execute(f"SELECT c.relname FROM pg_class c WHERE {SCOPE}").fetchall()
    assert sorted(r[0] for r in rows) == sorted(TABLES)


def test_the_tables_without_account_id_are_the_tenant_root_and_the_reference_tables(
    conn: Conn,
) -> None:
    with_account = {table for table, column, *_ in _columns(conn) if column == "account_id"}
    assert sorted(set(TABLES) - with_account) == sorted(NON_TENANT_TABLES)


@pytest.mark.parametrize("table", TABLES)
def test_every_table_has_a_primary_key(conn: Conn, table: str) -> None:
    row = conn.execute(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'p'",
        [table],
    ).fetchone()
    assert row == (1,)


def test_id_columns_are_never_int_or_smallint(conn: Conn) -> None:
    offenders = [
        f"{table}.{column} is {type_}"
        for table, column, type_, *_ in _columns(conn)
        if (column == "id" or column.endswith("_id")) and type_ in ("integer", "smallint")
    ]
    assert offenders == []


def test_no_32_bit_column_or_sequence_is_fed_by_a_counter(conn: Conn) -> None:
    offenders = [
        f"{table}.{column} is {type_} with {default or 'identity'}"
        for table, column, type_, _, default, identity in _columns(conn)
        if type_ in ("integer", "smallint")
        and (identity != "" or (default or "").startswith("nextval("))
    ]
    sequences = conn.execute(
        """
        SELECT s.seqrelid::regclass::text, format_type(s.seqtypid, NULL)
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        WHERE c.relnamespace = 'public'::regnamespace
          AND NOT starts_with(c.relname, '_yoyo_') AND NOT starts_with(c.relname, 'yoyo_')
        """
    ).fetchall()
    assert sequences, "the schema has identity columns, so it has sequences"
    offenders += [f"sequence {name} is {type_}" for name, type_ in sequences if type_ != "bigint"]
    assert offenders == []


def test_every_timestamp_column_is_timestamptz(conn: Conn) -> None:
    columns = _columns(conn)
    offenders = [
        f"{table}.{column} is {type_}"
        for table, column, type_, *_ in columns
        if type_.startswith(("timestamp without", "time without")) or type_ == "timestamp"
    ]
    assert offenders == []
    assert any(type_ == "timestamp with time zone" for _, _, type_, *_ in columns)


def test_money_in_minor_units_is_an_integer_never_a_float_or_money(conn: Conn) -> None:
    columns = _columns(conn)
    minor = [(table, column, type_) for table, column, type_, *_ in columns if "_minor" in column]
    assert len(minor) >= 8, "the schema has amounts in minor units"
    # Amounts are bigint; a unit price may need fractions (numeric, DOMAIN.md rule 4).
    offenders = [
        f"{table}.{column} is {type_}"
        for table, column, type_ in minor
        if not (type_ == "bigint" or type_.startswith("numeric"))
    ]
    offenders += [
        f"{table}.{column} is {type_}"
        for table, column, type_, *_ in columns
        if type_ in ("money", "real", "double precision")
    ]
    assert offenders == []


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_a_tenant_table_has_account_id_as_a_not_null_bigint(conn: Conn, table: str) -> None:
    found = [
        (type_, notnull)
        for t, column, type_, notnull, *_ in _columns(conn)
        if t == table and column == "account_id"
    ]
    assert found == [("bigint", True)]


@pytest.mark.parametrize("table", [t for t in TENANT_TABLES if t not in QUEUE_TABLES])
def test_a_tenant_tables_primary_key_includes_account_id(conn: Conn, table: str) -> None:
    primary = [cols for primary, cols in _unique_keys(conn, table).values() if primary]
    assert len(primary) == 1
    assert "account_id" in primary[0]


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_every_unique_constraint_and_index_of_a_tenant_table_includes_account_id(
    conn: Conn, table: str
) -> None:
    keys = _unique_keys(conn, table)
    assert keys, "every table has at least its primary key"
    offenders = [
        f"{name} on {cols}"
        for name, (primary, cols) in keys.items()
        if "account_id" not in cols and not (primary and table in QUEUE_TABLES)
    ]
    assert offenders == []


@pytest.mark.parametrize(("lookup", "table"), sorted(LOOKUP_TABLES.items()))
def test_a_global_lookup_is_keyed_alone_references_nothing_and_is_referenced_by_its_table(
    conn: Conn, lookup: str, table: str
) -> None:
    keys = _unique_keys(conn, lookup)
    primary = [cols for is_primary, cols in keys.values() if is_primary]
    assert len(primary) == 1
    assert len(primary[0]) == 1
    assert primary[0] != ["account_id"]
    account = [(type_, notnull) for tb, c, type_, notnull, *_ in _columns(conn)
               if (tb, c) == (lookup, "account_id")]  # fmt: skip
    assert account == [("bigint", True)]
    # A reference table may not reference a distributed one (nor anything here).
    assert _foreign_keys(conn, lookup) == []
    # The tenant table's rows point at their lookup row, account_id with account_id.
    pointing = [
        list(zip(cols, target_cols, strict=True))
        for _, target, cols, target_cols in _foreign_keys(conn, table)
        if target == lookup
    ]
    assert len(pointing) == 1
    assert ("account_id", "account_id") in pointing[0]
    assert primary[0][0] in {theirs for _, theirs in pointing[0]}


@pytest.mark.parametrize("table", QUEUE_TABLES)
def test_a_rollup_queue_is_a_plain_work_log(conn: Conn, table: str) -> None:
    keys = _unique_keys(conn, table)
    assert list(keys.values()) == [(True, ["account_id", "id"])], (
        "only the primary key is unique, and it leads with the tenant (Citus: migration 0018)"
    )
    id_column = [
        (type_, identity)
        for t, column, type_, _, _, identity in _columns(conn)
        if t == table and column == "id"
    ]
    assert id_column == [("bigint", "a")], "the key is a bigint GENERATED ALWAYS identity"
    assert _foreign_keys(conn, table) == []
    referencing = conn.execute(
        "SELECT conname FROM pg_constraint WHERE contype = 'f' AND confrelid = %s::regclass",
        [table],
    ).fetchall()
    assert referencing == []


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_a_foreign_key_between_tenant_tables_pairs_account_id_with_account_id(
    conn: Conn, table: str
) -> None:
    offenders = [
        f"{name}: ({', '.join(cols)}) -> {target} ({', '.join(target_cols)})"
        for name, target, cols, target_cols in _foreign_keys(conn, table)
        if target in TENANT_TABLES
        and ("account_id", "account_id") not in zip(cols, target_cols, strict=True)
    ]
    assert offenders == []


@pytest.mark.parametrize("table", TABLES)
def test_every_foreign_key_is_covered_by_the_leading_columns_of_an_index(
    conn: Conn, table: str
) -> None:
    names = _attnames(conn, table)
    indexes = conn.execute(
        """
        SELECT indexrelid::regclass::text, (indkey::int2[])[0:indnkeyatts - 1],
               pg_get_expr(indpred, indrelid), indisunique
        FROM pg_index WHERE indrelid = %s::regclass
        """,
        [table],
    ).fetchall()
    offenders = []
    for name, _, cols, _ in _foreign_keys(conn, table):
        # A partial index serves the foreign key only if its predicate is
        # "<fk column> IS NOT NULL", which every referencing row satisfies. A unique
        # index on some of the key's columns serves it too: equality on them finds the
        # one row (the price book's seal keys, migration 0021: (id, published_at)).
        usable = [
            index
            for index, keys, predicate, unique in indexes
            if (
                {names.get(k) for k in keys[: len(cols)]} == set(cols)
                and (predicate is None or predicate in {f"({c} IS NOT NULL)" for c in cols})
            )
            or (unique and predicate is None and {names.get(k) for k in keys} <= set(cols))
        ]
        if not usable:
            offenders.append(f"{name} ({', '.join(cols)})")
    assert offenders == []


def test_no_partitioned_table_has_a_default_partition(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT partrelid::regclass::text, partdefid FROM pg_partitioned_table"
    ).fetchall()
    assert sorted(name for name, _ in rows) == sorted(EVENT_TABLES)
    assert [name for name, default in rows if default != 0] == []


@pytest.mark.parametrize("table", EVENT_TABLES)
def test_an_event_table_is_range_partitioned_on_occurred_at_one_level_deep(
    conn: Conn, table: str
) -> None:
    row = conn.execute(
        """
        SELECT p.partstrat, p.partattrs::int2[], a.attname
        FROM pg_partitioned_table p
        LEFT JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
        WHERE p.partrelid = %s::regclass
        """,
        [table],
    ).fetchone()
    assert row is not None
    strategy, attrs, column = row
    assert (strategy, len(attrs), column) == ("r", 1, "occurred_at")
    children = conn.execute(
        "SELECT c.relname, c.relkind FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        [table],
    ).fetchall()
    assert len(children) >= 4, "partitions from last month to 3 months ahead"
    assert [name for name, kind in children if kind != "r"] == []


@pytest.mark.parametrize("table", TABLES)
def test_a_status_like_column_is_text_with_a_check_on_a_closed_set(conn: Conn, table: str) -> None:
    columns = [
        (column, type_)
        for t, column, type_, *_ in _columns(conn)
        if t == table and column in STATUS_LIKE_COLUMNS
    ]
    checks = conn.execute(
        """
        SELECT a.attname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.conrelid = %s::regclass AND c.contype = 'c' AND cardinality(c.conkey) = 1
        """,
        [table],
    ).fetchall()
    # A set of several values reads "= ANY (ARRAY[...])"; PostgreSQL writes a set of
    # one as "= 'value'::text".
    closed_set = {
        column
        for column, definition in checks
        if "= ANY (ARRAY[" in definition or f"({column} = '" in definition
    }
    offenders = [
        f"{column} is {type_}" + ("" if column in closed_set else " without a closed-set CHECK")
        for column, type_ in columns
        if type_ != "text" or column not in closed_set
    ]
    assert offenders == []


def test_the_schema_has_status_like_columns_to_check(conn: Conn) -> None:
    found = {column for _, column, *_ in _columns(conn) if column in STATUS_LIKE_COLUMNS}
    assert found == set(STATUS_LIKE_COLUMNS)


def test_no_enum_types_exist(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT t.typnamespace::regnamespace::text, t.typname FROM pg_type t"
        " WHERE t.typtype = 'e'"
        " AND t.typnamespace NOT IN ('pg_catalog'::regnamespace,"
        " 'information_schema'::regnamespace)"
    ).fetchall()
    assert rows == []
