"""``datalayer bench``: query timings as ratios to a raw-psycopg baseline measured in the same run.

Numbers on a shared 2-core machine drift from run to run, so every scenario
is reported with its baseline's figure from this run and the ratio between
them. Latency scenarios: p50/p95/p99 in µs and ops/s at 1 and 4 threads,
after a warm-up. Throughput scenarios (ingestion): events/s, ratio = baseline
events/s over this one's.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from psycopg.types.json import Jsonb

from ._database import Database
from ._rollups import refresh_rollups
from .models.plans import PlanMeterSpec
from .models.usage import UsageEventIn

__all__ = ["Result", "run_bench"]


@dataclass
class Result:
    """One scenario's figures (``ratio`` against ``baseline``, when it has one)."""

    name: str
    p50_us: float
    p95_us: float
    p99_us: float
    ops_per_s: float
    threads: int
    baseline: str | None = None
    ratio: float | None = None


def _percentile(sorted_ns: list[int], q: float) -> float:
    index = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[index] / 1000


def _latency(name: str, fn: Callable[[], object], iterations: int, threads: int) -> Result:
    for _ in range(min(200, iterations // 5)):  # warm-up: pool, prepared statements, caches
        fn()
    samples: list[int] = []
    lock = threading.Lock()
    per_thread = max(1, iterations // threads)

    def work() -> None:
        local = []
        for _ in range(per_thread):
            start = time.perf_counter_ns()
            fn()
            local.append(time.perf_counter_ns() - start)
        with lock:
            samples.extend(local)

    started = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    samples.sort()
    return Result(
        name=name,
        p50_us=round(statistics.median(samples) / 1000, 1),
        p95_us=round(_percentile(samples, 0.95), 1),
        p99_us=round(_percentile(samples, 0.99), 1),
        ops_per_s=round(len(samples) / elapsed, 1),
        threads=threads,
    )


def _pair(
    results: list[Result],
    name: str,
    fn: Callable[[], object],
    baseline: str,
    base_fn: Callable[[], object],
    iterations: int,
) -> None:
    """Measure a scenario and its baseline back to back, at 1 and 4 threads."""
    for threads in (1, 4):
        base = _latency(baseline, base_fn, iterations, threads)
        this = _latency(name, fn, iterations, threads)
        this.baseline = baseline
        this.ratio = round(this.p50_us / base.p50_us, 3) if base.p50_us else None
        results += [base, this]


def _throughput(name: str, events: int, seconds: float) -> Result:
    per_event = seconds / events * 1e6
    return Result(name, round(per_event, 2), round(per_event, 2), round(per_event, 2),
                  round(events / seconds, 1), 1)  # fmt: skip


def run_bench(db: Database, *, quick: bool = False) -> list[Result]:
    """Run every scenario on ``db`` (seeded, with a live account); return the results."""
    n = 500 if quick else 3000
    results: list[Result] = []
    refresh_rollups(db)  # measure reads against rolled-up data, as a running system has
    with db.connection() as conn:
        row = conn.execute(
            "SELECT account_id FROM usage_events GROUP BY account_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise RuntimeError("the database has no usage: run `datalayer seed` first")
        heavy = int(row[0])
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )

    pk_sql = (
        "SELECT id, name, status, created_at, updated_at, deleted_at"
        " FROM accounts WHERE id = %(id)s"
    )

    def raw_pk() -> object:
        with db._pool.connection() as conn:
            return conn.execute(pk_sql, {"id": heavy}).fetchone()

    _pair(results, "pk_lookup", lambda: db.accounts.get(account_id=heavy), "raw_pk_lookup",
          raw_pk, n)  # fmt: skip

    month_end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    month_start = month_end - timedelta(days=30)
    raw_summary = (
        "SELECT meter_code, count(*), sum(quantity), max(quantity) FROM usage_events"
        " WHERE account_id = %(a)s AND occurred_at >= %(lo)s AND occurred_at < %(hi)s GROUP BY 1"
    )

    def usage_raw() -> object:
        with db._pool.connection() as conn:
            return conn.execute(
                raw_summary, {"a": heavy, "lo": month_start, "hi": month_end}
            ).fetchall()

    _pair(
        results,
        "usage_summary_rollup",
        lambda: db.usage_reports.period_totals(
            account_id=heavy, period_start=month_start, period_end=month_end
        ),
        "usage_summary_raw",
        usage_raw,
        max(50, n // 10),
    )

    if db.cache.enabled:
        db.cache.namespace = f"bench-{uuid.uuid4().hex[:6]}"
        issued = db.api_keys.issue(account_id=heavy, name="bench", environment="live", scopes=[])
        secret = issued.secret.get_secret_value()
        _pair(results, "auth_cached", lambda: db.cached.auth(secret=secret), "auth_uncached",
              lambda: db.cached._build_auth(secret), n)  # fmt: skip

    _domain_scenarios(db, results, heavy, n)

    events = 20_000 if quick else 100_000
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    batch = [
        UsageEventIn(account_id=heavy, meter_code="api_calls", quantity=Decimal(1),
                     occurred_at=now - timedelta(seconds=i % 3600),
                     idempotency_key=f"bench-{tag}-{i if i % 10 else i - 1}")
        for i in range(events)
    ]  # fmt: skip  # 10% duplicates
    rows = [(e.account_id, e.meter_code, e.quantity, e.occurred_at, f"raw-{e.idempotency_key}-{i}",
             Jsonb({})) for i, e in enumerate(batch)]  # fmt: skip
    started = time.perf_counter()
    with (
        db.connection() as conn,
        conn.transaction(),
        conn.cursor().copy(
            "COPY usage_events (account_id, meter_code, quantity, occurred_at, idempotency_key,"
            " properties) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int8", "text", "numeric", "timestamptz", "text", "jsonb"])
        for r in rows:
            copy.write_row(r)
    raw = _throughput("raw_copy", events, time.perf_counter() - started)
    started = time.perf_counter()
    db.usage.record_batch(events=batch)
    exact = _throughput("ingest_exactly_once", events, time.perf_counter() - started)
    exact.baseline = "raw_copy"
    exact.ratio = round(raw.ops_per_s / exact.ops_per_s, 3)
    results += [raw, exact]
    return results


def _domain_scenarios(db: Database, results: list[Result], heavy: int, n: int) -> None:
    """Scenarios without a raw twin: reported as latencies, ``baseline`` None."""
    tag = uuid.uuid4().hex[:8]
    meter = PlanMeterSpec(
        meter_code="api_calls",
        included_quantity=Decimal(10**9),
        limit_kind="hard",
        overage_unit_price_minor=Decimal(0),
    )
    plan = db.plans.create_draft(
        code=f"bench-{tag}",
        name="Bench",
        billing_interval="month",
        base_price_minor=1000,
        currency="USD",
        meters=[meter],
    )
    db.plans.publish(plan_id=plan.id)
    account = db.accounts.create(name=f"bench {tag}").id
    sub = db.subscriptions.start(account_id=account, plan_id=plan.id)

    def consume() -> object:
        return db.quotas.consume(account_id=account, meter_code="api_calls", quantity=Decimal(1))

    results.append(_latency("quota_consume", consume, n, 1))

    files = max(50, n // 10)
    for i in range(files * 2):
        f = db.files.register(
            account_id=account,
            storage_key=f"bench/{tag}/{i}",
            file_name="b.bin",
            content_type="application/octet-stream",
        )
        db.files.mark_uploaded(
            account_id=account, file_id=f.id, size_bytes=1, checksum_sha256="0" * 64
        )

    def claim() -> object:
        return db.files.claim(limit=1, lease=timedelta(minutes=5))

    results.append(_latency("file_claim", claim, files, 1))

    def invoice() -> object:
        return db.billing.generate_invoice(
            account_id=account,
            subscription_id=sub.id,
            period_start=sub.current_period_start,
            period_end=sub.current_period_end,
        )

    results.append(_latency("invoice_generate", invoice, max(50, n // 10), 1))

    with db.connection() as conn:
        row = conn.execute(
            "SELECT account_id, max(day) FROM analytics_daily_rollups"
            " GROUP BY account_id ORDER BY sum(event_count) DESC LIMIT 1"
        ).fetchone()
    if row is None:
        return
    busy, last_day = int(row[0]), row[1]

    def dau() -> object:
        return db.analytics.active_users(
            account_id=busy,
            start_date=last_day - timedelta(days=29),
            end_date=last_day + timedelta(days=1),
            window="day",
        )

    def latency() -> object:
        return db.analytics.latency_percentiles(
            account_id=busy, start_date=last_day, end_date=last_day + timedelta(days=1)
        )

    results.append(_latency("dau_30d", dau, n, 1))
    results.append(_latency("latency_percentiles_day", latency, n, 1))


def write_json(results: list[Result], path: Path) -> None:
    """Write ``{"scenarios": [...]}`` to ``path``."""
    path.write_text(json.dumps({"scenarios": [asdict(r) for r in results]}, indent=2))


def format_table(results: list[Result]) -> str:
    """A fixed-width table of the results."""
    head = (
        f"{'scenario':<24} {'thr':>3} {'p50 µs':>9} {'p95 µs':>9} {'p99 µs':>9} "
        f"{'ops/s':>10}  ratio (vs)"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.ratio:.2f} ({r.baseline})" if r.ratio is not None else ""
        lines.append(
            f"{r.name:<24} {r.threads:>3} {r.p50_us:>9.1f} {r.p95_us:>9.1f} {r.p99_us:>9.1f} "
            f"{r.ops_per_s:>10.1f}  {ratio}"
        )
    return "\n".join(lines)


def describe(results: list[Result]) -> dict[str, Any]:
    """Just the ratios, by scenario and thread count (for notes and tests)."""
    return {f"{r.name}@{r.threads}": r.ratio for r in results if r.ratio is not None}
