"""The hot queries use their indexes: EXPLAIN plans on a small seeded database.

One fresh clone per module, seeded small (60 accounts, 40k usage events, 8k
analytics events; the seed runs ANALYZE). Each test EXPLAINs the SQL of a
repository's query descriptor with parameters looked up in the seeded data and
asserts on the plan tree: the intended index is used and no large table is read
with a Seq Scan.

At this size accounts, users, subscriptions, files, api_keys, invoices and the
ledger hold well under 300 rows, one or two pages each, and the planner rightly
prefers a Seq Scan for them. Those tests run with ``enable_seqscan = off`` (see
``SMALL_IN_SEED``), which asks "is there an index that serves this query?", the
question that matters at production size. Usage and analytics events are never
planned that way: their tests see the planner's own choice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import psycopg.sql
import pytest
from conftest import _clone, pg_url

from datalayer._fanout import EARLIEST
from datalayer._ops.seed import seed_database
from datalayer._repository import QueryRef
from datalayer.repositories import (
    AccountRepository,
    AnalyticsRepository,
    ApiKeyRepository,
    BillingRepository,
    FileRepository,
    SubscriptionRepository,
    UsageReportRepository,
    UserRepository,
)

# Large at production size: a Seq Scan of any of these (or a partition) fails a test.
LARGE_TABLES = (
    "usage_events",
    "analytics_events",
    "usage_rollups",
    "users",
    "files",
    "api_keys",
    "subscriptions",
    "invoices",
    "invoice_lines",
    "ledger_transactions",
    "ledger_entries",
)
# Tables the seed keeps tiny (< 300 rows), where only enable_seqscan = off shows the index.
SMALL_IN_SEED = frozenset(
    {
        "accounts",
        "users",
        "user_emails",
        "subscriptions",
        "files",
        "api_keys",
        "api_key_hashes",
        "invoices",
        "invoice_lines",
        "ledger_transactions",
        "ledger_entries",
    }
)
INDEX_SCANS = frozenset({"Index Scan", "Index Only Scan", "Bitmap Index Scan"})


@dataclass(frozen=True)
class Node:
    type: str
    relation: str | None
    index: str | None


class Plan:
    """The nodes of an EXPLAIN (FORMAT JSON) tree, flattened in depth-first order."""

    def __init__(self, tree: Mapping[str, Any]):
        self.tree = tree
        self.nodes: list[Node] = []
        self._walk(tree)

    def _walk(self, node: Mapping[str, Any]) -> None:
        self.nodes.append(
            Node(node["Node Type"], node.get("Relation Name"), node.get("Index Name"))
        )
        for child in node.get("Plans", ()):
            self._walk(child)

    def relations(self) -> set[str]:
        return {n.relation for n in self.nodes if n.relation}

    def indexes(self) -> set[str]:
        return {n.index for n in self.nodes if n.index and n.type in INDEX_SCANS}

    def seq_scans_of_large_tables(self) -> list[str]:
        return [
            n.relation
            for n in self.nodes
            if n.type == "Seq Scan" and n.relation and _is_large(n.relation)
        ]

    def __str__(self) -> str:
        return "\n".join(f"  {n.type} {n.relation or ''} {n.index or ''}" for n in self.nodes)


def _is_large(relation: str) -> bool:
    return any(relation == t or relation.startswith(f"{t}_20") for t in LARGE_TABLES)


@pytest.fixture(scope="module")
def seeded(template_dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """A fresh clone seeded small, for this module only (its plans must not see other tests)."""
    janitor = _clone(template_dbname)
    with janitor, psycopg.connect(pg_url(janitor.dbname), autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        seed_database(conn, accounts=60, events=40_000, analytics=8_000, seed=3, progress=None)
        yield conn


def explain(
    conn: psycopg.Connection[Any], ref: QueryRef, params: Mapping[str, Any], *, small: bool
) -> Plan:
    """The plan of ``ref``'s SQL with ``params``; ``small`` forbids Seq Scans (tiny tables only)."""
    assert ref.query is not None
    assert params.keys() == ref.query.param_set, "parameters must match the query"
    with conn.transaction(force_rollback=True):
        if small:
            conn.execute("SET LOCAL enable_seqscan = off")
        row = conn.execute(b"EXPLAIN (FORMAT JSON) " + ref.query.sql.encode(), params).fetchone()
    assert row is not None
    doc = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan = Plan(doc[0]["Plan"])
    if small:
        # enable_seqscan = off is a cost penalty, not a ban: a Seq Scan still in the plan
        # means no index can serve it. Only the tiny tables may be planned this way.
        assert plan.relations() <= SMALL_IN_SEED, f"enable_seqscan = off on a large table:\n{plan}"
    return plan


def assert_uses(plan: Plan, *indexes: str | tuple[str, ...]) -> None:
    """Each of ``indexes`` is scanned (a tuple: one of its equally fitting alternatives)."""
    used = plan.indexes()
    for index in indexes:
        choices = {index} if isinstance(index, str) else set(index)
        assert choices & used, f"plan does not use {' or '.join(sorted(choices))}:\n{plan}"
    assert not plan.seq_scans_of_large_tables(), f"Seq Scan of a large table:\n{plan}"


# -- parameters looked up in the seeded data ---------------------------------------------


def one_row(conn: psycopg.Connection[Any], sql: str) -> tuple[Any, ...]:
    row = conn.execute(sql.encode()).fetchone()
    assert row is not None, sql
    return tuple(row)


@pytest.fixture(scope="module")
def busy_account(seeded: psycopg.Connection[Any]) -> int:
    """The account with the most usage events."""
    (account_id,) = one_row(
        seeded, "SELECT account_id FROM usage_events GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )
    return int(account_id)


@pytest.fixture(scope="module")
def month(seeded: psycopg.Connection[Any]) -> tuple[datetime, datetime, str]:
    """A whole month inside the seeded history, and the usage partition that holds it."""
    (last,) = one_row(seeded, "SELECT max(occurred_at) FROM usage_events")
    start = (last.replace(day=1) - timedelta(days=1)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=UTC
    )
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end, f"usage_events_{start:%Y_%m}"


# -- accounts and users ---------------------------------------------------------------------


def test_get_account_probes_the_primary_key(
    seeded: psycopg.Connection[Any], busy_account: int
) -> None:
    plan = explain(seeded, AccountRepository._get, {"id": busy_account}, small=True)
    assert_uses(plan, "accounts_pkey")


def test_get_user_probes_the_primary_key(seeded: psycopg.Connection[Any]) -> None:
    account_id, user_id = one_row(seeded, "SELECT account_id, id FROM users ORDER BY id LIMIT 1")
    plan = explain(
        seeded, UserRepository._get, {"account_id": account_id, "id": user_id}, small=True
    )
    assert_uses(plan, "users_pkey")


def test_find_user_by_email_probes_the_lookup_key_then_the_accounts_live_emails(
    seeded: psycopg.Connection[Any],
) -> None:
    account_id, email = one_row(
        seeded,
        "SELECT account_id, email FROM users WHERE deleted_at IS NULL ORDER BY account_id, id"
        " LIMIT 1",
    )
    lookup = explain(seeded, UserRepository._email_account, {"email": email.upper()}, small=True)
    assert_uses(lookup, ("users_email_key", "user_emails_account_key"))
    params = {"account_id": account_id, "email": email.upper()}
    plan = explain(seeded, UserRepository._by_email, params, small=True)
    assert_uses(plan, "users_live_email_key")


def test_list_users_reads_one_account_through_the_primary_key(
    seeded: psycopg.Connection[Any], busy_account: int
) -> None:
    params = {"account_id": busy_account, "after_id": 0, "limit": 50}
    plan = explain(seeded, UserRepository._list, params, small=True)
    assert_uses(plan, "users_pkey")


# -- api keys and subscriptions -------------------------------------------------------------


def test_find_api_key_credential_probes_the_lookup_key_then_the_accounts_hashes(
    seeded: psycopg.Connection[Any],
) -> None:
    account_id, secret_hash = one_row(
        seeded, "SELECT account_id, secret_hash FROM api_keys ORDER BY account_id, id LIMIT 1"
    )
    lookup = explain(seeded, ApiKeyRepository._account, {"secret_hash": secret_hash}, small=True)
    assert_uses(lookup, ("api_keys_secret_hash_key", "api_key_hashes_account_key"))
    params = {"account_id": account_id, "secret_hash": secret_hash}
    plan = explain(seeded, ApiKeyRepository._find, params, small=True)
    assert_uses(plan, "api_keys_secret_hash_account_key", "accounts_pkey")


def test_get_live_subscription_probes_the_one_live_per_account_index(
    seeded: psycopg.Connection[Any],
) -> None:
    (account_id,) = one_row(
        seeded,
        "SELECT account_id FROM subscriptions WHERE status IN ('trialing', 'active', 'past_due')"
        " ORDER BY 1 LIMIT 1",
    )
    plan = explain(seeded, SubscriptionRepository._live, {"account_id": account_id}, small=True)
    assert_uses(plan, "subscriptions_one_live_per_account")


def test_get_subscription_probes_the_primary_key(seeded: psycopg.Connection[Any]) -> None:
    account_id, sub_id = one_row(
        seeded, "SELECT account_id, id FROM subscriptions ORDER BY 1, 2 LIMIT 1"
    )
    params = {"account_id": account_id, "id": sub_id}
    plan = explain(seeded, SubscriptionRepository._get, params, small=True)
    assert_uses(plan, "subscriptions_pkey")


# -- files ----------------------------------------------------------------------------------


def test_claim_files_finds_work_through_the_claim_and_lease_indexes(
    seeded: psycopg.Connection[Any],
) -> None:
    # The queue is read across accounts without locks; each account's share is then claimed.
    cursor = {"after_uploaded_at": EARLIEST, "after_account_id": 0, "after_id": 0}
    plan = explain(seeded, FileRepository._claimable, {"limit": 10, **cursor}, small=True)
    assert_uses(plan, "files_claim_idx", "files_lease_idx")
    (account_id,) = one_row(
        seeded, "SELECT account_id FROM files GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )
    params = {"account_id": account_id, "lease": "5 minutes", "limit": 10}
    plan = explain(seeded, FileRepository._claim, params, small=True)
    assert_uses(plan, "files_account_claim_idx")


def test_list_files_by_status_walks_the_account_status_index(
    seeded: psycopg.Connection[Any],
) -> None:
    (account_id,) = one_row(
        seeded, "SELECT account_id FROM files GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    )
    params = {
        "account_id": account_id,
        "status": "ready",
        "after_id": 0,
        "content_type": None,
        "created_since": None,
        "created_before": None,
        "limit": 50,
    }
    plan = explain(seeded, FileRepository._list_by_status, params, small=True)
    assert_uses(plan, "files_account_status_idx")


# -- usage reports (never with enable_seqscan = off) ----------------------------------------


def usage_partitions(plan: Plan) -> set[str]:
    return {r for r in plan.relations() if r.startswith("usage_events_20")}


def test_get_period_totals_reads_rollups_and_only_the_partition_of_the_period(
    seeded: psycopg.Connection[Any], busy_account: int, month: tuple[datetime, datetime, str]
) -> None:
    start, end, partition = month
    params = {"account_id": busy_account, "period_start": start, "period_end": end}
    plan = explain(seeded, UsageReportRepository._period_totals, params, small=False)
    assert_uses(plan, "usage_rollups_pkey")
    assert usage_partitions(plan) <= {partition}, f"partitions not pruned:\n{plan}"


def test_get_period_totals_of_an_unaligned_range_reads_raw_events_of_that_partition_only(
    seeded: psycopg.Connection[Any], busy_account: int, month: tuple[datetime, datetime, str]
) -> None:
    start, _, partition = month
    lo, hi = start + timedelta(days=3, minutes=17), start + timedelta(days=9, minutes=41)
    params = {"account_id": busy_account, "period_start": lo, "period_end": hi}
    plan = explain(seeded, UsageReportRepository._period_totals, params, small=False)
    assert_uses(plan, "usage_rollups_pkey")
    assert usage_partitions(plan) == {partition}, f"partitions not pruned:\n{plan}"


def test_get_period_totals_across_a_month_boundary_reads_exactly_its_two_partitions(
    seeded: psycopg.Connection[Any], busy_account: int, month: tuple[datetime, datetime, str]
) -> None:
    start, _, partition = month
    lo, hi = start - timedelta(days=2, minutes=13), start + timedelta(days=2, minutes=29)
    params = {"account_id": busy_account, "period_start": lo, "period_end": hi}
    plan = explain(seeded, UsageReportRepository._period_totals, params, small=False)
    previous = f"usage_events_{lo:%Y_%m}"
    assert usage_partitions(plan) == {previous, partition}, f"partitions not pruned:\n{plan}"


@pytest.mark.parametrize("bucket", ["hour", "day"])
def test_get_usage_time_series_reads_rollups_and_only_the_partition_of_the_range(
    seeded: psycopg.Connection[Any],
    busy_account: int,
    month: tuple[datetime, datetime, str],
    bucket: str,
) -> None:
    start, _, partition = month
    (meter_code,) = one_row(
        seeded,
        f"SELECT meter_code FROM usage_events WHERE account_id = {busy_account} ORDER BY 1 LIMIT 1",
    )
    params = {
        "account_id": busy_account,
        "meter_code": meter_code,
        "bucket": bucket,
        "range_start": start + timedelta(hours=5, minutes=30),
        "range_end": start + timedelta(days=6, hours=2, minutes=10),
    }
    plan = explain(seeded, UsageReportRepository._time_series, params, small=False)
    assert_uses(plan, "usage_rollups_pkey")
    assert usage_partitions(plan) == {partition}, f"partitions not pruned:\n{plan}"


@pytest.mark.parametrize(
    "ref",
    [UsageReportRepository._period_totals, UsageReportRepository._time_series],
    ids=lambda r: r.name,
)
def test_usage_reports_leave_cancelled_events_out_through_the_cancellations_primary_key(
    seeded: psycopg.Connection[Any],
    busy_account: int,
    month: tuple[datetime, datetime, str],
    ref: QueryRef[Any],
) -> None:
    start, _, partition = month
    params: dict[str, Any] = {"account_id": busy_account}
    lo, hi = start + timedelta(days=3, minutes=17), start + timedelta(days=9, minutes=41)
    if ref is UsageReportRepository._period_totals:
        params |= {"period_start": lo, "period_end": hi}
    else:
        params |= {"meter_code": "api_calls", "range_start": lo, "range_end": hi, "bucket": "hour"}
    with seeded.transaction(force_rollback=True):
        # One event in 100 cancelled, as usage.cancel stores them (each queues its hour).
        seeded.execute(
            "INSERT INTO usage_cancellations (account_id, event_id, occurred_at, meter_code,"
            " quantity, idempotency_key, reason)"
            " SELECT account_id, id, occurred_at, meter_code, quantity, idempotency_key, 'test'"
            " FROM usage_events WHERE id % 100 = 0"
        )
        seeded.execute(
            "INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)"
            " SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')"
            " FROM usage_cancellations"
        )
        plan = explain(seeded, ref, params, small=False)
    assert_uses(plan, "usage_rollups_pkey", "usage_cancellations_pkey")
    scans = [n.type for n in plan.nodes if n.relation == "usage_cancellations"]
    assert scans, f"cancelled events are not left out:\n{plan}"
    assert "Seq Scan" not in scans, f"cancellations not read by their key:\n{plan}"
    assert usage_partitions(plan) == {partition}, f"partitions not pruned:\n{plan}"


def test_get_top_accounts_reads_rollups_across_accounts_by_meter(
    seeded: psycopg.Connection[Any], month: tuple[datetime, datetime, str]
) -> None:
    start, end, _ = month
    (meter_code,) = one_row(seeded, "SELECT min(meter_code) FROM usage_rollups")
    params = {"meter_code": meter_code, "range_start": start, "range_end": end, "limit": 10}
    plan = explain(seeded, UsageReportRepository._top_accounts, params, small=False)
    assert_uses(plan, "usage_rollups_meter_bucket_idx")
    assert not usage_partitions(plan), f"top accounts must not read raw events:\n{plan}"


# -- analytics dashboards: rollups only, never analytics_events -----------------------------


def analytics_params(account_id: int, **extra: Any) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    return {
        "account_id": account_id,
        "start_date": today - timedelta(days=30),
        "end_date": today,
        **extra,
    }


@pytest.mark.parametrize(
    ("ref", "extra", "index"),
    [
        (AnalyticsRepository._active_users, {"window": "week"}, "analytics_daily_users_pkey"),
        (AnalyticsRepository._top_features, {"limit": 10}, "analytics_daily_rollups_pkey"),
        (AnalyticsRepository._latency, {"name": None}, "analytics_daily_rollups_pkey"),
        (AnalyticsRepository._pending, {}, None),
    ],
    ids=lambda v: v.name if isinstance(v, QueryRef) else None,
)
def test_analytics_dashboards_never_read_raw_analytics_events(
    seeded: psycopg.Connection[Any],
    busy_account: int,
    ref: QueryRef,
    extra: dict[str, Any],
    index: str | None,
) -> None:
    plan = explain(seeded, ref, analytics_params(busy_account, **extra), small=False)
    assert not {r for r in plan.relations() if r.startswith("analytics_events")}, str(plan)
    if index:
        assert_uses(plan, index)
    assert not plan.seq_scans_of_large_tables(), str(plan)


def _index_conditions(node: Mapping[str, Any], index: str) -> list[str]:
    found = [node.get("Index Cond", "")] if node.get("Index Name") == index else []
    for child in node.get("Plans", ()):
        found += _index_conditions(child, index)
    return found


@pytest.mark.parametrize("window", ["day", "week", "month"])
def test_active_users_range_scans_the_days_even_as_a_generic_prepared_plan(
    seeded: psycopg.Connection[Any], busy_account: int, window: str
) -> None:
    """After five runs psycopg prepares a query and PostgreSQL may switch to a generic plan.

    Planned without parameter values, a join on each period's day range once
    became a scan of all the account's days (33 ms instead of 2 on the default
    seed). The query now scans the range once, bounded by its parameters.
    """
    query = AnalyticsRepository._active_users.query
    assert query is not None
    types = {"start_date": "date", "end_date": "date", "window": "text", "account_id": "bigint"}
    params = analytics_params(busy_account, window=window)
    args = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(params[p]) for p in query.params)
    try:
        seeded.execute(
            f"PREPARE active_users_probe ({', '.join(types[p] for p in query.params)})"
            f" AS {query.positional_sql}"
        )
        with seeded.transaction(force_rollback=True):
            seeded.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            row = seeded.execute(
                psycopg.sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE active_users_probe ({})").format(
                    args
                )
            ).fetchone()
    finally:
        # Not DEALLOCATE active_users_probe: the rollback above makes psycopg send
        # DEALLOCATE ALL when it has prepared statements of its own on this connection
        # (it had, or not, by which tests ran here before), which drops the probe too.
        # DEALLOCATE ALL itself is seen by psycopg, which then forgets its own.
        seeded.execute("DEALLOCATE ALL")
    assert row is not None
    tree = (row[0] if not isinstance(row[0], str) else json.loads(row[0]))[0]["Plan"]
    conditions = _index_conditions(tree, "analytics_daily_users_pkey")
    assert conditions, "analytics_daily_users_pkey is not used"
    # One scan bounded by the range's own parameters (not a probe per period).
    assert all(re.search(r"day >= \$\d", c) and re.search(r"day < \$\d", c) for c in conditions), (
        conditions
    )


def test_dashboard_dates_cover_seeded_data(seeded: psycopg.Connection[Any]) -> None:
    """The analytics ranges above are not empty: the seed ends today."""
    (last,) = one_row(seeded, "SELECT max(day) FROM analytics_daily_rollups")
    assert isinstance(last, date)
    assert datetime.now(UTC).date() - timedelta(days=30) <= last


# -- billing --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def invoice(seeded: psycopg.Connection[Any]) -> dict[str, Any]:
    account_id, invoice_id, subscription_id, period_start, period_id = one_row(
        seeded,
        "SELECT account_id, id, subscription_id, period_start, billing_period_id FROM invoices"
        " WHERE billing_period_id IS NOT NULL ORDER BY 1, 2 LIMIT 1",
    )
    return {
        "account_id": account_id,
        "id": invoice_id,
        "subscription_id": subscription_id,
        "period_start": period_start,
        "billing_period_id": period_id,
    }


def test_get_invoice_probes_the_primary_key(
    seeded: psycopg.Connection[Any], invoice: dict[str, Any]
) -> None:
    params = {"account_id": invoice["account_id"], "id": invoice["id"]}
    plan = explain(seeded, BillingRepository._get, params, small=True)
    # At 31 invoices any index led by account_id costs the same as the primary key.
    assert_uses(plan, ("invoices_pkey", "invoices_number_key"))


def test_get_invoice_by_period_probes_the_billing_period_key(
    seeded: psycopg.Connection[Any], invoice: dict[str, Any]
) -> None:
    params = {
        "account_id": invoice["account_id"],
        "billing_period_id": invoice["billing_period_id"],
    }
    plan = explain(seeded, BillingRepository._by_period, params, small=True)
    # At 31 invoices any index led by account_id costs the same as the period key.
    assert_uses(plan, ("invoices_billing_period_key", "invoices_number_key"))


def test_list_invoices_walks_the_primary_key(
    seeded: psycopg.Connection[Any], invoice: dict[str, Any]
) -> None:
    params = {"account_id": invoice["account_id"], "after_id": 2**62, "limit": 20}
    plan = explain(seeded, BillingRepository._list, params, small=True)
    assert_uses(plan, "invoices_pkey")


def test_list_invoice_lines_uses_the_invoice_index(
    seeded: psycopg.Connection[Any], invoice: dict[str, Any]
) -> None:
    params = {"account_id": invoice["account_id"], "invoice_id": invoice["id"]}
    plan = explain(seeded, BillingRepository._lines, params, small=True)
    assert_uses(plan, ("invoice_lines_invoice_idx", "invoice_lines_pkey"))


def test_get_balances_reads_the_balance_index_only(
    seeded: psycopg.Connection[Any], invoice: dict[str, Any]
) -> None:
    plan = explain(
        seeded, BillingRepository._balances, {"account_id": invoice["account_id"]}, small=True
    )
    assert_uses(plan, "ledger_entries_balance_idx")


# -- the helper itself ----------------------------------------------------------------------


def test_a_seq_scan_of_a_large_table_fails_the_assertion(seeded: psycopg.Connection[Any]) -> None:
    """Guard against a vacuous helper: a real Seq Scan plan of usage_events is caught."""
    (raw,) = one_row(seeded, "EXPLAIN (FORMAT JSON) SELECT count(*) FROM usage_events")
    doc = raw if not isinstance(raw, str) else json.loads(raw)
    plan = Plan(doc[0]["Plan"])
    assert plan.seq_scans_of_large_tables()
    with pytest.raises(AssertionError, match="Seq Scan of a large table"):
        assert_uses(plan)
    with pytest.raises(AssertionError, match="does not use"):
        assert_uses(plan, "usage_events_pkey")
