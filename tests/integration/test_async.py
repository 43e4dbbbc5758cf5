"""The async API on its own event loops: concurrency, two processes, cancellation.

The repository suites run on both APIs (``both_apis``, tests/async_bridge.py);
here are what only async code can show: 200 tasks racing for a quota on one
loop, two processes each with its own loop ingesting the same events, and a
task cancelled mid-query or mid-unit-of-work.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from datalayer import AsyncDatabase, PlanMeterSpec, QuotaExceeded, Settings

T = TypeVar("T")


def _settings(url: str, **changes: Any) -> Settings:
    base: dict[str, Any] = {"pool_min_size": 1, "pool_max_size": 8, "pool_timeout": 10}
    return Settings(database_url=url, **{**base, **changes})


def run(url: str, work: Callable[[AsyncDatabase], Awaitable[T]], **changes: Any) -> T:
    """``work(db)`` on a new event loop with an open ``AsyncDatabase`` on ``url``."""

    async def main() -> T:
        async with AsyncDatabase(_settings(url, **changes)) as db:
            return await work(db)

    return asyncio.run(main())


async def _meters_and_hard_plan(db: AsyncDatabase, limit: int) -> int:
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation) VALUES"
            " ('api_calls', 'API calls', 'call', 'sum'), ('cpu_seconds', 'CPU', 'second', 'sum')"
        )
    plan = await db.plans.create_draft(
        code="hard", name="Hard", billing_interval="month", base_price_minor=0, currency="USD",
        meters=[PlanMeterSpec(meter_code="api_calls", included_quantity=Decimal(limit),
                              limit_kind="hard", overage_unit_price_minor=Decimal(0))],
    )  # fmt: skip
    await db.plans.publish(plan_id=plan.id)
    account = await db.accounts.create(name="Acme")
    await db.subscriptions.start(account_id=account.id, plan_id=plan.id)
    return account.id


def test_200_tasks_on_one_loop_consuming_a_hard_limit_of_500_never_overspend(
    fresh_url: str,
) -> None:
    async def work(db: AsyncDatabase) -> tuple[int, list[QuotaExceeded], list[BaseException]]:
        account_id = await _meters_and_hard_plan(db, 500)
        start = asyncio.Event()

        async def task() -> tuple[int, list[QuotaExceeded]]:
            await start.wait()
            ok, refused = 0, []
            for _ in range(5):
                try:
                    await db.quotas.consume(
                        account_id=account_id, meter_code="api_calls", quantity=Decimal(1)
                    )
                    ok += 1
                except QuotaExceeded as exc:
                    refused.append(exc)
            return ok, refused

        tasks = [asyncio.create_task(task()) for _ in range(200)]
        start.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        other = [r for r in results if isinstance(r, BaseException)]
        done = [r for r in results if not isinstance(r, BaseException)]
        (status,) = await db.quotas.status(account_id=account_id)
        assert (status.used, status.remaining) == (Decimal(500), Decimal(0))
        return sum(ok for ok, _ in done), [e for _, r in done for e in r], other

    ok, refused, other = run(fresh_url, work)
    assert other == []
    assert ok == 500
    assert len(refused) == 200 * 5 - 500
    assert all(e.limit == 500 and e.remaining == 0 for e in refused)


SENDER = """
import asyncio, json, random, sys
from datetime import datetime
from decimal import Decimal
from datalayer import AsyncDatabase, Settings

async def main(url, path, seed):
    events = [
        {**e, "quantity": Decimal(e["quantity"]),
         "occurred_at": datetime.fromisoformat(e["occurred_at"])}
        for e in json.loads(open(path).read())
    ]
    random.Random(seed).shuffle(events)
    inserted = duplicates = 0
    settings = Settings(database_url=url, pool_min_size=1, pool_max_size=4)
    async with AsyncDatabase(settings) as db:
        # Half as single events from 8 concurrent tasks, half in batches of 500.
        singles, batched = events[: len(events) // 2], events[len(events) // 2 :]

        async def sender(part):
            nonlocal inserted, duplicates
            for event in part:
                result = await db.usage.record(**event)
                inserted += not result.duplicate
                duplicates += result.duplicate

        await asyncio.gather(*(sender(singles[i::8]) for i in range(8)))
        for i in range(0, len(batched), 500):
            result = await db.usage.record_batch(events=batched[i : i + 500])
            assert not result.rejected, result.rejected
            inserted += result.inserted
            duplicates += result.duplicates
    print(json.dumps({"inserted": inserted, "duplicates": duplicates}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


@pytest.mark.slow
def test_two_processes_each_on_its_own_loop_store_every_event_exactly_once(
    fresh_url: str, tmp_path: Path
) -> None:
    async def setup(db: AsyncDatabase) -> list[int]:
        await _meters_and_hard_plan(db, 10)
        return [(await db.accounts.create(name=f"a{i}")).id for i in range(4)]

    accounts = run(fresh_url, setup)
    now = datetime.now(UTC)
    unique = [
        {"account_id": accounts[i % 4], "meter_code": "api_calls" if i % 3 else "cpu_seconds",
         "quantity": str(i % 7 + 1), "occurred_at": (now - timedelta(seconds=i)).isoformat(),
         "idempotency_key": f"evt-{i}"}
        for i in range(4000)
    ]  # fmt: skip
    resent = [{**unique[i * 4], "quantity": "99"} for i in range(1000)]  # 20 % re-sends
    stream = tmp_path / "events.json"
    stream.write_text(json.dumps(unique + resent))
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), fresh_url, str(stream), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["inserted"] for r in reports) == 4000  # each event once, across both
    assert sum(r["inserted"] + r["duplicates"] for r in reports) == 2 * 5000

    async def stored(db: AsyncDatabase) -> dict[str, Decimal]:
        async with db.connection() as conn:
            cur = await conn.execute("SELECT idempotency_key, quantity FROM usage_events")
            return dict(await cur.fetchall())

    rows = run(fresh_url, stored)
    assert len(rows) == 4000
    # Whichever send of a key came first is stored: the original or its re-send's 99.
    resent_keys = {e["idempotency_key"] for e in resent}
    for e in unique:
        allowed = {Decimal(e["quantity"])} | (
            {Decimal(99)} if e["idempotency_key"] in resent_keys else set()
        )
        assert rows[e["idempotency_key"]] in allowed, e


async def _transactions_open(admin: psycopg.AsyncConnection[Any], name: str) -> list[Any]:
    cur = await admin.execute(
        "SELECT state, query FROM pg_stat_activity WHERE application_name = %s"
        " AND (state <> 'idle' OR xact_start IS NOT NULL) AND pid <> pg_backend_pid()",
        [name],
    )
    return await cur.fetchall()


async def _settled(admin: psycopg.AsyncConnection[Any], name: str) -> list[Any]:
    """The backends of application ``name`` (this test's only) still busy or in a
    transaction, after up to 5 s."""
    for _ in range(250):
        busy = await _transactions_open(admin, name)
        if not busy:
            return busy
        await asyncio.sleep(0.02)
    return busy


def test_a_task_cancelled_mid_query_leaves_no_query_or_transaction_and_the_pool_healthy(
    fresh_url: str, fresh_admin_url: str
) -> None:
    async def work(db: AsyncDatabase) -> None:
        name = db.settings.application_name

        async def sleeper() -> None:
            async with db.connection() as conn:
                await conn.execute("SELECT pg_sleep(30)")

        task = asyncio.create_task(sleeper())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with await psycopg.AsyncConnection.connect(fresh_admin_url) as admin:
            assert await _settled(admin, name) == []
        for _ in range(3):  # every connection the pool lends works
            assert await db.accounts.get(account_id=1) is None
        stats = db.stats()
        assert stats["pool_size"] - stats["pool_available"] == 0  # none lent out

    run(fresh_url, work, pool_max_size=2, application_name=f"cancel-{uuid.uuid4().hex[:8]}")


def test_a_task_cancelled_mid_unit_of_work_rolls_it_back_and_leaves_no_transaction_open(
    fresh_url: str, fresh_admin_url: str
) -> None:
    async def work(db: AsyncDatabase) -> None:
        name = db.settings.application_name
        created: list[int] = []

        async def writer() -> None:
            async with db.unit_of_work() as uow:
                created.append((await uow.accounts.create(name="Half done")).id)
                await asyncio.sleep(30)  # cancelled here, inside the transaction

        task = asyncio.create_task(writer())
        while not created:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with await psycopg.AsyncConnection.connect(fresh_admin_url) as admin:
            assert await _settled(admin, name) == []
        assert await db.accounts.get(account_id=created[0]) is None  # rolled back
        async with db.unit_of_work() as uow:  # the pool's connections are healthy
            account = await uow.accounts.create(name="After")
        assert await db.accounts.get(account_id=account.id) == account

    run(fresh_url, work, pool_max_size=1, application_name=f"cancel-{uuid.uuid4().hex[:8]}")


def test_tasks_sharing_one_unit_of_work_each_read_their_own_rows(fresh_url: str) -> None:
    """Statements of one connection at once never share a cursor (``_exec``'s idle cursor)."""

    async def work(db: AsyncDatabase) -> None:
        accounts = [await db.accounts.create(name=f"Shared {i}") for i in range(40)]
        async with db.unit_of_work() as uow:
            got = await asyncio.gather(
                *(uow.accounts.get(account_id=a.id) for a in accounts),
                *(uow.accounts.exists(account_id=a.id) for a in accounts),
                *(uow.users.count(account_id=a.id) for a in accounts),
            )
        assert got == [*accounts, *[True] * 40, *[0] * 40]

    run(fresh_url, work)
