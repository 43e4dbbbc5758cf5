"""``datalayer bench``: query timings as ratios to a raw-psycopg baseline measured in the same run.

Numbers on a shared 2-core machine drift from run to run, so every scenario
is reported with its baseline's figure from this run and the ratio between
them. Latency scenarios: p50/p95/p99 in µs and ops/s at 1 and 4 threads,
after a warm-up. A scenario and its baseline are measured call by call in
turn (baseline, scenario, baseline, scenario, … with the order rotating), so
a drift of the machine falls on both alike and neither runs with caches warmed
by a thousand calls of itself.
Throughput scenarios (ingestion): events/s, ratio = baseline events/s over
this one's.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from .. import _telemetry
from .._database import Database
from .._ops.rollups import refresh_rollups
from ..models.plans import PlanMeterSpec
from ..models.usage import UsageEventIn

__all__ = ["Profile", "Result", "against_plain", "machine", "run_bench", "scale_out_lookups"]

Fn = Callable[[], object]
M = TypeVar("M")
THREADS = (1, 4)


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


@dataclass(frozen=True)
class Profile:
    """How much to measure: calls per latency scenario and thread count, the ingestion batch."""

    iterations: int = 3000
    events: int = 100_000
    peers: bool = True
    scale: bool = False
    # Where the bench's own setup and cleanup connect (its 10x events, their removal,
    # ANALYZE): the admin URL, since the application role may not delete events. None:
    # the database's own URL (a single-role setup).
    admin_url: str | None = None

    @classmethod
    def quick(cls, **changes: Any) -> Profile:
        """Enough for stable medians in well under two minutes."""
        return cls(**{"iterations": 800, "events": 20_000, **changes})


def _summary(name: str, ns: list[int], threads: int) -> Result:
    """Percentiles of ``ns``; ops/s as ``threads`` callers would do it alone (threads / mean)."""
    ns = sorted(ns)
    return Result(
        name=name,
        p50_us=round(statistics.median(ns) / 1000, 1),
        p95_us=round(percentile_us(ns, 0.95), 1),
        p99_us=round(percentile_us(ns, 0.99), 1),
        ops_per_s=round(threads * 1e9 / statistics.fmean(ns), 1),
        threads=threads,
    )


def percentile_us(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in µs (0 for no samples)."""
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000


def shuffled_rounds(members: Sequence[M], rounds: int, seed: int) -> Iterator[list[M]]:
    """``rounds`` orders of ``members``, each shuffled anew (seeded: runs repeat)."""
    order = list(members)
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        yield order


def _interleaved(
    members: Sequence[tuple[str, Fn]], calls: int, threads: int
) -> dict[str, list[int]]:
    """Each of ``threads`` threads calls every member once per round, ``calls // threads`` rounds.

    Each round's order is shuffled (a fixed seed per thread, so runs repeat), so
    no member always runs first or right after another: what a call leaves
    behind (a heavy neighbour's garbage, a connection's warm caches, the GIL
    held by a busy thread) falls on every member alike. A rotated order put
    each member right after the same one in all but one round of ``len(members)``:
    the primary-key read measured 1.00x or 1.06x the raw call at one thread by
    whether its neighbour was the traced read or the raw one.
    """
    samples: dict[str, list[int]] = {name: [] for name, _ in members}
    lock = threading.Lock()
    per_thread = max(1, calls // threads)

    def work(seed: int) -> None:
        local: dict[str, list[int]] = {name: [] for name, _ in members}
        for order in shuffled_rounds(members, per_thread, seed):
            for name, fn in order:
                start = time.perf_counter_ns()
                fn()
                local[name].append(time.perf_counter_ns() - start)
        with lock:
            for name, ns in local.items():
                samples[name].extend(ns)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return samples


def _group(
    results: list[Result],
    scenarios: Sequence[tuple[str, Fn]],
    profile: Profile,
    *,
    baseline: tuple[str, Fn] | None = None,
    iterations: int | None = None,
) -> None:
    """Measure ``scenarios`` (and their ``baseline``) at 1 and 4 threads, calls interleaved."""
    calls = iterations or profile.iterations
    members = ([baseline] if baseline else []) + list(scenarios)
    for _, fn in members:  # warm-up: pool, prepared statements, caches
        for _ in range(min(200, max(5, calls // 10))):
            fn()
    for threads in THREADS:
        samples = _interleaved(members, calls, threads)
        base = _summary(baseline[0], samples[baseline[0]], threads) if baseline else None
        if base is not None:
            results.append(base)
        for name, _ in scenarios:
            this = _summary(name, samples[name], threads)
            if base is not None:
                this.baseline = base.name
                this.ratio = round(this.p50_us / base.p50_us, 3) if base.p50_us else None
            results.append(this)


def _throughput(name: str, events: int, seconds: float) -> Result:
    per_event = round(seconds / events * 1e6, 2)
    return Result(name, per_event, per_event, per_event, round(events / seconds, 1), 1)


def run_bench(
    db: Database,
    profile: Profile | None = None,
    *,
    database_url: str | None = None,
    pgbouncer: Database | None = None,
) -> list[Result]:
    """Run every scenario on ``db`` (seeded); return the results.

    ``database_url`` (default: ``db``'s) is where the peers connect; they run
    when ``profile.peers`` and their libraries are installed. With replicas in
    ``db.settings`` and/or ``pgbouncer`` (the same database through PgBouncer),
    the scale-out lookups run too.
    """
    profile = profile or Profile()
    results: list[Result] = []
    refresh_rollups(db)  # measure reads against rolled-up data, as a running system has
    heavy = _heavy_account(db)
    _pk_lookups(db, results, profile, heavy, database_url or db.settings.database_url)
    scale_out_lookups(db, results, profile, heavy, pgbouncer=pgbouncer)
    _usage_summaries(db, results, profile, heavy)
    if db.cache.enabled:
        _auth(db, results, profile, heavy)
    _domain_scenarios(db, results, profile)
    _billing_run(db, results)
    _ingestion(db, results, profile, heavy)
    return results


def against_plain(plain: Sequence[Result], cluster: Sequence[Result]) -> list[Result]:
    """``cluster``'s results (the same scenarios on Citus) as ratios to ``plain``'s.

    Each becomes ``citus_<name>`` with the plain run's scenario of the same
    name and threads as its baseline: the ratio is what a call costs on the
    cluster relative to plain PostgreSQL (for throughput scenarios, plain
    events/s over the cluster's). The cluster's own ratios to its raw
    baselines are in the ``citus_raw_*`` rows' figures.
    """
    by_key = {(r.name, r.threads): r for r in plain}
    out = []
    for r in cluster:
        base = by_key.get((r.name, r.threads))
        ratio = None
        if base is not None:
            if r.name in _THROUGHPUT:
                ratio = round(base.ops_per_s / r.ops_per_s, 3) if r.ops_per_s else None
            elif base.p50_us:
                ratio = round(r.p50_us / base.p50_us, 3)
        out.append(
            Result(
                f"citus_{r.name}", r.p50_us, r.p95_us, r.p99_us, r.ops_per_s, r.threads,
                baseline=base.name if base else None, ratio=ratio,
            )
        )  # fmt: skip
    return out


_THROUGHPUT = frozenset(
    {"raw_copy", "ingest_exactly_once", "raw_async_copy", "async_ingest_exactly_once"}
)


METER = "api_calls"


def heaviest_account(db: Database) -> int | None:
    """The account with the most usage events (``None`` without usage); ensures the meter."""
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )
        row = conn.execute(
            "SELECT account_id FROM usage_events GROUP BY account_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    return None if row is None else int(row[0])


def _heavy_account(db: Database) -> int:
    heavy = heaviest_account(db)
    if heavy is None:
        raise RuntimeError("the database has no usage: run `datalayer seed` first")
    return heavy


def hard_quota_plan(db: Database, *, code: str, included: int, base_price_minor: int) -> int:
    """Publish a monthly plan with a hard quota of ``included`` on ``api_calls``; its id."""
    meter = PlanMeterSpec(
        meter_code=METER,
        included_quantity=Decimal(included),
        limit_kind="hard",
        overage_unit_price_minor=Decimal(0),
    )
    plan = db.plans.create_draft(
        code=code,
        name=code,
        billing_interval="month",
        base_price_minor=base_price_minor,
        currency="USD",
        meters=[meter],
    )
    db.plans.publish(plan_id=plan.id)
    return plan.id


_PK_SQL = (
    "SELECT id, name, status, created_at, updated_at, deleted_at FROM accounts WHERE id = %(id)s"
)
PK_SQL_POSITIONAL = _PK_SQL.replace("%(id)s", "%s")


def _pk_lookups(
    db: Database, results: list[Result], profile: Profile, heavy: int, database_url: str
) -> None:
    pool = db._pool

    def raw_pk() -> object:
        # The leanest raw psycopg call on the same pool: getconn/putconn, a positional
        # parameter, tuple rows. The baseline of every primary-key lookup.
        conn = pool.getconn()
        try:
            return conn.execute(PK_SQL_POSITIONAL, (heavy,)).fetchone()
        finally:
            pool.putconn(conn)

    def raw_pk_named() -> object:
        # What the baseline was before: the pool's context manager and a named parameter.
        with pool.connection() as conn:
            return conn.execute(_PK_SQL, {"id": heavy}).fetchone()

    def pk_lookup() -> object:
        return db.accounts.get(account_id=heavy)

    # Three groups, each with the raw call timed beside its members. The first holds
    # the figure the library is held to: its read against the raw call, nothing else
    # in the caches. Interleaved with the peers (SQLAlchemy's ORM takes ~5x the time
    # of a raw read, most of it Python), every call finds colder caches, and the one
    # with the most code of its own beyond psycopg pays most: pk_lookup read 1.10-1.12x
    # there at one thread and 1.04-1.06x in its own group. The peers' group shows both.
    lean: list[tuple[str, Fn]] = [("raw_pk_lookup_named", raw_pk_named), ("pk_lookup", pk_lookup)]
    _group(results, lean, profile, baseline=("raw_pk_lookup", raw_pk))
    if profile.peers:
        from .peers import available_peers, missing_peers

        for name in missing_peers():
            print(f"peer {name} skipped: pip install 'datalayer[bench]'")
        peers = available_peers(database_url, heavy, pool_size=max(THREADS))
        beside: list[tuple[str, Fn]] = [("pk_lookup_beside_peers", pk_lookup)]
        try:
            beside += [(p.name, p.call) for p in peers]
            _group(results, beside, profile, baseline=("raw_pk_lookup_beside_peers", raw_pk))
        finally:
            for p in peers:
                p.close()
    # Tracing on is a switch for the whole process: every call of the library is
    # traced while it is on, whichever thread makes it. So the traced read is timed
    # with tracing on throughout its group. Switched per call beside pk_lookup, it
    # traced pk_lookup's calls on the other threads too: pk_lookup read 1.11x instead
    # of 1.02x the raw call at 4 threads.
    with _tracing() as on:
        if on:
            traced = [("traced_pk_lookup", pk_lookup)]
            _group(results, traced, profile, baseline=("raw_pk_lookup_beside_traced", raw_pk))


@contextmanager
def _tracing() -> Iterator[bool]:
    """OpenTelemetry on for the block (the SDK, spans sent to an exporter that drops
    them), for the cost of tracing; yields ``False`` (and traces nothing) without
    the SDK."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            SimpleSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        print("traced_pk_lookup skipped: pip install opentelemetry-sdk")
        yield False
        return

    class Drop(SpanExporter):
        def export(self, spans: object) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    previous, _telemetry.ACTIVE = _telemetry.ACTIVE, _telemetry.Telemetry(provider, MeterProvider())
    try:
        yield True
    finally:
        _telemetry.ACTIVE = previous


def scale_out_lookups(
    db: Database,
    results: list[Result],
    profile: Profile,
    account_id: int,
    *,
    pgbouncer: Database | None = None,
) -> None:
    """The cost of each hop: ``accounts.get`` through PgBouncer (``pgbouncer_pk_lookup``) and
    on a replica (``replica_pk_lookup``, the account marked as written so that every read
    checks the replica's replay LSN first), against the same call on ``db`` directly.

    Does nothing when ``db`` has no replicas and ``pgbouncer`` is ``None``.
    """
    scenarios: list[tuple[str, Fn]] = []
    if pgbouncer is not None:
        scenarios.append(
            ("pgbouncer_pk_lookup", lambda: pgbouncer.accounts.get(account_id=account_id))
        )
    if db._replicas is not None:
        with db.connection() as conn:  # the account "was written": reads check the LSN
            db._remember_writes(conn, [account_id])
        scenarios.append(
            ("replica_pk_lookup", lambda: db.replica.accounts.get(account_id=account_id))
        )
    if scenarios:
        direct = ("pk_lookup_direct", lambda: db.accounts.get(account_id=account_id))
        _group(results, scenarios, profile, baseline=direct)


_RAW_SUMMARY = (
    "SELECT meter_code, count(*), sum(quantity), max(quantity) FROM usage_events"
    " WHERE account_id = %(a)s AND occurred_at >= %(lo)s AND occurred_at < %(hi)s GROUP BY 1"
)


def _usage_summaries(db: Database, results: list[Result], profile: Profile, heavy: int) -> None:
    """A heavy account's usage per meter for the last 30 days: rollups against raw events."""
    hi = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    lo = hi - timedelta(days=30)

    def raw() -> object:
        with db._pool.connection() as conn:
            return conn.execute(_RAW_SUMMARY, {"a": heavy, "lo": lo, "hi": hi}).fetchall()

    def rollup() -> object:
        return db.usage_reports.period_totals(account_id=heavy, period_start=lo, period_end=hi)

    calls = max(40, profile.iterations // 10)
    pair = [("usage_summary_rollup", rollup)]
    _group(results, pair, profile, baseline=("usage_summary_raw", raw), iterations=calls)
    if not profile.scale:
        return
    # The same summary with 10x the heavy account's events in the window.
    before = {(r.name, r.threads): r for r in results}
    try:
        added = _grow_usage(db, heavy, lo, hi, factor=10, admin_url=profile.admin_url)
        grown: list[Result] = []  # the raw summary takes ~1 s here: fewer calls
        raw_calls = max(20, calls // 5)
        _group(grown, pair, profile, baseline=("usage_summary_raw", raw), iterations=raw_calls)
        for r in grown:
            r.name += "_10x"
            r.baseline = r.name.removesuffix("_10x")  # ratio: the growth of its p50
            r.ratio = round(r.p50_us / before[(r.baseline, r.threads)].p50_us, 3)
        results.extend(grown)
        print(f"--scale: added {added:,} events to account {heavy} (10x), then removed them")
    finally:
        _delete_events(db, profile.admin_url, heavy, "bench-scale-%")


@contextmanager
def _owner(db: Database, admin_url: str | None) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for the bench's own setup and cleanup (see Profile)."""
    if admin_url is None:
        with db.connection() as conn:
            yield conn
        return
    with psycopg.connect(admin_url, autocommit=True) as conn:
        yield conn


def _grow_usage(
    db: Database, account: int, lo: datetime, hi: datetime, factor: int, admin_url: str | None
) -> int:
    """Copy the account's events in [lo, hi) ``factor - 1`` more times (same hours), rolled up."""
    with _owner(db, admin_url) as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")  # bulk work, not a request
        added = conn.execute(
            "INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,"
            " idempotency_key, properties)"
            " SELECT e.account_id, e.meter_code, e.quantity,"
            "        e.occurred_at + (g * interval '1 millisecond'),"
            "        'bench-scale-' || e.id || '-' || g, e.properties"
            " FROM usage_events e CROSS JOIN generate_series(1, %(copies)s) g"
            " WHERE e.account_id = %(a)s AND e.occurred_at >= %(lo)s AND e.occurred_at < %(hi)s",
            {"a": account, "lo": lo, "hi": hi, "copies": factor - 1},
        ).rowcount
        _queue_hours(conn, account, lo, hi)
    refresh_rollups(db)
    # As the seed does, and autovacuum would: refreshing 30 days of buckets at once rewrote
    # every rollup row of the account, and until a VACUUM sets the visibility map again
    # index-only scans of the rollups visit the heap (the rollup summary read ~2x slower).
    with _owner(db, admin_url) as conn:
        conn.execute("ANALYZE usage_events")
        conn.execute("SET statement_timeout = 0")  # VACUUM cannot run in a transaction
        try:
            conn.execute("VACUUM (ANALYZE) usage_rollups")
        finally:
            conn.execute("RESET statement_timeout")
    return added


def _delete_events(db: Database, admin_url: str | None, account: int, *patterns: str) -> None:
    """Remove the bench's own events (and their keys) from ``account``; roll up again."""
    with _owner(db, admin_url) as conn, conn.transaction():
        conn.execute("SET LOCAL statement_timeout = 0")
        # The deleted events' hours are queued (the bench writes with its own SQL,
        # which queues nothing: migration 0018), so the rollups forget them.
        conn.execute(
            "WITH gone AS (DELETE FROM usage_events WHERE account_id = %(a)s"
            " AND idempotency_key LIKE ANY(%(p)s) RETURNING meter_code, occurred_at)"
            " INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)"
            " SELECT DISTINCT %(a)s::bigint, meter_code, date_trunc('hour', occurred_at, 'UTC')"
            " FROM gone",
            {"a": account, "p": list(patterns)},
        )
        conn.execute(
            "DELETE FROM usage_event_keys WHERE account_id = %s AND idempotency_key LIKE ANY(%s)",
            (account, list(patterns)),
        )
    refresh_rollups(db)


def _queue_hours(conn: psycopg.Connection[Any], account: int, lo: datetime, hi: datetime) -> None:
    """Queue every hour of ``account`` with events in [lo, hi) for the rollups.

    The bench writes events with its own SQL (the library's statements queue
    what they store), so it queues their hours itself (migration 0018).
    """
    conn.execute(
        "INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)"
        " SELECT DISTINCT %(a)s::bigint, meter_code, date_trunc('hour', occurred_at, 'UTC')"
        " FROM usage_events"
        " WHERE account_id = %(a)s AND occurred_at >= %(lo)s AND occurred_at < %(hi)s",
        {"a": account, "lo": lo, "hi": hi},
    )


def _auth(db: Database, results: list[Result], profile: Profile, heavy: int) -> None:
    db.cache.namespace = f"bench-{uuid.uuid4().hex[:6]}"
    issued = db.api_keys.issue(account_id=heavy, name="bench", environment="live", scopes=[])
    secret = issued.secret.get_secret_value()
    _group(
        results,
        [("auth_cached", lambda: db.cached.auth(secret=secret))],
        profile,
        baseline=("auth_uncached", lambda: db.cached._build_auth(secret)),
    )


def _domain_scenarios(db: Database, results: list[Result], profile: Profile) -> None:
    """Scenarios without a raw twin: latencies at 1 and 4 threads, ``baseline`` None."""
    tag = uuid.uuid4().hex[:8]
    plan_id = hard_quota_plan(db, code=f"bench-{tag}", included=10**9, base_price_minor=1000)
    # One account per thread for quota consumes: 4 threads on one counter row
    # would measure that row's lock queue, not the query.
    accounts = [db.accounts.create(name=f"bench {tag} {i}").id for i in range(max(THREADS))]
    subs = [db.subscriptions.start(account_id=a, plan_id=plan_id) for a in accounts]
    local = threading.local()
    turn = iter(range(10**9))

    def account_of_thread() -> int:
        if not hasattr(local, "index"):
            local.index = next(turn) % len(accounts)
        index: int = local.index
        return accounts[index]

    def consume() -> object:
        return db.quotas.consume(
            account_id=account_of_thread(), meter_code=METER, quantity=Decimal(1)
        )

    _group(results, [("quota_consume", consume)], profile)

    claims = max(40, profile.iterations // 10)
    for i in range(claims * 3):  # enough for the warm-up and both thread counts
        f = db.files.register(
            account_id=accounts[i % len(accounts)],
            storage_key=f"bench/{tag}/{i}",
            file_name="b.bin",
            content_type="application/octet-stream",
        )
        db.files.mark_uploaded(
            account_id=f.account_id, file_id=f.id, size_bytes=1, checksum_sha256="0" * 64
        )

    def claim() -> object:
        return db.files.claim(limit=1, lease=timedelta(minutes=5))

    _group(results, [("file_claim", claim)], profile, iterations=claims)

    def invoice() -> object:  # idempotent per period: the second call finds the first
        sub = subs[accounts.index(account_of_thread())]
        return db.billing.generate_invoice(
            account_id=sub.account_id,
            subscription_id=sub.id,
            period_start=sub.current_period_start,
            period_end=sub.current_period_end,
        )

    _group(results, [("invoice_generate", invoice)], profile, iterations=claims)

    with db.connection() as conn:
        row = conn.execute(
            "SELECT account_id, max(day) FROM analytics_daily_rollups"
            " GROUP BY account_id ORDER BY sum(event_count) DESC LIMIT 1"
        ).fetchone()
    if row is None:
        raise RuntimeError("the database has no analytics: run `datalayer seed` first")
    busy, last_day = int(row[0]), row[1]
    _analytics(db, results, profile, busy, last_day)


def _analytics(
    db: Database, results: list[Result], profile: Profile, account: int, last_day: date
) -> None:
    def dau() -> object:
        return db.analytics.active_users(
            account_id=account,
            start_date=last_day - timedelta(days=29),
            end_date=last_day + timedelta(days=1),
            window="day",
        )

    def latency() -> object:
        return db.analytics.latency_percentiles(
            account_id=account, start_date=last_day, end_date=last_day + timedelta(days=1)
        )

    _group(results, [("dau_30d", dau), ("latency_percentiles_day", latency)], profile)


class _RolledBack(Exception):
    pass


def _billing_run(db: Database, results: list[Result]) -> None:
    """``billing_run``: the cycle at the next month's start plus two hours, per invoice made.

    Every live subscription of the seed renews and every closed period is
    invoiced and finalised, in one unit of work that is rolled back: the data
    stays as the seed made it. The figure is µs per invoice generated.
    """
    now = datetime.now(UTC)
    next_month = (now.replace(day=1) + timedelta(days=32)).replace(
        day=1, hour=2, minute=0, second=0, microsecond=0
    )
    started = time.perf_counter()
    generated = 0
    try:
        with db.unit_of_work() as uow:
            outcome = uow.billing.run(now=next_month)
            generated = outcome.generated
            seconds = time.perf_counter() - started
            raise _RolledBack
    except _RolledBack:
        pass
    if generated:
        results.append(_throughput("billing_run", generated, seconds))


def _ingestion(db: Database, results: list[Result], profile: Profile, heavy: int) -> None:
    """``profile.events`` events, 10% of them repeats of a key: raw COPY, then exactly once.

    Both go to the heavy account, in the last hour, and are deleted afterwards.
    """
    events = profile.events
    tag = uuid.uuid4().hex[:8]
    batch, rows = ingestion_events(heavy, f"bench-{tag}", events)
    started = time.perf_counter()
    with (
        db.connection() as conn,
        conn.transaction(),
        conn.cursor().copy(COPY_EVENTS) as copy,
    ):
        copy.set_types(COPY_TYPES)
        for r in rows:
            copy.write_row(r)
    raw = _throughput("raw_copy", events, time.perf_counter() - started)
    started = time.perf_counter()
    db.usage.record_batch(events=batch)
    exact = _throughput("ingest_exactly_once", events, time.perf_counter() - started)
    exact.baseline = "raw_copy"
    exact.ratio = round(raw.ops_per_s / exact.ops_per_s, 3)
    results += [raw, exact]
    # Leave the data as the seed made it, so that runs stay comparable.
    _delete_events(db, profile.admin_url, heavy, f"bench-{tag}-%", f"raw-bench-{tag}-%")


COPY_EVENTS = (
    "COPY usage_events (account_id, meter_code, quantity, occurred_at, idempotency_key,"
    " properties) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ["int8", "text", "numeric", "timestamptz", "text", "jsonb"]


def ingestion_events(
    account: int, prefix: str, count: int
) -> tuple[list[UsageEventIn], list[tuple[Any, ...]]]:
    """``count`` events of ``account`` in the last hour, every tenth repeating the key before
    it (keys ``<prefix>-<n>``), and the rows a raw COPY writes for them (keys ``raw-…``)."""
    now = datetime.now(UTC)
    batch = [
        UsageEventIn(account_id=account, meter_code=METER, quantity=Decimal(1),
                     occurred_at=now - timedelta(seconds=i % 3600),
                     idempotency_key=f"{prefix}-{i if i % 10 else i - 1}")
        for i in range(count)
    ]  # fmt: skip
    rows = [(e.account_id, e.meter_code, e.quantity, e.occurred_at, f"raw-{e.idempotency_key}-{i}",
             Jsonb({})) for i, e in enumerate(batch)]  # fmt: skip
    return batch, rows


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_json(results: list[Result], path: Path, **extra: Any) -> None:
    """Write ``{"scenarios": [...], **extra}`` to ``path``."""
    path.write_text(json.dumps({"scenarios": [asdict(r) for r in results], **extra}, indent=2))


def format_table(results: list[Result]) -> str:
    """A fixed-width table of the results."""
    head = (
        f"{'scenario':<28} {'thr':>3} {'p50 µs':>9} {'p95 µs':>9} {'p99 µs':>9} "
        f"{'ops/s':>10}  ratio (vs)"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.ratio:.2f} ({r.baseline})" if r.ratio is not None else ""
        lines.append(
            f"{r.name:<28} {r.threads:>3} {r.p50_us:>9.1f} {r.p95_us:>9.1f} {r.p99_us:>9.1f} "
            f"{r.ops_per_s:>10.1f}  {ratio}"
        )
    return "\n".join(lines)


def describe(results: list[Result]) -> dict[str, Any]:
    """Just the ratios, by scenario and thread count (for notes and tests)."""
    return {f"{r.name}@{r.threads}": r.ratio for r in results if r.ratio is not None}
