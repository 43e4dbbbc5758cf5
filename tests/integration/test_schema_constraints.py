"""The database itself refuses bad data (DOMAIN.md rule 7), whatever the application does.

Every case writes a bad row with plain SQL and checks three things: the datalayer
error class (through ``map_error``), the constraint the server names, and that the
table is exactly as it was before. Where a case starts from a valid row, that row
is first shown to be accepted, so the refusal is caused by the one bad value.

A constraint that lets through what DOMAIN.md says it must refuse is a schema bug:
its case is marked ``xfail(strict=True)`` with the reason.

The cases run as the admin, not the application role: these defences must hold
for any role that can write, the owner's included (the application role is
refused most of them earlier, by its grants: test_roles.py).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from conftest import _clone, pg_url
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from datalayer import UnitOfWork
from datalayer._ops.seed._tenants import seal_plan
from datalayer.errors import (
    AlreadyExists,
    CheckViolation,
    DatabaseError,
    DataLayerError,
    LiveSubscriptionExists,
    PartitionMissing,
    ReferenceViolation,
    map_error,
)

Conn = psycopg.Connection[Any]
DAY = dt.timedelta(days=1)
HASH = bytes(range(32))  # the world's API key hash
OTHER_HASH = bytes(range(32, 64))


@dataclass(frozen=True)
class World:
    """A small, valid data set: account acme owns everything, globex owns nothing."""

    now: dt.datetime
    acme: int
    globex: int
    draft_plan: int
    published_plan: int
    user: int
    subscription: int
    invoice: int
    invoice_period_start: dt.datetime
    payment: int
    ledger_tx: int
    api_key: int
    counter_start: dt.datetime


Value = Any | Callable[[World], Any]


@pytest.fixture
def conn(admin_conn: Conn) -> Conn:
    """The rolled-back test transaction, as the admin (see the module docstring)."""
    return admin_conn


def insert(conn: Conn, table: str, values: Mapping[str, Any]) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(insert_sql(table, values), list(values.values())).fetchone()
    assert row is not None
    return row


def insert_sql(table: str, values: Mapping[str, Any]) -> sql.Composed:
    if table == "subscriptions" and "chain_id" not in values:
        # A subscription that starts a chain is its own chain: draw its id first, as
        # start_subscription does.
        return sql.SQL(
            "INSERT INTO subscriptions (id, chain_id, {}) OVERRIDING SYSTEM VALUE"
            " SELECT n, n, {} FROM (SELECT nextval(pg_get_serial_sequence('subscriptions', 'id')))"
            " AS s (n) RETURNING *"
        ).format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join([sql.Placeholder()] * len(values)),
        )
    return sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join([sql.Placeholder()] * len(values)),
    )


def fingerprint(conn: Conn, table: str) -> tuple[Any, ...]:
    """Row count and a digest of every row: equal before and after means nothing was written."""
    query = sql.SQL(
        "SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) FROM {} AS t"
    ).format(sql.Identifier(table))
    row = conn.execute(query).fetchone()
    assert row is not None
    return tuple(row)


def refused(
    conn: Conn,
    table: str,
    statement: str | sql.Composed,
    params: list[Any] | None,
    error: type[DatabaseError],
    constraint: str | None,
) -> DataLayerError:
    """Run ``statement`` in a savepoint; it must fail with ``error`` on ``constraint``."""
    before = fingerprint(conn, table)
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        conn.execute(statement, params)
    mapped = map_error(info.value)
    assert type(mapped) is error, repr(mapped)
    assert isinstance(mapped, DatabaseError)
    if constraint is not None:
        assert mapped.constraint == constraint, str(mapped)
    assert fingerprint(conn, table) == before, f"{table} changed although the statement failed"
    return mapped


def accepted(conn: Conn, table: str, values: Mapping[str, Any]) -> None:
    """``values`` is a valid row of ``table`` (inserted in a savepoint, then rolled back)."""
    with conn.transaction(force_rollback=True):
        insert(conn, table, values)


def base_row(table: str, w: World) -> dict[str, Any]:
    """A valid new row of ``table``; each case changes one thing in it."""
    later = w.now + 30 * DAY
    rows: dict[str, dict[str, Any]] = {
        "accounts": {"name": "Initech"},
        "users": {"account_id": w.acme, "email": "grace@example.com"},
        "plans": {
            "code": "starter",
            "version": 1,
            "name": "Starter",
            "billing_interval": "month",
            "base_price_minor": 0,
            "currency": "EUR",
        },
        "plan_meters": {"plan_id": w.draft_plan, "meter_code": "api_calls"},
        "subscriptions": {
            "account_id": w.globex,
            "plan_id": w.published_plan,
            "status": "active",
            "current_period_start": w.now,
            "current_period_end": later,
            "billing_anchor": w.now,
        },
        "usage_events": {
            "account_id": w.acme,
            "meter_code": "api_calls",
            "quantity": 1,
            "occurred_at": w.now,
            "idempotency_key": "evt-new",
        },
        "usage_rollups": {
            "account_id": w.acme,
            "meter_code": "api_calls",
            "granularity": "hour",
            "bucket_start": w.now.replace(minute=0, second=0, microsecond=0),
            "event_count": 1,
            "quantity_sum": 1,
            "quantity_max": 1,
        },
        "quota_counters": {
            "account_id": w.globex,
            "meter_code": "api_calls",
            "period_start": w.now,
            "period_end": later,
            "limit_kind": "hard",
            "limit_quantity": 10,
        },
        "quota_reservations": {
            "account_id": w.acme,
            "meter_code": "api_calls",
            "period_start": w.counter_start,
            "quantity": 1,
            "expires_at": w.now + dt.timedelta(hours=1),
        },
        "analytics_events": {
            "account_id": w.acme,
            "category": "behaviour",
            "name": "page.view",
            "occurred_at": w.now,
        },
        "analytics_daily_rollups": {
            "account_id": w.acme,
            "day": w.now.date(),
            "category": "behaviour",
            "name": "page.view",
            "event_count": 1,
            "user_count": 1,
        },
        "files": {
            "account_id": w.acme,
            "uploaded_by": w.user,
            "storage_key": "acme/report.pdf",
            "file_name": "report.pdf",
            "content_type": "application/pdf",
        },
        "api_keys": {
            "account_id": w.acme,
            "name": "ci",
            "display_prefix": "dl_live_AbCd",
            "secret_hash": OTHER_HASH,
            "environment": "live",
        },
        "invoices": {
            "account_id": w.acme,
            "currency": "EUR",
            "period_start": w.now,
            "period_end": later,
        },
        "invoice_lines": {
            "account_id": w.acme,
            "invoice_id": w.invoice,
            "kind": "adjustment",
            "description": "Goodwill",
            "amount_minor": 5,
        },
        "payments": {
            "account_id": w.acme,
            "provider": "stripe",
            "provider_payment_id": "pi_new",
            "amount_minor": 100,
            "currency": "EUR",
            "status": "pending",
        },
        "ledger_transactions": {
            "account_id": w.acme,
            "kind": "adjustment",
            "idempotency_key": "adjustment:1",
        },
        "ledger_entries": {
            "account_id": w.acme,
            "transaction_id": w.ledger_tx,
            "ledger_account": "cash",
            "amount_minor": 5,
            "currency": "EUR",
        },
    }
    return dict(rows[table])


def resolve(overrides: Mapping[str, Value], w: World) -> dict[str, Any]:
    return {k: v(w) if callable(v) else v for k, v in overrides.items()}


def insert_refused(
    conn: Conn,
    w: World,
    table: str,
    overrides: Mapping[str, Value],
    error: type[DatabaseError],
    constraint: str,
) -> DataLayerError:
    row = base_row(table, w)
    accepted(conn, table, row)
    row.update(resolve(overrides, w))
    return refused(conn, table, insert_sql(table, row), list(row.values()), error, constraint)


@pytest.fixture
def w(conn: Conn) -> World:
    def new(table: str, **values: Any) -> dict[str, Any]:
        return insert(conn, table, values)

    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: dt.datetime = row[0]
    acme = new("accounts", name="Acme")["id"]
    globex = new("accounts", name="Globex")["id"]
    new("meters", code="api_calls", name="API calls", unit="call", aggregation="count")
    new("meters", code="storage_gb", name="Storage", unit="GB", aggregation="max")
    plan = {"billing_interval": "month", "currency": "EUR"}
    draft_plan = new("plans", code="team", version=1, name="Team", base_price_minor=900, **plan)
    published_plan = new("plans", code="pro", version=1, name="Pro", base_price_minor=2900, **plan)
    new("plan_meters", plan_id=published_plan["id"], meter_code="api_calls", limit_kind="hard")
    conn.execute(
        "UPDATE plans SET status = 'published', published_at = now() WHERE id = %s",
        [published_plan["id"]],
    )
    seal_plan(conn, published_plan["id"])  # as publish_plan does
    # A user's live email and a key's hash are reserved in the lookup tables first, as
    # the library does (migrations/0019_global_lookups.sql); so are those of the base rows.
    new("user_emails", email="ada@example.com", account_id=acme)
    new("user_emails", email="grace@example.com", account_id=acme)
    new("api_key_hashes", secret_hash=HASH, account_id=acme)
    new("api_key_hashes", secret_hash=OTHER_HASH, account_id=acme)
    user = new("users", account_id=acme, email="ada@example.com")["id"]
    subscription = new(
        "subscriptions",
        account_id=acme,
        plan_id=published_plan["id"],
        status="active",
        current_period_start=now,
        current_period_end=now + 30 * DAY,
        billing_anchor=now,
    )["id"]
    invoice_start = now - 30 * DAY
    invoice = new(
        "invoices",
        account_id=acme,
        subscription_id=subscription,
        currency="EUR",
        period_start=invoice_start,
        period_end=now,
    )["id"]
    payment = new(
        "payments",
        account_id=acme,
        invoice_id=invoice,
        provider="stripe",
        provider_payment_id="pi_1",
        amount_minor=2900,
        currency="EUR",
        status="pending",
    )["id"]
    ledger_tx = new(
        "ledger_transactions", account_id=acme, kind="invoice_finalized", idempotency_key="inv:1"
    )["id"]
    for ledger_account, amount in (("receivable", 2900), ("revenue", -2900)):
        new(
            "ledger_entries",
            account_id=acme,
            transaction_id=ledger_tx,
            ledger_account=ledger_account,
            amount_minor=amount,
            currency="EUR",
        )
    api_key = new(
        "api_keys",
        account_id=acme,
        name="prod",
        display_prefix="dl_live_WxYz",
        secret_hash=HASH,
        environment="live",
        created_by=user,
    )["id"]
    new(
        "quota_counters",
        account_id=acme,
        meter_code="api_calls",
        period_start=now,
        period_end=now + 30 * DAY,
        limit_kind="hard",
        limit_quantity=100,
        used=40,
    )
    return World(
        now=now,
        acme=acme,
        globex=globex,
        draft_plan=draft_plan["id"],
        published_plan=published_plan["id"],
        user=user,
        subscription=subscription,
        invoice=invoice,
        invoice_period_start=invoice_start,
        payment=payment,
        ledger_tx=ledger_tx,
        api_key=api_key,
        counter_start=now,
    )


# --- CHECK constraints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "overrides", "constraint"),
    [
        ("plans", {"base_price_minor": -1}, "plans_base_price_check"),
        (
            "invoices",
            {"subtotal_minor": 1, "tax_minor": -1, "total_minor": 0},
            "invoices_tax_check",
        ),
        (
            # invoices_total_check refuses it too; PostgreSQL names the first check
            # that fails, by name, and a negative total is a negative amount due.
            "invoices",
            {"subtotal_minor": -5, "tax_minor": 0, "total_minor": -5},
            "invoices_amount_due_check",
        ),
        ("payments", {"amount_minor": 0}, "payments_amount_check"),
        ("payments", {"amount_minor": -100}, "payments_amount_check"),
        ("ledger_entries", {"amount_minor": 0}, "ledger_entries_amount_check"),
    ],
    ids=[
        "plan base price -1",
        "invoice tax -1",
        "invoice total -5",
        "payment of 0",
        "payment of -100",
        "ledger entry of 0",
    ],
)
def test_an_amount_below_its_floor_is_refused(
    conn: Conn, w: World, table: str, overrides: dict[str, Value], constraint: str
) -> None:
    insert_refused(conn, w, table, overrides, CheckViolation, constraint)


STATUS_CASES = [
    ("accounts", {"status": "deleted"}, "accounts_status_check"),
    ("users", {"role": "superuser"}, "users_role_check"),
    ("plans", {"status": "retired", "published_at": lambda w: w.now}, "plans_status_check"),
    ("plan_meters", {"limit_kind": "unlimited"}, "plan_meters_limit_kind_check"),
    ("subscriptions", {"status": "paused"}, "subscriptions_status_check"),
    ("usage_rollups", {"granularity": "minute"}, "usage_rollups_granularity_check"),
    ("quota_counters", {"limit_kind": "strict"}, "quota_counters_limit_kind_check"),
    (
        "quota_reservations",
        {"status": "cancelled", "settled_at": lambda w: w.now},
        "quota_reservations_status_check",
    ),
    ("analytics_events", {"category": "marketing"}, "analytics_events_category_check"),
    (
        "analytics_daily_rollups",
        {"category": "marketing"},
        "analytics_daily_rollups_category_check",
    ),
    ("files", {"status": "archived"}, "files_status_check"),
    ("api_keys", {"environment": "prod"}, "api_keys_environment_check"),
    (
        "invoices",
        {"status": "sent", "number": "2026-000001", "finalized_at": lambda w: w.now},
        "invoices_status_check",
    ),
    ("invoice_lines", {"kind": "discount"}, "invoice_lines_kind_check"),
    ("payments", {"status": "disputed"}, "payments_status_check"),
    ("ledger_transactions", {"kind": "gift"}, "ledger_transactions_kind_check"),
]


def _case_id(case: Any) -> str:
    values = case.values if hasattr(case, "values") else case
    table, overrides, _ = values
    column, value = next(iter(overrides.items()))
    return f"{table}.{column}={value}"


@pytest.mark.parametrize(
    ("table", "overrides", "constraint"), STATUS_CASES, ids=[_case_id(c) for c in STATUS_CASES]
)
def test_a_value_outside_a_closed_set_is_refused(
    conn: Conn, w: World, table: str, overrides: dict[str, Value], constraint: str
) -> None:
    insert_refused(conn, w, table, overrides, CheckViolation, constraint)


def _period(start: str, end: str, offset: dt.timedelta) -> dict[str, Value]:
    return {start: lambda w: w.now, end: lambda w: w.now + offset}


@pytest.mark.parametrize(
    ("table", "start", "end", "constraint"),
    [
        (
            "subscriptions",
            "current_period_start",
            "current_period_end",
            "subscriptions_period_check",
        ),
        ("invoices", "period_start", "period_end", "invoices_period_check"),
        ("quota_counters", "period_start", "period_end", "quota_counters_period_check"),
    ],
)
@pytest.mark.parametrize(
    "offset", [-DAY, dt.timedelta(0)], ids=["end before start", "empty period"]
)
def test_a_period_that_does_not_end_after_it_starts_is_refused(
    conn: Conn, w: World, table: str, start: str, end: str, constraint: str, offset: dt.timedelta
) -> None:
    insert_refused(conn, w, table, _period(start, end, offset), CheckViolation, constraint)


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"used": 11}, "quota_counters_hard_limit_check"),
        ({"used": 6, "reserved": 5}, "quota_counters_hard_limit_check"),
        ({"used": 0, "reserved": 11}, "quota_counters_hard_limit_check"),
        ({"used": -1}, "quota_counters_used_check"),
    ],
    ids=["used over limit", "used plus reserved over limit", "reserved over limit", "used < 0"],
)
def test_a_hard_quota_counter_over_its_limit_is_refused(
    conn: Conn, w: World, overrides: dict[str, Value], constraint: str
) -> None:
    insert_refused(conn, w, "quota_counters", overrides, CheckViolation, constraint)


@pytest.mark.parametrize("limit_kind", ["soft", "none"])
def test_a_soft_or_unlimited_counter_may_go_over_its_limit(
    conn: Conn, w: World, limit_kind: str
) -> None:
    row = base_row("quota_counters", w) | {"limit_kind": limit_kind, "used": 11, "reserved": 5}
    assert insert(conn, "quota_counters", row)["used"] == 11


@pytest.mark.parametrize(
    ("limit_kind", "allowed"), [("hard", False), ("soft", True), ("none", True)]
)
def test_consuming_past_the_limit_in_place_is_refused_only_for_a_hard_quota(
    conn: Conn, w: World, limit_kind: str, allowed: bool
) -> None:
    conn.execute(
        "UPDATE quota_counters SET limit_kind = %s WHERE account_id = %s", [limit_kind, w.acme]
    )
    consume = "UPDATE quota_counters SET used = used + 61 WHERE account_id = %s RETURNING used"
    if allowed:
        assert conn.execute(consume, [w.acme]).fetchall() == [(101,)]
    else:
        refused(
            conn,
            "quota_counters",
            consume,
            [w.acme],
            CheckViolation,
            "quota_counters_hard_limit_check",
        )


def test_an_invoice_number_on_a_draft_is_refused(conn: Conn, w: World) -> None:
    insert_refused(
        conn,
        w,
        "invoices",
        {"number": "2026-000042"},
        CheckViolation,
        "invoices_number_assigned_check",
    )


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_an_api_key_hash_that_is_not_32_bytes_is_refused(conn: Conn, w: World, length: int) -> None:
    insert_refused(
        conn,
        w,
        "api_keys",
        {"secret_hash": b"\x07" * length},
        CheckViolation,
        "api_keys_secret_hash_check",
    )


UPLOADED = {
    "size_bytes": 1024,
    "checksum_sha256": "ab" * 32,
    "uploaded_at": lambda w: w.now,
}


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({**UPLOADED, "status": "uploaded", "size_bytes": None}, "files_uploaded_check"),
        ({**UPLOADED, "status": "uploaded", "checksum_sha256": None}, "files_uploaded_check"),
        ({**UPLOADED, "status": "uploaded", "uploaded_at": None}, "files_uploaded_check"),
        (
            {**UPLOADED, "status": "ready", "processing_ms": 5, "size_bytes": None},
            "files_uploaded_check",
        ),
        ({**UPLOADED, "status": "processing"}, "files_lease_check"),
    ],
    ids=[
        "uploaded without size",
        "uploaded without checksum",
        "uploaded without upload time",
        "ready without size",
        "processing without lease",
    ],
)
def test_a_file_in_a_state_it_has_not_earned_is_refused(
    conn: Conn, w: World, overrides: dict[str, Value], constraint: str
) -> None:
    insert_refused(conn, w, "files", overrides, CheckViolation, constraint)


@pytest.mark.parametrize(
    ("overrides", "constraint"),
    [
        ({"quantity": -1}, "usage_events_quantity_check"),
        ({"quantity": -0.000001}, "usage_events_quantity_check"),
        ({"properties": Jsonb([])}, "usage_events_properties_check"),
        ({"properties": Jsonb(["a", 1])}, "usage_events_properties_check"),
        ({"properties": Jsonb("text")}, "usage_events_properties_check"),
        ({"properties": Jsonb(7)}, "usage_events_properties_check"),
        ({"properties": Jsonb(None)}, "usage_events_properties_check"),
    ],
    ids=[
        "quantity -1",
        "quantity -0.000001",
        "properties []",
        "properties array",
        "properties string",
        "properties number",
        "properties json null",
    ],
)
def test_a_usage_event_with_a_negative_quantity_or_non_object_properties_is_refused(
    conn: Conn, w: World, overrides: dict[str, Value], constraint: str
) -> None:
    insert_refused(conn, w, "usage_events", overrides, CheckViolation, constraint)


# --- partitions -------------------------------------------------------------------------------


@pytest.mark.parametrize("table", ["usage_events", "analytics_events"])
def test_an_event_for_a_month_without_a_partition_names_that_month(
    conn: Conn, w: World, table: str
) -> None:
    occurred_at = w.now + 730 * DAY  # two years ahead: no partition exists
    row = base_row(table, w) | {"occurred_at": occurred_at}
    error = refused(conn, table, insert_sql(table, row), list(row.values()), PartitionMissing, None)
    assert isinstance(error, PartitionMissing)
    assert error.month == f"{occurred_at:%Y-%m}"
    assert error.table == table
    assert error.month in str(error)


# --- append-only tables -----------------------------------------------------------------------

# The plain layout's triggers: Citus refuses triggers on distributed tables, and the
# distribution step drops these (datalayer/_ops/distribution.py, PLAIN_ONLY_TRIGGERS).
# On a cluster the application role's grants hold append-only (test_roles.py), and
# book_ledger_transaction the balance (test_the_librarys_booking_statement_refuses_…).
PLAIN_ONLY = pytest.mark.not_on_citus(
    "a trigger of the plain layout, dropped on Citus, where grants and "
    "book_ledger_transaction hold the guarantee for the application"
)


@PLAIN_ONLY
@pytest.mark.parametrize("table", ["usage_events", "analytics_events"])
def test_updating_an_event_is_refused(conn: Conn, w: World, table: str) -> None:
    insert(conn, table, base_row(table, w))
    statement = sql.SQL("UPDATE {} SET received_at = received_at + interval '1 second'").format(
        sql.Identifier(table)
    )
    error = refused(conn, table, statement, None, CheckViolation, None)
    assert isinstance(error, DatabaseError)
    assert (error.constraint or "").endswith("_append_only"), str(error)


@PLAIN_ONLY
@pytest.mark.parametrize("table", ["usage_events", "analytics_events"])
def test_updating_an_event_is_refused_by_the_tables_append_only_constraint(
    conn: Conn, w: World, table: str
) -> None:
    insert(conn, table, base_row(table, w))
    statement = sql.SQL("UPDATE {} SET received_at = received_at + interval '1 second'").format(
        sql.Identifier(table)
    )
    refused(conn, table, statement, None, CheckViolation, f"{table}_append_only")


@PLAIN_ONLY
@pytest.mark.parametrize(
    ("table", "statement"),
    [
        ("ledger_entries", "UPDATE ledger_entries SET amount_minor = amount_minor * 2"),
        ("ledger_entries", "UPDATE ledger_entries SET ledger_account = 'cash'"),
        ("ledger_entries", "DELETE FROM ledger_entries"),
        ("ledger_transactions", "UPDATE ledger_transactions SET description = 'edited'"),
        ("ledger_transactions", "DELETE FROM ledger_transactions"),
    ],
    ids=["entry amount", "entry account", "entry delete", "transaction edit", "transaction delete"],
)
def test_changing_or_deleting_the_ledger_is_refused(
    conn: Conn, w: World, table: str, statement: str
) -> None:
    refused(conn, table, statement, None, CheckViolation, f"{table}_append_only")


@pytest.fixture(scope="module")
def ledger_url(template_dbname: str) -> Iterator[str]:
    """A migrated database these tests commit to (one clone for all: each uses its own account).

    The deferred ledger_entries_balanced trigger only runs at a real COMMIT.
    """
    with _clone(template_dbname) as janitor:
        yield pg_url(janitor.dbname)


def _ledger_setup(conn: Conn) -> tuple[int, int]:
    account = conn.execute("INSERT INTO accounts (name) VALUES ('Acme') RETURNING id").fetchone()
    assert account is not None
    tx = conn.execute(
        "INSERT INTO ledger_transactions (account_id, kind, idempotency_key)"
        " VALUES (%s, 'adjustment', 'adj:1') RETURNING id",
        [account[0]],
    ).fetchone()
    assert tx is not None
    return account[0], tx[0]


def _add_entries(conn: Conn, account: int, tx: int, entries: list[tuple[str, int, str]]) -> None:
    for ledger_account, amount, currency in entries:
        conn.execute(
            "INSERT INTO ledger_entries"
            " (account_id, transaction_id, ledger_account, amount_minor, currency)"
            " VALUES (%s, %s, %s, %s, %s)",
            [account, tx, ledger_account, amount, currency],
        )


def _ledger_entry_count(url: str, account: int) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger_entries WHERE account_id = %s", [account]
        ).fetchone()
    assert row is not None
    return int(row[0])


BALANCED = [("receivable", 500, "EUR"), ("revenue", -500, "EUR")]


@PLAIN_ONLY
def test_truncating_a_committed_ledger_is_refused(ledger_url: str) -> None:
    with psycopg.connect(ledger_url) as conn:
        account, tx = _ledger_setup(conn)
        _add_entries(conn, account, tx, BALANCED)
        conn.commit()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("TRUNCATE ledger_entries")
        conn.rollback()
    error = map_error(info.value)
    assert type(error) is CheckViolation, repr(error)
    assert error.constraint == "ledger_entries_append_only"
    assert _ledger_entry_count(ledger_url, account) == len(BALANCED)


@PLAIN_ONLY
@pytest.mark.parametrize(
    ("committed_first", "entries"),
    [
        ([], [("receivable", 500, "EUR")]),
        ([], [("receivable", 500, "EUR"), ("revenue", -499, "EUR")]),
        ([], [("receivable", 500, "EUR"), ("revenue", -500, "USD")]),
        (BALANCED, [("cash", 1, "EUR")]),
    ],
    ids=["one entry", "off by one", "zero only across currencies", "late entry to balanced"],
)
def test_a_ledger_transaction_that_does_not_sum_to_zero_is_refused_at_commit(
    ledger_url: str,
    committed_first: list[tuple[str, int, str]],
    entries: list[tuple[str, int, str]],
) -> None:
    with psycopg.connect(ledger_url) as conn:
        account, tx = _ledger_setup(conn)
        _add_entries(conn, account, tx, committed_first)
        conn.commit()
        _add_entries(conn, account, tx, entries)  # the deferred check has not run yet
        with pytest.raises(psycopg.Error) as info:
            conn.commit()
    error = map_error(info.value)
    assert type(error) is CheckViolation, repr(error)
    assert error.constraint == "ledger_entries_balanced"
    assert _ledger_entry_count(ledger_url, account) == len(committed_first)


def test_a_balanced_ledger_transaction_commits(ledger_url: str) -> None:
    with psycopg.connect(ledger_url) as conn:
        account, tx = _ledger_setup(conn)
        _add_entries(
            conn, account, tx, [*BALANCED, ("cash", 300, "USD"), ("customer_credit", -300, "USD")]
        )
        conn.commit()
    assert _ledger_entry_count(ledger_url, account) == 4


@pytest.mark.parametrize(
    "amounts", [[500], [500, -499], [1, 1, -1]], ids=["one entry", "off by one", "three entries"]
)
def test_the_librarys_booking_statement_refuses_an_unbalanced_transaction_before_writing(
    ledger_url: str, amounts: list[int]
) -> None:
    """insert_ledger_transaction checks the balance itself (migration 0020).

    The deferred trigger checks at commit on plain PostgreSQL only; Citus has
    no trigger, so the statement must refuse at once, and write nothing.
    """
    with psycopg.connect(ledger_url) as conn:
        account, _ = _ledger_setup(conn)
        conn.commit()
        with pytest.raises(CheckViolation) as info:
            UnitOfWork(conn).billing._book(
                account_id=account, kind="adjustment", idempotency_key="adj:unbalanced",
                invoice_id=None, payment_id=None, description="", occurred_at=None,
                currency="EUR", ledger_accounts=["cash"] * len(amounts), amounts_minor=amounts,
            )  # fmt: skip
        conn.rollback()
        assert info.value.constraint == "ledger_entries_balanced"
        booked = conn.execute(
            "SELECT count(*) FROM ledger_transactions WHERE account_id = %s"
            " AND idempotency_key = 'adj:unbalanced'",
            [account],
        ).fetchone()
    assert booked == (0,)


# --- unique constraints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": "active"},
        {"status": "past_due"},
        {"status": "trialing", "trial_end": lambda w: w.now + 14 * DAY},
    ],
    ids=["active", "past_due", "trialing"],
)
def test_a_second_live_subscription_for_an_account_is_refused(
    conn: Conn, w: World, overrides: dict[str, Value]
) -> None:
    insert_refused(
        conn,
        w,
        "subscriptions",
        {**overrides, "account_id": w.acme},
        LiveSubscriptionExists,
        "subscriptions_one_live_per_account",
    )


def test_ended_subscriptions_and_one_live_subscription_can_coexist(conn: Conn, w: World) -> None:
    row = base_row("subscriptions", w)
    ended = {"canceled_at": w.now, "ended_at": w.now}
    insert(conn, "subscriptions", row | {"status": "canceled"} | ended)
    insert(conn, "subscriptions", row | {"status": "replaced", "ended_at": w.now})
    insert(conn, "subscriptions", row | {"status": "incomplete"})
    insert(conn, "subscriptions", row | {"status": "active"})
    statuses = conn.execute(
        "SELECT status FROM subscriptions WHERE account_id = %s ORDER BY id", [w.globex]
    ).fetchall()
    assert [s for (s,) in statuses] == ["canceled", "replaced", "incomplete", "active"]


def test_a_billing_period_invoiced_twice_or_a_second_draft_of_a_chain_is_refused(
    conn: Conn, w: World
) -> None:
    period = insert(
        conn,
        "billing_periods",
        {
            "account_id": w.acme,
            "chain_id": w.subscription,
            "subscription_id": w.subscription,
            "base_plan_id": w.published_plan,
            "period_start": w.now,
            "period_end": w.now + 30 * DAY,
            "closes_at": w.now + 30 * DAY,
        },
    )["id"]
    chain = {"subscription_id": w.subscription, "chain_id": w.subscription}
    insert(conn, "invoices", base_row("invoices", w) | chain | {"billing_period_id": period})
    insert_refused(  # another invoice of the same period (a draft or not)
        conn, w, "invoices", {**chain, "billing_period_id": period, "status": "void",
                              "number": "2026-000099", "finalized_at": w.now,
                              "voided_at": w.now}, AlreadyExists, "invoices_billing_period_key",
    )  # fmt: skip
    insert_refused(  # a second draft of the chain, for no period (standalone)
        conn, w, "invoices", chain, AlreadyExists, "invoices_one_draft_per_chain"
    )


def test_a_provider_payment_recorded_twice_is_refused(conn: Conn, w: World) -> None:
    insert_refused(
        conn,
        w,
        "payments",
        {"provider_payment_id": "pi_1"},
        AlreadyExists,
        "payments_provider_payment_key",
    )


# A hash or a live email is reserved for one account by the lookup table's primary key
# (api_keys_secret_hash_key, users_email_key); the tenant row references its lookup row.
# A raw insert that skips the lookup is refused by that reference in another account,
# and by the tenant table's own unique key in the same account.
# Since 0019_global_lookups: before, both were refused by a unique index on the tenant
# table (AlreadyExists, api_keys_secret_hash_key / users_email_key).
OWNER_REFUSALS = {
    "acme": (AlreadyExists, "api_keys_secret_hash_account_key", "users_live_email_key"),
    "globex": (ReferenceViolation, "api_keys_secret_hash_fkey", "users_live_email_fkey"),
}


@pytest.mark.parametrize("owner", ["acme", "globex"])
def test_an_api_key_hash_already_in_use_is_refused_in_any_account(
    conn: Conn, w: World, owner: str
) -> None:
    account = getattr(w, owner)
    error, constraint, _ = OWNER_REFUSALS[owner]
    insert_refused(
        conn, w, "api_keys", {"secret_hash": HASH, "account_id": account}, error, constraint
    )
    # Reserving it again, as the library would before its insert:
    refused(
        conn,
        "api_key_hashes",
        "INSERT INTO api_key_hashes (secret_hash, account_id) VALUES (%s, %s)",
        [HASH, account],
        AlreadyExists,
        "api_keys_secret_hash_key",
    )


@pytest.mark.parametrize("email", ["ada@example.com", "ADA@Example.COM", "Ada@example.com"])
@pytest.mark.parametrize("owner", ["acme", "globex"])
def test_a_live_users_email_is_refused_again_whatever_its_case_and_account(
    conn: Conn, w: World, email: str, owner: str
) -> None:
    account = getattr(w, owner)
    error, _, constraint = OWNER_REFUSALS[owner]
    insert_refused(conn, w, "users", {"email": email, "account_id": account}, error, constraint)
    refused(
        conn,
        "user_emails",
        "INSERT INTO user_emails (email, account_id) VALUES (lower(%s), %s)",
        [email, account],
        AlreadyExists,
        "users_email_key",
    )


def test_a_soft_deleted_users_email_can_be_used_again_once_released(conn: Conn, w: World) -> None:
    conn.execute("UPDATE users SET deleted_at = now() WHERE id = %s", [w.user])
    # Until its lookup row is deleted, the address stays reserved for acme.
    refused(
        conn,
        "users",
        "INSERT INTO users (account_id, email) VALUES (%s, 'Ada@Example.com')",
        [w.globex],
        ReferenceViolation,
        "users_live_email_fkey",
    )
    conn.execute("DELETE FROM user_emails WHERE email = 'ada@example.com'")
    insert(conn, "user_emails", {"email": "ada@example.com", "account_id": w.globex})
    new = insert(conn, "users", {"account_id": w.globex, "email": "Ada@Example.com"})
    assert new["id"] != w.user
    assert new["live_email"] == "ada@example.com"


def test_a_live_users_email_cannot_change_without_its_lookup_row(conn: Conn, w: World) -> None:
    refused(
        conn,
        "users",
        "UPDATE users SET email = 'ada@elsewhere.com' WHERE id = %s",
        [w.user],
        ReferenceViolation,
        "users_live_email_fkey",
    )
    conn.execute("UPDATE users SET email = 'ADA@example.com' WHERE id = %s", [w.user])  # case


def test_a_user_cannot_be_restored_by_raw_sql_without_its_lookup_row(conn: Conn, w: World) -> None:
    conn.execute("UPDATE users SET deleted_at = now() WHERE id = %s", [w.user])
    conn.execute("DELETE FROM user_emails WHERE email = 'ada@example.com'")
    refused(
        conn,
        "users",
        "UPDATE users SET deleted_at = NULL WHERE id = %s",
        [w.user],
        ReferenceViolation,
        "users_live_email_fkey",
    )


@pytest.mark.parametrize(
    ("table", "statement", "constraint"),
    [
        ("user_emails", "DELETE FROM user_emails WHERE email = 'ada@example.com'",
         "users_live_email_fkey"),
        ("user_emails", "UPDATE user_emails SET account_id = %s WHERE email = 'ada@example.com'",
         "users_live_email_fkey"),
        ("api_key_hashes", "DELETE FROM api_key_hashes WHERE secret_hash = %s",
         "api_keys_secret_hash_fkey"),
        ("api_key_hashes", "UPDATE api_key_hashes SET account_id = %s WHERE secret_hash = %s",
         "api_keys_secret_hash_fkey"),
    ],
    ids=["delete email", "move email", "delete hash", "move hash"],
)  # fmt: skip
def test_a_lookup_row_in_use_cannot_be_deleted_or_given_to_another_account(
    conn: Conn, w: World, table: str, statement: str, constraint: str
) -> None:
    params = {
        "user_emails": [w.globex] if "%s" in statement else [],
        "api_key_hashes": ([w.globex] if "SET" in statement else []) + [HASH],
    }[table]
    refused(conn, table, statement, params, ReferenceViolation, constraint)


def test_a_reserved_email_is_lower_case(conn: Conn, w: World) -> None:
    refused(
        conn,
        "user_emails",
        "INSERT INTO user_emails (email, account_id) VALUES ('Eve@example.com', %s)",
        [w.globex],
        CheckViolation,
        "user_emails_email_check",
    )


# --- plans: published versions are immutable --------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE plans SET name = 'Pro (new)' WHERE id = %s",
        "UPDATE plans SET base_price_minor = 3900 WHERE id = %s",
        "UPDATE plans SET trial_days = 14 WHERE id = %s",
        "UPDATE plans SET currency = 'USD' WHERE id = %s",
        "UPDATE plans SET status = 'draft', published_at = NULL WHERE id = %s",
        "UPDATE plans SET status = 'archived', base_price_minor = 0 WHERE id = %s",
    ],
    ids=["name", "price", "trial", "currency", "unpublish", "archive and reprice"],
)
def test_changing_a_published_plan_is_refused(conn: Conn, w: World, statement: str) -> None:
    refused(
        conn, "plans", statement, [w.published_plan], CheckViolation, "plans_published_immutable"
    )


def test_deleting_a_published_plan_is_refused(conn: Conn, w: World) -> None:
    # With nothing else referring to it, its seal refuses;
    lone = insert(conn, "plans", {**base_row("plans", w), "code": "lone"})["id"]
    conn.execute(
        "UPDATE plans SET status = 'published', published_at = now() WHERE id = %s", [lone]
    )
    seal_plan(conn, lone)
    refused(
        conn, "plans", "DELETE FROM plans WHERE id = %s", [lone], CheckViolation,
        "plans_published_immutable",
    )  # fmt: skip
    # with meters and subscriptions, whichever foreign key the server checks first.
    error = refused(
        conn, "plans", "DELETE FROM plans WHERE id = %s", [w.published_plan], ReferenceViolation,
        None,
    )  # fmt: skip
    assert error.constraint in {"plan_meters_plan_id_fkey", "subscriptions_plan_id_fkey"}


def test_archiving_a_published_plan_is_allowed_and_then_final(conn: Conn, w: World) -> None:
    row = conn.execute(
        "UPDATE plans SET status = 'archived' WHERE id = %s RETURNING status", [w.published_plan]
    ).fetchall()
    assert row == [("archived",)]
    conn.execute("INSERT INTO plan_archivals (plan_id) VALUES (%s)", [w.published_plan])
    for statement, constraint in (
        ("UPDATE plans SET status = 'published' WHERE id = %s", "plans_archived_final"),
        ("UPDATE plans SET name = 'Pro (old)' WHERE id = %s", "plans_published_immutable"),
    ):
        refused(conn, "plans", statement, [w.published_plan], CheckViolation, constraint)


def test_editing_then_publishing_a_draft_plan_is_allowed(conn: Conn, w: World) -> None:
    conn.execute(
        "UPDATE plans SET name = 'Team+', base_price_minor = 1900, trial_days = 7 WHERE id = %s",
        [w.draft_plan],
    )
    conn.execute(
        "UPDATE plans SET status = 'published', published_at = now() WHERE id = %s",
        [w.draft_plan],
    )
    row = conn.execute(
        "SELECT name, base_price_minor, trial_days, status FROM plans WHERE id = %s",
        [w.draft_plan],
    ).fetchone()
    assert row == ("Team+", 1900, 7, "published")


def test_deleting_a_draft_plan_deletes_it(conn: Conn, w: World) -> None:
    conn.execute("DELETE FROM plan_meters WHERE plan_id = %s", [w.draft_plan])
    deleted = conn.execute("DELETE FROM plans WHERE id = %s", [w.draft_plan]).rowcount
    assert deleted == 1


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("INSERT INTO plan_meters (plan_id, meter_code) VALUES (%s, 'storage_gb')",
         "plan_meters_plan_seal_fkey"),
        ("UPDATE plan_meters SET included_quantity = 1000000 WHERE plan_id = %s",
         "plan_meters_published_immutable"),
        ("UPDATE plan_meters SET limit_kind = 'none' WHERE plan_id = %s",
         "plan_meters_published_immutable"),
        ("UPDATE plan_meters SET meter_code = 'storage_gb' WHERE plan_id = %s",
         "plan_meters_published_immutable"),
        ("DELETE FROM plan_meters WHERE plan_id = %s", "plan_meters_published_immutable"),
    ],
    ids=["add meter", "raise quota", "drop limit", "swap meter", "remove meter"],
)  # fmt: skip
def test_changing_the_meters_of_a_published_plan_is_refused(
    conn: Conn, w: World, statement: str, constraint: str
) -> None:
    refused(conn, "plan_meters", statement, [w.published_plan], CheckViolation, constraint)


@pytest.mark.not_on_citus(
    "SET CONSTRAINTS … IMMEDIATE does not reach the workers' connections: the key is checked "
    "at commit there (test_a_plan_published_or_archived_with_plain_sql_alone_is_refused_at_commit "
    "shows a seal key refusing at commit on the cluster)"
)
def test_adding_a_meter_to_a_published_plan_with_its_seal_state_is_refused(
    conn: Conn, w: World
) -> None:
    conn.execute("SET CONSTRAINTS plan_meters_seal_fkey IMMEDIATE")  # else checked at commit
    refused(
        conn,
        "plan_meters",
        "INSERT INTO plan_meters (plan_id, meter_code, plan_seal_state)"
        " SELECT id, 'storage_gb', published_at FROM plans WHERE id = %s",
        [w.published_plan],
        CheckViolation,
        "plan_meters_seal_fkey",
    )


def test_moving_a_meter_out_of_a_published_plan_is_refused(conn: Conn, w: World) -> None:
    refused(
        conn,
        "plan_meters",
        "UPDATE plan_meters SET plan_id = %s WHERE plan_id = %s",
        [w.draft_plan, w.published_plan],
        CheckViolation,
        "plan_meters_published_immutable",
    )


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("UPDATE plans SET status = 'published', published_at = now() WHERE id = %s",
         "plans_seal_fkey"),
        ("UPDATE plans SET status = 'published', published_at = now() WHERE id = %s;"
         " UPDATE plans SET status = 'archived' WHERE id = %s", "plans_archival_fkey"),
    ],
    ids=["published without a seal", "archived without its archival"],
)  # fmt: skip
def test_a_plan_published_or_archived_with_plain_sql_alone_is_refused_at_commit(
    ledger_url: str, statement: str, constraint: str
) -> None:
    with psycopg.connect(ledger_url) as conn:
        plan = conn.execute(
            "INSERT INTO plans (code, version, name, billing_interval, base_price_minor, currency)"
            " VALUES (%s, 1, 'S', 'month', 100, 'EUR') RETURNING id",
            [f"seal-{uuid.uuid4().hex[:12]}"],
        ).fetchone()
        assert plan is not None
        conn.commit()
        if "archived" in statement:
            conn.execute(statement.split(";")[0], [plan[0]])
            seal_plan(conn, plan[0])
            conn.execute(statement.split(";")[1], [plan[0]])
        else:
            conn.execute(statement, [plan[0]])
        with pytest.raises(psycopg.Error) as info:
            conn.commit()
        status = conn.execute("SELECT status FROM plans WHERE id = %s", [plan[0]]).fetchone()
        on_citus = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
    assert status == ("draft",)
    if on_citus is None:  # Citus reports a deferred key's failure at commit without its name
        error = map_error(info.value)
        assert type(error) is CheckViolation, repr(error)
        assert error.constraint == constraint


def test_the_meters_of_a_draft_plan_can_change(conn: Conn, w: World) -> None:
    conn.execute(
        "INSERT INTO plan_meters (plan_id, meter_code) VALUES (%s, 'api_calls')", [w.draft_plan]
    )
    conn.execute("UPDATE plan_meters SET included_quantity = 50 WHERE plan_id = %s", [w.draft_plan])
    rows = conn.execute(
        "SELECT meter_code, included_quantity FROM plan_meters WHERE plan_id = %s",
        [w.draft_plan],
    ).fetchall()
    assert rows == [("api_calls", 50)]
    assert conn.execute("DELETE FROM plan_meters WHERE plan_id = %s", [w.draft_plan]).rowcount == 1


# --- tenancy: composite foreign keys ----------------------------------------------------------


CROSS_TENANT = [
    ("files", {"uploaded_by": lambda w: w.user}, "files_uploaded_by_fkey"),
    ("api_keys", {"created_by": lambda w: w.user}, "api_keys_created_by_fkey"),
    ("api_keys", {"rotated_from_id": lambda w: w.api_key}, "api_keys_rotated_from_fkey"),
    (
        "subscriptions",
        {"status": "incomplete", "replaces_id": lambda w: w.subscription},
        "subscriptions_replaces_fkey",
    ),
    ("invoices", {"subscription_id": lambda w: w.subscription}, "invoices_subscription_fkey"),
    ("invoice_lines", {"invoice_id": lambda w: w.invoice}, "invoice_lines_invoice_fkey"),
    ("payments", {"invoice_id": lambda w: w.invoice}, "payments_invoice_fkey"),
    (
        "ledger_transactions",
        {"invoice_id": lambda w: w.invoice},
        "ledger_transactions_invoice_fkey",
    ),
    (
        "ledger_transactions",
        {"payment_id": lambda w: w.payment},
        "ledger_transactions_payment_fkey",
    ),
    (
        "ledger_entries",
        {"transaction_id": lambda w: w.ledger_tx},
        "ledger_entries_transaction_fkey",
    ),
    ("quota_reservations", {}, "quota_reservations_counter_fkey"),
]


@pytest.mark.parametrize(
    ("table", "reference", "constraint"),
    CROSS_TENANT,
    ids=[constraint for _, _, constraint in CROSS_TENANT],
)
def test_a_reference_to_another_accounts_row_is_refused(
    conn: Conn, w: World, table: str, reference: dict[str, Value], constraint: str
) -> None:
    row = base_row(table, w) | resolve(reference, w)
    accepted(conn, table, row | {"account_id": w.acme})  # acme may point at its own row
    row["account_id"] = w.globex
    refused(conn, table, insert_sql(table, row), list(row.values()), ReferenceViolation, constraint)
