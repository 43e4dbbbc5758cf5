"""datalayer seed: deterministic, realistic, consistent with every constraint and rollup."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from conftest import _clone, pg_url

from datalayer import DataLayerError
from datalayer._ops.seed import seed_database, table_checksums

ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
SMALL = {"accounts": 60, "events": 20_000, "analytics": 5_000, "anchor": ANCHOR, "progress": None}


@pytest.fixture(scope="module")
def seeded(template_dbname: str) -> Iterator[psycopg.Connection[Any]]:
    """One seeded database shared by the read-only tests of this module."""
    with (
        _clone(template_dbname) as janitor,
        psycopg.connect(pg_url(janitor.dbname), autocommit=True) as conn,
    ):
        seed_database(conn, seed=7, **SMALL)  # type: ignore[arg-type]
        yield conn


def test_the_same_seed_gives_the_same_data_and_another_seed_does_not(fresh_admin_url: str) -> None:
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
        seed_database(conn, seed=7, **SMALL)  # type: ignore[arg-type]
        first = table_checksums(conn)
        seed_database(conn, seed=7, reset=True, **SMALL)  # type: ignore[arg-type]
        assert table_checksums(conn) == first
        seed_database(conn, seed=8, reset=True, **SMALL)  # type: ignore[arg-type]
        other = table_checksums(conn)
    assert other["usage_events"] != first["usage_events"]
    assert other["accounts"] != first["accounts"]


def test_seeding_a_database_that_has_data_needs_reset(seeded: psycopg.Connection[Any]) -> None:
    with pytest.raises(DataLayerError, match="--reset"):
        seed_database(seeded, seed=7, **SMALL)  # type: ignore[arg-type]


def _scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    row = conn.execute(query).fetchone()  # type: ignore[call-overload]
    assert row is not None
    return row[0]


def test_row_counts_and_every_status_are_present(seeded: psycopg.Connection[Any]) -> None:
    assert _scalar(seeded, "SELECT count(*) FROM usage_events") == 20_000
    assert _scalar(seeded, "SELECT count(*) FROM usage_event_keys") == 20_000
    assert _scalar(seeded, "SELECT count(*) FROM analytics_events") == 5_000
    subs = {r[0] for r in seeded.execute("SELECT DISTINCT status FROM subscriptions")}
    assert subs == {"incomplete", "trialing", "active", "past_due", "canceled", "replaced"}
    files = {r[0] for r in seeded.execute("SELECT DISTINCT status FROM files")}
    assert files == {"pending", "uploaded", "processing", "ready", "failed", "deleted"}
    plans = {r[0] for r in seeded.execute("SELECT DISTINCT code FROM plans")}
    assert plans == {"free", "pro", "enterprise"}
    assert _scalar(seeded, "SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL") > 0
    assert _scalar(seeded, "SELECT count(*) FROM api_keys WHERE expires_at IS NOT NULL") > 0
    assert _scalar(seeded, "SELECT count(*) FROM subscriptions WHERE replaces_id IS NOT NULL") > 0


def test_a_few_heavy_accounts_hold_much_of_the_usage(seeded: psycopg.Connection[Any]) -> None:
    top_share = _scalar(
        seeded,
        "SELECT sum(n)::float / (SELECT count(*) FROM usage_events) FROM ("
        " SELECT count(*) AS n FROM usage_events GROUP BY account_id ORDER BY n DESC LIMIT 6) t",
    )
    assert top_share > 0.3  # the top 10% of 60 accounts


def test_usage_has_a_weekly_cycle(seeded: psycopg.Connection[Any]) -> None:
    weekday, weekend = seeded.execute(
        "SELECT avg(n) FILTER (WHERE dow BETWEEN 1 AND 5), avg(n) FILTER (WHERE dow IN (0, 6))"
        " FROM (SELECT extract(dow FROM occurred_at AT TIME ZONE 'UTC') AS dow,"
        "       date_trunc('day', occurred_at, 'UTC') AS day, count(*) AS n"
        "       FROM usage_events GROUP BY 1, 2) d"
    ).fetchone() or (0, 0)
    assert float(weekend) < float(weekday) * 0.7


def test_rollups_equal_a_fresh_aggregate_of_the_raw_events(
    seeded: psycopg.Connection[Any],
) -> None:
    diff = _scalar(
        seeded,
        "SELECT count(*) FROM ("
        " (SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC'), count(*),"
        "  sum(quantity), max(quantity) FROM usage_events GROUP BY 1, 2, 3"
        "  EXCEPT SELECT account_id, meter_code, bucket_start, event_count, quantity_sum,"
        "  quantity_max FROM usage_rollups WHERE granularity = 'hour')"
        " UNION ALL"
        " (SELECT account_id, meter_code, date_trunc('day', occurred_at, 'UTC'), count(*),"
        "  sum(quantity), max(quantity) FROM usage_events GROUP BY 1, 2, 3"
        "  EXCEPT SELECT account_id, meter_code, bucket_start, event_count, quantity_sum,"
        "  quantity_max FROM usage_rollups WHERE granularity = 'day')) d",
    )
    assert diff == 0
    assert _scalar(seeded, "SELECT count(*) FROM usage_rollup_queue") == 0
    assert _scalar(seeded, "SELECT count(*) FROM analytics_daily_users") > 0


def test_the_ledger_balances_and_invoices_add_up(seeded: psycopg.Connection[Any]) -> None:
    assert (
        _scalar(
            seeded,
            "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries"
            " GROUP BY account_id, transaction_id HAVING sum(amount_minor) <> 0) t",
        )
        == 0
    )
    assert (
        _scalar(
            seeded,
            "SELECT count(*) FROM invoices i WHERE subtotal_minor <> (SELECT sum(amount_minor)"
            " FROM invoice_lines l WHERE l.account_id = i.account_id AND l.invoice_id = i.id)",
        )
        == 0
    )
    assert _scalar(seeded, "SELECT count(*) FROM invoices WHERE status = 'paid'") > 0


def test_partitions_cover_the_seeded_months_and_statistics_exist(
    seeded: psycopg.Connection[Any],
) -> None:
    names = {r[0] for r in seeded.execute("SELECT relname FROM pg_class WHERE relispartition")}
    for month in ("2026_08", "2026_09", "2026_10"):
        assert f"usage_events_{month}" in names
        assert f"analytics_events_{month}" in names
    assert (
        _scalar(seeded, "SELECT reltuples FROM pg_class WHERE relname = 'usage_events_2026_09'") > 0
    )


def test_the_seed_command_runs_and_reports_counts(fresh_admin_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "datalayer._cli", "--database-url", fresh_admin_url, "seed",
         "--accounts", "20", "--events", "2000", "--analytics", "500"],
        capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "usage_events" in result.stdout
    assert "seeded in" in result.stdout
    assert "usage events" in result.stderr  # the progress bar
