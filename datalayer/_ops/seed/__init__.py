"""``datalayer seed``: a deterministic, realistic data set, bulk-loaded with binary COPY.

Same ``seed`` and same anchor day → byte-identical data (every timestamp is
derived from the anchor, every id from RESTART IDENTITY). Account sizes follow a
Zipf law (a few heavy accounts), usage follows a daily and a weekly cycle.
"""

from __future__ import annotations

import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import psycopg
import psycopg.sql

from ...errors import DataLayerError
from ..backup import public_tables
from ..backup import table_checksums as backup_checksums
from ..partitions import ensure_partitions
from ..rollups import rebuild_rollups
from ._assets import seed_billing, seed_files_and_keys
from ._events import seed_analytics, seed_usage
from ._load import DAYS, Progress, SeedResult
from ._tenants import seed_accounts, seed_catalog, seed_subscriptions

__all__ = ["SeedResult", "seed_database", "table_checksums"]


def seed_database(
    conn: psycopg.Connection[Any],
    *,
    accounts: int = 1000,
    events: int = 1_000_000,
    analytics: int = 200_000,
    seed: int = 42,
    reset: bool = False,
    anchor: datetime | None = None,
    progress: TextIO | None = sys.stderr,
) -> SeedResult:
    """Fill a migrated database; ``conn`` must be in autocommit mode.

    ``anchor`` (default: today 00:00 UTC) is the end of the seeded history:
    usage and analytics cover the ``DAYS`` days before it. Raises
    ``DataLayerError`` when the database already holds accounts and
    ``reset`` is false; ``reset`` truncates every table first.
    """
    if accounts < 1 or events < 0 or analytics < 0:
        raise DataLayerError("accounts must be >= 1; events and analytics >= 0")
    anchor = anchor or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rng = random.Random(seed)
    bar = Progress(progress)
    result = SeedResult()
    # Bulk-load settings for this session: hash aggregates in memory, and no
    # waiting on WAL flushes (a crash mid-seed loses the seed, nothing else).
    # Reset afterwards, whatever happens: the caller may hand the connection on.
    for name, value in _BULK_SETTINGS:
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    try:
        return _seed(conn, accounts, events, analytics, reset, anchor, rng, bar, result)
    finally:
        if not conn.closed:
            for name, _ in _BULK_SETTINGS:
                conn.execute("SELECT set_config(%s, NULL, false)", (name,))


_BULK_SETTINGS = (
    ("work_mem", "256MB"),
    ("maintenance_work_mem", "512MB"),
    ("synchronous_commit", "off"),
)


def _seed(
    conn: psycopg.Connection[Any],
    accounts: int,
    events: int,
    analytics: int,
    reset: bool,
    anchor: datetime,
    rng: random.Random,
    bar: Progress,
    result: SeedResult,
) -> SeedResult:
    def step(name: str, started: float) -> None:
        result.timings[name] = round(time.monotonic() - started, 2)

    t = time.monotonic()
    existing = conn.execute("SELECT count(*) FROM accounts").fetchone()
    if existing and existing[0] and not reset:
        raise DataLayerError(
            f"the database already has {existing[0]} accounts;"
            " pass reset=True (--reset) to replace them"
        )
    # The ledger refuses TRUNCATE (plain layout: on Citus the distribution step has
    # dropped those triggers); a reset is the one sanctioned exception, and the
    # triggers are back on when this transaction commits.
    guarded = [
        str(table)
        for (table,) in conn.execute(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relname IN ('ledger_entries', 'ledger_transactions')"
            "   AND t.tgname = c.relname || '_no_truncate'"
        ).fetchall()
    ]
    with conn.transaction():
        for table in guarded:
            conn.execute(
                psycopg.sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
                    psycopg.sql.Identifier(table), psycopg.sql.Identifier(f"{table}_no_truncate")
                )
            )
        conn.execute(
            psycopg.sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, public_tables(conn)))
            )
        )
        for table in guarded:
            conn.execute(
                psycopg.sql.SQL("ALTER TABLE {} ENABLE TRIGGER {}").format(
                    psycopg.sql.Identifier(table), psycopg.sql.Identifier(f"{table}_no_truncate")
                )
            )
    conn.execute(
        "SELECT setval('usage_events_id_seq', 1, false),"
        " setval('analytics_events_id_seq', 1, false)"
    )
    start = anchor - timedelta(days=DAYS)
    ensure_partitions(conn, start=start, now=max(anchor, datetime.now(UTC)))
    step("prepare", t)

    t = time.monotonic()
    plan_ids = seed_catalog(conn, anchor)
    sizes = seed_accounts(conn, rng, accounts, anchor, result)
    subs = seed_subscriptions(conn, rng, sizes, plan_ids, anchor, result)
    step("accounts, users, plans, subscriptions", t)

    t = time.monotonic()
    result.counts["usage_events"] = seed_usage(conn, rng, sizes, events, anchor, bar)
    step("usage events", t)
    t = time.monotonic()
    result.counts["analytics_events"] = seed_analytics(conn, rng, sizes, analytics, anchor, bar)
    step("analytics events", t)

    t = time.monotonic()
    seed_files_and_keys(conn, rng, sizes, anchor, result)
    seed_billing(conn, rng, subs, plan_ids, anchor, result)
    link_billing_periods(conn, result)
    step("files, keys, billing", t)

    t = time.monotonic()
    rebuild_rollups(conn)
    step("rollups", t)
    t = time.monotonic()
    # VACUUM too: it sets the visibility map, so index-only scans skip the heap
    # as they do on a live database that autovacuum keeps up.
    conn.execute("VACUUM (ANALYZE)")
    step("vacuum, analyze", t)
    return result


def link_billing_periods(conn: psycopg.Connection[Any], result: SeedResult) -> None:
    """Each seeded subscription's period as a billing period, linked to its invoice.

    Periods invoiced (issued) by the seed are ``legacy``: their usage lines
    were written as the seed pleases, so late usage of them is not adjusted;
    a seeded draft's period is not, and the billing run makes it properly.
    """
    with conn.transaction():
        # Three statements: a data-modifying CTE's rows are invisible to the rest of
        # its statement, so the periods must exist before invoices name them.
        conn.execute(
            """
            INSERT INTO billing_periods (account_id, chain_id, subscription_id, base_plan_id,
                                         period_start, period_end, closes_at, trial_end,
                                         created_at)
            SELECT account_id, chain_id, id, plan_id, current_period_start, current_period_end,
                   CASE WHEN status = 'canceled'
                        THEN greatest(current_period_start, least(ended_at, current_period_end))
                        ELSE current_period_end END,
                   CASE WHEN trial_end > current_period_start THEN trial_end END,
                   current_period_start
            FROM subscriptions
            WHERE status <> 'incomplete'
            """
        )
        conn.execute(
            """
            UPDATE invoices i
            SET chain_id = p.chain_id, billing_period_id = p.id
            FROM billing_periods p, subscriptions s
            WHERE s.account_id = i.account_id AND s.id = i.subscription_id
              AND p.account_id = s.account_id AND p.chain_id = s.chain_id
              AND p.period_start = i.period_start
            """
        )
        conn.execute(
            """
            UPDATE billing_periods p
            SET invoice_id = i.id, legacy = i.status <> 'draft', settled = i.status <> 'draft'
            FROM invoices i
            WHERE i.account_id = p.account_id AND i.billing_period_id = p.id
            """
        )
        count = conn.execute("SELECT count(*) FROM billing_periods").fetchone()
    result.counts["billing_periods"] = int(count[0]) if count else 0


def table_checksums(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """An md5 per table over its rows in a stable order, for comparing two loads.

    ``refreshed_at`` (when a rollup was last recomputed) is bookkeeping, not
    data, and is left out.
    """
    sums = backup_checksums(conn, ignore_columns=frozenset({"refreshed_at"}))
    return {table: str(meta["md5"]) for table, meta in sums.items()}
