"""Moving a busy account's shards to another worker while it ingests loses and doubles nothing.

Issue 16, part 5. Runs in the Citus session only (``make test-citus``): an account
records usage one event at a time and in batches from two threads, each call retried
with its idempotency key until it is acknowledged, while ``citus_move_shard_placement``
moves the account's colocated shards (accounts, usage_events' partitions, the keys,
the queue, …) from their worker to the other one. Afterwards the account holds
exactly the acknowledged events, each once, its rollups equal a fresh aggregate, and
the shards live on the other worker.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from datalayer import Database, DataLayerError
from datalayer._ops.rollups import refresh_rollups
from datalayer.models.usage import UsageEventIn

pytestmark = pytest.mark.requires_parts("citus")


def _placement(admin: psycopg.Connection[Any], shard: int) -> tuple[str, int]:
    row = admin.execute(
        "SELECT nodename, nodeport FROM pg_dist_shard_placement WHERE shardid = %s", [shard]
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def _retried(call: Any, stop_after: float = 60) -> None:
    """Run ``call`` until it succeeds (an error mid-move is retried with the same keys)."""
    deadline = time.monotonic() + stop_after
    while True:
        try:
            call()
            return
        except DataLayerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_moving_a_busy_accounts_shards_while_it_ingests_loses_and_doubles_nothing(
    db: Database, fresh_admin_url: str
) -> None:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )
    account = db.accounts.create(name="Busy").id
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    acknowledged: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def one_by_one() -> None:
        n = 0
        while not stop.is_set():
            key = f"one-{n}"
            at = now + timedelta(milliseconds=n)
            _retried(lambda key=key, at=at: db.usage.record(  # type: ignore[misc]
                account_id=account, meter_code="api_calls", quantity=Decimal(1),
                occurred_at=at, idempotency_key=key,
            ))  # fmt: skip
            with lock:
                acknowledged.add(key)
            n += 1

    def batches() -> None:
        b = 0
        while not stop.is_set():
            events = [
                UsageEventIn(
                    account_id=account, meter_code="api_calls", quantity=Decimal(2),
                    occurred_at=now + timedelta(seconds=1, milliseconds=i),
                    idempotency_key=f"batch-{b}-{i}",
                )
                for i in range(50)
            ]  # fmt: skip
            _retried(lambda events=events: db.usage.record_batch(events=events))  # type: ignore[misc]
            with lock:
                acknowledged.update(e.idempotency_key for e in events)
            b += 1

    def guarded(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(w,)) for w in (one_by_one, batches)]
    with psycopg.connect(fresh_admin_url, autocommit=True) as admin:
        shard = admin.execute(
            "SELECT get_shard_id_for_distribution_column('accounts', %s)", [account]
        ).fetchone()
        assert shard is not None
        source = _placement(admin, shard[0])
        target = admin.execute(
            "SELECT nodename, nodeport FROM pg_dist_node"
            " WHERE noderole = 'primary' AND shouldhaveshards AND groupid <> 0"
            "   AND (nodename, nodeport) <> (%s, %s) ORDER BY nodeport LIMIT 1",
            source,
        ).fetchone()
        assert target is not None
        for t in threads:
            t.start()
        time.sleep(1.0)  # ingestion under way
        with lock:
            before_move = len(acknowledged)
        admin.execute(
            "SELECT citus_move_shard_placement(%s, %s, %s, %s, %s,"
            " shard_transfer_mode => 'block_writes')",
            [shard[0], *source, *target],
        )
        time.sleep(1.0)  # and it goes on on the new placement
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert errors == []
        assert _placement(admin, shard[0]) == (str(target[0]), int(target[1]))
        stored = admin.execute(
            "SELECT idempotency_key FROM usage_events WHERE account_id = %s", [account]
        ).fetchall()
        keys = admin.execute(
            "SELECT count(*) FROM usage_event_keys WHERE account_id = %s", [account]
        ).fetchone()
    assert before_move > 0
    assert len(acknowledged) > before_move  # events were recorded after the move too
    stored_keys = [k for (k,) in stored]
    assert len(stored_keys) == len(set(stored_keys)), "an event was stored twice"
    assert set(stored_keys) == acknowledged, "an acknowledged event was lost (or one appeared)"
    assert keys == (len(acknowledged),)
    refresh_rollups(db)
    with db.connection() as conn:
        rolled = conn.execute(
            "SELECT sum(event_count), sum(quantity_sum) FROM usage_rollups"
            " WHERE account_id = %s AND granularity = 'hour'",
            [account],
        ).fetchone()
        raw = conn.execute(
            "SELECT count(*), sum(quantity) FROM usage_events WHERE account_id = %s", [account]
        ).fetchone()
    assert rolled == raw
