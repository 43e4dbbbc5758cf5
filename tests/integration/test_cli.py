"""The datalayer command: migrate, status, rollback, demo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import pg_url
from psycopg import sql

ENV_URLS = ("DATABASE_URL", "DATALAYER_ADMIN_URL")


def run(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datalayer._cli", "--database-url", url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if k not in ENV_URLS},
    )


@pytest.fixture
def new_url() -> Iterator[str]:
    name = f"dl_cli_{uuid.uuid4().hex[:12]}"
    yield pg_url(name)
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_migrate_status_rollback_round_trip(new_url: str) -> None:
    first = run("migrate", url=new_url)
    assert first.returncode == 0, first.stderr
    assert "applied 0001_accounts_users" in first.stdout
    assert "applied  0001_accounts_users" in run("status", url=new_url).stdout
    back = run("rollback", "--all", url=new_url)
    assert "rolled back 0001_accounts_users" in back.stdout
    assert "pending  0001_accounts_users" in run("status", url=new_url).stdout


def test_an_unreachable_database_exits_non_zero_with_a_clear_message() -> None:
    result = run("migrate", url="postgresql://postgres:hunter2-pw@127.0.0.1:1/x", timeout=60)
    assert result.returncode == 2
    assert "datalayer migrate:" in result.stderr
    assert "hunter2-pw" not in result.stderr + result.stdout


def test_the_demo_tours_the_library_and_exits_zero(new_url: str) -> None:
    result = run("demo", url=new_url, timeout=180)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "applied: 0001_accounts_users" in out
    assert "AlreadyExists, constraint='users_email_key'" in out
    assert "the tour runs as datalayer_app" in out
    assert "DELETE FROM ledger_entries: PermissionDenied" in out
    assert "InvalidInput, field='email'" in out
    assert "after rollback: None" in out
    assert "search(term='0%') -> ['00% off', '10% off', '20% off']" in out
    assert "a second start: LiveSubscriptionExists" in out
    assert "InvalidTransition: plan basic-" in out
    assert ": ready" in out
    assert "after revoke -> None" in out
    assert "inserted 80, duplicates 20, rejected ['unknown meter']" in out
    assert "QuotaExceeded: limit 10000, used 9990, remaining 10" in out
    assert "run: renewed 1, generated 1, finalized 1, failed 0" in out
    assert "run again -> generated 0: every period is invoiced once" in out
    assert "now paid" in out
    assert "balance USD: receivable 0" in out
    assert "after revoke -> None; stats" in out  # Redis runs here and in CI
    assert "repository get:" in out
    assert "demo finished" in out


def test_partitions_add_index_builds_a_valid_index_on_every_partition(fresh_admin_url: str) -> None:
    args = ["partitions", "add-index", "--table", "usage_events"]
    args += ["--index", "usage_events_api_key_idx", "--columns", "account_id,api_key_id"]
    for _ in range(2):  # rerunnable
        result = run(*args, url=fresh_admin_url)
        assert result.returncode == 0, result.stderr
    with psycopg.connect(fresh_admin_url) as conn:
        row = conn.execute(
            "SELECT i.indisvalid,"
            " (SELECT count(*) FROM pg_inherits WHERE inhparent = i.indexrelid),"
            " (SELECT count(*) FROM pg_inherits WHERE inhparent = 'usage_events'::regclass)"
            " FROM pg_index i WHERE i.indexrelid = 'usage_events_api_key_idx'::regclass"
        ).fetchone()
    assert row is not None
    valid, attached, partitions = row
    assert valid
    assert attached == partitions > 0
    missing = run("partitions", "add-index", "--table", "usage_events", url=fresh_admin_url)
    assert missing.returncode == 2
    assert "needs --table, --index and --columns" in missing.stderr


@pytest.mark.slow
def test_the_demo_runs_on_an_embedded_postgresql_when_asked() -> None:
    # A server of its own (the demo keeps its data in $TMPDIR): the demo's billing run bills
    # every due period in its database, so two test runs sharing the default directory
    # would bill each other's subscriptions from under each other. A short path: the
    # server's socket goes there too, and socket paths are limited to about 100 bytes.
    own = Path(tempfile.mkdtemp(prefix="dldemo-"))
    env = {k: v for k, v in os.environ.items() if k not in ENV_URLS}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "datalayer._cli", "demo", "--embedded"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**env, "TMPDIR": str(own)},
        )
    finally:
        shutil.rmtree(own, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    assert f"using an embedded PostgreSQL in {own}" in result.stdout
    assert "demo finished" in result.stdout


def test_backup_verify_restore_and_archive_commands(
    fresh_admin_url: str, tmp_path: Path, new_url: str
) -> None:
    made = run("backup", "--out", str(tmp_path), url=fresh_admin_url)
    assert made.returncode == 0, made.stderr
    (dump,) = tmp_path.glob("*.dump")
    assert (tmp_path / dump.name.replace(".dump", ".manifest.json")).exists()
    verified = run("backup", "verify", str(dump), url=fresh_admin_url)
    assert verified.returncode == 0, verified.stderr
    target = psycopg.conninfo.conninfo_to_dict(new_url)["dbname"]
    restored = run("restore", str(dump), "--into", str(target), url=fresh_admin_url)
    assert restored.returncode == 0, restored.stderr
    again = run("restore", str(dump), "--into", str(target), url=fresh_admin_url)
    assert again.returncode == 2
    assert "already exists" in again.stderr
    dry = run("archive", "--dry-run", "--out", str(tmp_path / "archive"), url=fresh_admin_url)
    assert dry.returncode == 0, dry.stderr
    assert "nothing older than 13 months" in dry.stdout


def test_billing_run_invoices_a_closed_period_once_and_prints_its_counts(fresh_url: str) -> None:
    from datetime import UTC, datetime, timedelta

    from datalayer import Database, Settings

    start = datetime.now(UTC).replace(microsecond=0)
    with Database(Settings(database_url=fresh_url)) as db:
        draft = db.plans.create_draft(
            code="daily", name="Daily", billing_interval="day", base_price_minor=100,
            currency="USD",
        )  # fmt: skip
        plan = db.plans.publish(plan_id=draft.id)
        account = db.accounts.create(name="Cron")
        db.subscriptions.start(account_id=account.id, plan_id=plan.id, now=start)
    at = (start + timedelta(days=1, hours=2)).isoformat()
    first = run("billing", "run", "--now", at, url=fresh_url)
    assert first.returncode == 0, first.stderr
    assert "billing run: renewed 1, generated 1, refreshed 0, finalized 1," in first.stdout
    again = run("billing", "run", "--now", at, url=fresh_url)
    assert "renewed 0, generated 0, refreshed 0, finalized 0," in again.stdout
    # A mistyped year would renew the daily plan ~65,000 times: refused before any SQL.
    typo = run("billing", "run", "--now", "2206-01-01T00:00:00+00:00", url=fresh_url)
    assert typo.returncode == 2
    assert "InvalidInput: now: must be at most 1830 days (five years) past" in typo.stderr
    with Database(Settings(database_url=fresh_url)) as db:
        [live] = db.subscriptions.history(account_id=account.id).items
        assert live.current_period_end == start + timedelta(days=2)
