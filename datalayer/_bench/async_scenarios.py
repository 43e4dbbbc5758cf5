"""``datalayer bench``: the async API against raw async psycopg, measured in the same run.

As the sync scenarios: a scenario and its baseline are called in turn (the
order rotating), by 1 and then 4 concurrent tasks on one event loop, each on
its own pool of the same size. Baselines are the leanest raw call:
``getconn``/``putconn`` on psycopg's ``AsyncConnectionPool``, positional
``%s`` parameters, tuple rows; asyncpg (when installed, the ``bench`` extra)
is a peer. Ingestion: raw async binary COPY, then ``record_batch`` of the same
events through ``AsyncDatabase``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from .._conninfo import conninfo_params
from .._database import Database
from .._database_async import AsyncDatabase
from .._settings import Settings
from .scenarios import (
    COPY_EVENTS,
    COPY_TYPES,
    THREADS,
    Profile,
    Result,
    _delete_events,
    _heavy_account,
    _summary,
    _throughput,
    ingestion_events,
    shuffled_rounds,
)

__all__ = ["run_async_bench"]

AsyncFn = Callable[[], Awaitable[object]]

PK_SQL_POSITIONAL = (
    "SELECT id, name, status, created_at, updated_at, deleted_at FROM accounts WHERE id = %s"
)
_PK_SQL_ASYNCPG = (
    "SELECT id, name, status, created_at, updated_at, deleted_at FROM accounts WHERE id = $1"
)


async def _interleaved(
    members: Sequence[tuple[str, AsyncFn]], calls: int, tasks: int
) -> dict[str, list[int]]:
    """Each of ``tasks`` tasks awaits every member once per round, ``calls // tasks``
    rounds, in a shuffled order (as the sync bench's ``_interleaved``)."""
    samples: dict[str, list[int]] = {name: [] for name, _ in members}
    per_task = max(1, calls // tasks)

    async def work(seed: int) -> None:
        for order in shuffled_rounds(members, per_task, seed):
            for name, fn in order:
                start = time.perf_counter_ns()
                await fn()
                samples[name].append(time.perf_counter_ns() - start)

    await asyncio.gather(*(work(t) for t in range(tasks)))
    return samples


async def _group(
    results: list[Result],
    baseline: tuple[str, AsyncFn],
    scenarios: Sequence[tuple[str, AsyncFn]],
    calls: int,
) -> None:
    members = [baseline, *scenarios]
    for _, fn in members:  # warm-up: pools, prepared statements
        for _ in range(min(200, max(5, calls // 10))):
            await fn()
    for tasks in THREADS:
        samples = await _interleaved(members, calls, tasks)
        base = _summary(baseline[0], samples[baseline[0]], tasks)
        results.append(base)
        for name, _ in scenarios:
            this = _summary(name, samples[name], tasks)
            this.baseline = base.name
            this.ratio = round(this.p50_us / base.p50_us, 3) if base.p50_us else None
            results.append(this)


def run_async_bench(db: Database, profile: Profile | None = None) -> list[Result]:
    """The async scenarios on ``db``'s database (seeded), after ``run_bench`` in the same
    ``datalayer bench`` run; returns their results and removes the events they wrote."""
    profile = profile or Profile()
    heavy = _heavy_account(db)
    results: list[Result] = []
    try:
        asyncio.run(_run(db.settings, profile, heavy, results))
    finally:  # leave the data as the seed made it
        _delete_events(db, profile.admin_url, heavy, "abench-%", "raw-abench-%")
    return results


async def _run(settings: Settings, profile: Profile, heavy: int, results: list[Result]) -> None:
    lean = settings.model_copy(update={"redis_url": None, "replica_urls": ()})
    async with AsyncDatabase(lean) as adb, AsyncDatabase(lean) as raw_db:
        pool = raw_db._pool  # a pool of its own, configured as the library's

        async def raw_pk() -> object:
            conn = await pool.getconn()
            try:
                cur = await conn.execute(PK_SQL_POSITIONAL, (heavy,))
                return await cur.fetchone()
            finally:
                await pool.putconn(conn)

        async def pk() -> object:
            return await adb.accounts.get(account_id=heavy)

        scenarios: list[tuple[str, AsyncFn]] = [("async_pk_lookup", pk)]
        close: Callable[[], Awaitable[None]] | None = None
        if profile.peers and importlib.util.find_spec("asyncpg") is not None:
            peer, close = await _asyncpg_peer(settings, heavy)
            scenarios.append(("asyncpg_pk_lookup", peer))
        elif profile.peers:
            print("peer asyncpg_pk_lookup skipped: pip install 'datalayer[bench]'")
        try:
            await _group(results, ("raw_async_pk_lookup", raw_pk), scenarios, profile.iterations)
        finally:
            if close is not None:
                await close()
        await _ingestion(adb, raw_db, results, profile, heavy)


async def _asyncpg_peer(
    settings: Settings, heavy: int
) -> tuple[AsyncFn, Callable[[], Awaitable[None]]]:
    """asyncpg's documented way: a pool, ``acquire``, ``fetchrow`` (prepared, cached)."""
    import asyncpg  # type: ignore[import-untyped, import-not-found, unused-ignore]

    params = conninfo_params(settings.database_url)
    peer_pool = await asyncpg.create_pool(
        host=params.get("host"),
        port=int(params.get("port") or 5432),
        user=params.get("user"),
        password=params.get("password"),
        database=params.get("dbname"),
        min_size=max(THREADS),
        max_size=max(THREADS),
    )

    async def call() -> object:
        async with peer_pool.acquire() as conn:
            return await conn.fetchrow(_PK_SQL_ASYNCPG, heavy)

    async def close() -> None:
        await peer_pool.close()

    return call, close


async def _ingestion(
    adb: AsyncDatabase, raw_db: AsyncDatabase, results: list[Result], profile: Profile, heavy: int
) -> None:
    """``profile.events`` events (10% repeats): raw async COPY, then ``record_batch``."""
    events = profile.events
    batch, rows = ingestion_events(heavy, f"abench-{uuid.uuid4().hex[:8]}", events)
    started = time.perf_counter()
    async with (
        raw_db.connection() as conn,
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(COPY_EVENTS) as copy,
    ):
        copy.set_types(COPY_TYPES)
        for r in rows:
            await copy.write_row(r)
    raw = _throughput("raw_async_copy", events, time.perf_counter() - started)
    started = time.perf_counter()
    await adb.usage.record_batch(events=batch)
    exact = _throughput("async_ingest_exactly_once", events, time.perf_counter() - started)
    exact.baseline = raw.name
    exact.ratio = round(raw.ops_per_s / exact.ops_per_s, 3)
    results += [raw, exact]
