"""``datalayer bench --pool-sweep``: a mixed workload from many threads against several pool sizes.

For each pool size a fresh ``Database`` (``pool_min_size == pool_max_size ==
size``) is filled, warmed up, then driven by ``clients`` threads for a fixed
time. Each thread loops over a mix weighted like production traffic: primary
key reads, usage summaries, quota consumes and ingestion batches of 100
events. Reported per size: throughput, latency percentiles, and the time
callers spent waiting for a pooled connection. An operation that fails with a
``DataLayerError`` (``Unavailable`` when the pool stays exhausted past
``pool_timeout``) is counted in ``errors``, never raised.

Connection waits are timed per operation through ``Database.on_acquire``
(the seconds each successful checkout waited; a checkout that gives up is an
error, timed in the operation's latency). The pool's counters
(``requests_queued``, ``requests_wait_ms``) are reported next to them as a
cross-check.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .._database import Database
from .._settings import Settings
from ..errors import DataLayerError, Unavailable
from .scenarios import METER, hard_quota_plan, heaviest_account, percentile_us

__all__ = ["SweepResult", "format_sweep", "recommend", "run_pool_sweep"]

log = logging.getLogger("datalayer")

BATCH_SIZE = 100
# Operation kinds and their share of the traffic: mostly reads, some quota checks, a
# trickle of ingestion batches.
MIX: tuple[tuple[str, float], ...] = (
    ("read", 0.65),
    ("summary", 0.15),
    ("consume", 0.15),
    ("batch", 0.05),
)
# Accounts that consume quota and ingest: enough that 16 threads rarely queue on one
# quota counter's row lock, which would measure lock waits instead of the pool.
ACCOUNTS = 32


@dataclass
class SweepResult:
    """One pool size's figures over ``seconds`` of ``clients`` threads.

    ``ops`` counts operations that succeeded (``reads`` + ``summaries`` +
    ``consumes`` + ``batches``), ``errors`` those that raised a
    ``DataLayerError``; latency percentiles cover both. ``wait_*`` is the time
    an operation spent inside the pool's ``getconn`` (summed over its
    acquires); ``queued`` and ``queued_wait_s`` are psycopg_pool's own
    counters of requests that found no idle connection (``requests_queued``,
    ``requests_wait_ms``, which rounds each wait down to a millisecond).
    """

    pool_size: int
    clients: int
    seconds: float
    ops: int
    ops_per_s: float
    p50_us: float
    p99_us: float
    wait_p50_us: float
    wait_p99_us: float
    wait_total_s: float
    errors: int
    reads: int = 0
    summaries: int = 0
    consumes: int = 0
    batches: int = 0
    queued: int = 0
    queued_wait_s: float = 0.0


@dataclass(frozen=True)
class _Workload:
    """What the operations touch, created once per sweep."""

    heavy: int
    accounts: tuple[int, ...]
    period_start: datetime
    period_end: datetime
    tag: str


@dataclass
class _Tally:
    """One thread's samples; merged after the threads are joined."""

    latency_ns: list[int] = field(default_factory=list)
    wait_ns: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    failure: BaseException | None = None


class _AcquireClock:
    """Per thread, the time spent waiting for a connection (fed by ``Database.on_acquire``)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def record(self, seconds: float) -> None:
        self._local.waited = self.waited() + int(seconds * 1e9)

    def waited(self) -> int:
        """Nanoseconds this thread has waited since its last ``reset``."""
        waited: int = getattr(self._local, "waited", 0)
        return waited

    def reset(self) -> None:
        self._local.waited = 0


def run_pool_sweep(
    settings: Settings,
    *,
    sizes: Sequence[int] = (2, 4, 8, 16),
    clients: int = 16,
    seconds: float = 5.0,
) -> list[SweepResult]:
    """Drive the mixed workload from ``clients`` threads against each pool size in turn.

    The database must be migrated. Creates, once, a plan with a hard quota
    on ``api_calls``, ``ACCOUNTS`` accounts subscribed to it, and the meter if
    missing; reads go to the account with the most usage (or to those
    accounts on a database without usage). Each size gets its own pool, is
    filled and warmed up (``min(1, seconds / 5)`` seconds) before ``seconds``
    of measurement. Raises ``Unavailable`` when a pool cannot be filled,
    ``ValueError`` for an empty ``sizes``, a size or ``clients`` below 1 or
    ``seconds`` not above 0; errors of the operations are counted, not raised.
    """
    if not sizes or min(sizes) < 1 or clients < 1 or seconds <= 0:
        raise ValueError("sizes must be non-empty and >= 1, clients >= 1, seconds > 0")
    workload = _prepare(settings)
    warmup = min(1.0, seconds / 5)
    results: list[SweepResult] = []
    for size in sizes:
        sized = settings.model_copy(
            update={
                "pool_min_size": size,
                "pool_max_size": size,
                "application_name": f"{settings.application_name[:40]}-sweep-{size}",
            }
        )
        with Database(sized) as db:
            _wait_filled(db, size, timeout=max(10.0, 2.0 * sized.connect_timeout))
            clock = _AcquireClock()
            db.on_acquire = clock.record
            _run(db, workload, clock, clients, warmup)
            before = db.stats()
            tallies, elapsed = _run(db, workload, clock, clients, seconds)
            after = db.stats()
        results.append(_summarise(size, clients, elapsed, tallies, before, after))
        log.info("pool size %d: %.1f ops/s", size, results[-1].ops_per_s)
    return results


def _prepare(settings: Settings) -> _Workload:
    """Create the plan, accounts and subscriptions the workload needs; find the heavy account."""
    setup = settings.model_copy(
        update={
            "pool_min_size": 1,
            "pool_max_size": 2,
            "pool_timeout": max(10.0, settings.pool_timeout),
        }
    )
    tag = uuid.uuid4().hex[:8]
    with Database(setup) as db:
        heaviest = heaviest_account(db)
        plan_id = hard_quota_plan(db, code=f"sweep-{tag}", included=10**11, base_price_minor=0)
        accounts: list[int] = []
        for i in range(ACCOUNTS):
            account = db.accounts.create(name=f"sweep {tag} {i}").id
            db.subscriptions.start(account_id=account, plan_id=plan_id)
            accounts.append(account)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    heavy = heaviest if heaviest is not None else accounts[0]
    return _Workload(heavy, tuple(accounts), end - timedelta(days=30), end, tag)


def _wait_filled(db: Database, size: int, *, timeout: float) -> None:
    """Wait for ``size`` idle connections in the pool; raise ``Unavailable`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while db.stats().get("pool_available", 0) < size:
        if time.monotonic() > deadline:
            raise Unavailable(f"the pool did not reach {size} connections within {timeout}s")
        time.sleep(0.01)


def _operations(db: Database, work: _Workload, thread: int) -> dict[str, Callable[[], object]]:
    """The workload's operations, for one thread (batches get that thread's unique keys)."""
    readable = (work.heavy, *work.accounts)
    rng = random.Random(thread)

    def read() -> object:
        return db.accounts.get(account_id=rng.choice(readable))

    def summary() -> object:
        return db.usage_reports.period_totals(
            account_id=work.heavy, period_start=work.period_start, period_end=work.period_end
        )

    def consume() -> object:
        return db.quotas.consume(
            account_id=rng.choice(work.accounts), meter_code=METER, quantity=Decimal(1)
        )

    def batch() -> object:
        now = datetime.now(UTC)
        account = rng.choice(work.accounts)
        prefix = f"sweep-{work.tag}-{uuid.uuid4().hex[:12]}"  # unique across warm-up and runs
        events: list[dict[str, Any]] = [
            {"account_id": account, "meter_code": METER, "quantity": Decimal(1),
             "occurred_at": now, "idempotency_key": f"{prefix}-{i}"}
            for i in range(BATCH_SIZE)
        ]  # fmt: skip
        return db.usage.record_batch(events=events, now=now)

    return {"read": read, "summary": summary, "consume": consume, "batch": batch}


def _run(
    db: Database, work: _Workload, clock: _AcquireClock, clients: int, seconds: float
) -> tuple[list[_Tally], float]:
    """Run ``clients`` threads over the mix for ``seconds``; their tallies and the elapsed time."""
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    tallies = [_Tally() for _ in range(clients)]
    go = threading.Event()
    deadline = 0.0

    def worker(index: int) -> None:
        tally = tallies[index]
        try:
            ops = _operations(db, work, index)
            rng = random.Random(1000 + index)
            go.wait()
            while time.perf_counter() < deadline:
                kind = rng.choices(kinds, weights)[0]
                clock.reset()
                start = time.perf_counter_ns()
                try:
                    ops[kind]()
                except DataLayerError:
                    tally.errors += 1
                else:
                    tally.counts[kind] = tally.counts.get(kind, 0) + 1
                tally.latency_ns.append(time.perf_counter_ns() - start)
                tally.wait_ns.append(clock.waited())
        except BaseException as exc:  # re-raised by the caller's thread
            tally.failure = exc

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"pool-sweep-{i}") for i in range(clients)
    ]
    for t in threads:
        t.start()
    started = time.perf_counter()
    deadline = started + seconds
    go.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    for tally in tallies:
        if tally.failure is not None:
            raise tally.failure
    return tallies, elapsed


def _summarise(
    size: int,
    clients: int,
    elapsed: float,
    tallies: list[_Tally],
    before: dict[str, int],
    after: dict[str, int],
) -> SweepResult:
    latency = sorted(ns for t in tallies for ns in t.latency_ns)
    waits = sorted(ns for t in tallies for ns in t.wait_ns)
    counts = {kind: sum(t.counts.get(kind, 0) for t in tallies) for kind, _ in MIX}
    ops = sum(counts.values())

    def delta(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    return SweepResult(
        pool_size=size,
        clients=clients,
        seconds=round(elapsed, 3),
        ops=ops,
        ops_per_s=round(ops / elapsed, 1),
        p50_us=round(percentile_us(latency, 0.5), 1),
        p99_us=round(percentile_us(latency, 0.99), 1),
        wait_p50_us=round(percentile_us(waits, 0.5), 1),
        wait_p99_us=round(percentile_us(waits, 0.99), 1),
        wait_total_s=round(sum(waits) / 1e9, 4),
        errors=sum(t.errors for t in tallies),
        reads=counts["read"],
        summaries=counts["summary"],
        consumes=counts["consume"],
        batches=counts["batch"],
        queued=delta("requests_queued"),
        queued_wait_s=delta("requests_wait_ms") / 1000,
    )


def format_sweep(results: list[SweepResult]) -> str:
    """A fixed-width table of the results, one row per pool size.

    ``wait %`` is the share of the clients' time spent waiting for a connection.
    """
    head = (
        f"{'pool':>4} {'clients':>7} {'ops':>7} {'ops/s':>9} {'p50 µs':>9} {'p99 µs':>9} "
        f"{'wait p50':>9} {'wait p99':>9} {'wait s':>8} {'wait %':>6} {'queued':>7} {'errors':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        share = 100 * r.wait_total_s / (r.clients * r.seconds) if r.seconds else 0.0
        lines.append(
            f"{r.pool_size:>4} {r.clients:>7} {r.ops:>7} {r.ops_per_s:>9.1f} {r.p50_us:>9.1f} "
            f"{r.p99_us:>9.1f} {r.wait_p50_us:>9.1f} {r.wait_p99_us:>9.1f} "
            f"{r.wait_total_s:>8.2f} {share:>6.1f} {r.queued:>7} {r.errors:>6}"
        )
    return "\n".join(lines)


def recommend(results: list[SweepResult]) -> int:
    """The pool size that keeps the best throughput at the lowest tail latency.

    Rule: among the sizes whose run had no errors (all sizes, if every run had
    some), keep those within 5% of the best ``ops_per_s``; of these, take the
    smallest whose ``p99_us`` is within 10% of the lowest p99 among them. (A
    pool too small throttles the callers, which also keeps its p99 low: so p99
    is compared only among sizes that do not give up throughput.) Raises
    ``ValueError`` for no results.
    """
    if not results:
        raise ValueError("no sweep results to recommend from")
    candidates = [r for r in results if r.errors == 0] or list(results)
    best_ops = max(r.ops_per_s for r in candidates)
    fast = [r for r in candidates if r.ops_per_s >= 0.95 * best_ops]
    best_p99 = min(r.p99_us for r in fast)
    return min(r.pool_size for r in fast if r.p99_us <= 1.10 * best_p99)
