"""The money-path invariant: concurrent overlapping batches store each event exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from overlap import wait_until_blocked

from datalayer import Database
from datalayer._ops.rollups import refresh_rollups

SENDER = """
import json, random, sys
from datetime import datetime
from decimal import Decimal
from datalayer import Database, Settings

url, path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
events = json.load(open(path))
random.Random(seed).shuffle(events)
totals = {"inserted": 0, "duplicates": 0, "rejected": 0}
# lock_timeout off: the test holds the key table until both senders wait for it.
with Database(Settings(database_url=url, pool_max_size=2, lock_timeout_ms=0)) as db:
    for start in range(0, len(events), 5000):
        batch = [
            {**e, "quantity": Decimal(e["quantity"]),
             "occurred_at": datetime.fromisoformat(e["occurred_at"])}
            for e in events[start:start + 5000]
        ]
        result = db.usage.record_batch(events=batch)
        totals["inserted"] += result.inserted
        totals["duplicates"] += result.duplicates
        totals["rejected"] += len(result.rejected)
print(json.dumps(totals))
"""


@pytest.mark.slow
def test_two_processes_sending_100k_events_with_20_percent_duplicates_store_each_once(
    db: Database, fresh_url: str, fresh_admin_url: str, tmp_path: Path
) -> None:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation) VALUES"
            " ('api_calls', 'API calls', 'call', 'sum'), ('cpu_seconds', 'CPU', 'second', 'sum')"
        )
    accounts = [db.accounts.create(name=f"a{i}").id for i in range(5)]
    now = datetime.now(UTC)
    unique = [
        {"account_id": accounts[i % 5], "meter_code": "api_calls" if i % 4 else "cpu_seconds",
         "quantity": str(i % 9 + 1), "occurred_at": (now - timedelta(seconds=i * 7)).isoformat(),
         "idempotency_key": f"evt-{i}"}
        for i in range(80_000)
    ]  # fmt: skip
    # 20,000 re-sends of earlier keys, with other timestamps and quantities.
    resent = [
        {**unique[i * 4], "quantity": "99",
         "occurred_at": (now - timedelta(seconds=i)).isoformat()}
        for i in range(20_000)
    ]  # fmt: skip
    stream = tmp_path / "events.json"
    stream.write_text(json.dumps(unique + resent))
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    with (
        psycopg.connect(fresh_admin_url) as holder,
        psycopg.connect(fresh_admin_url, autocommit=True) as watcher,
    ):
        # Every batch writes the key table first. Hold it until both senders wait for it
        # (seen in pg_locks): their first batches are then in flight at the same time.
        holder.execute("LOCK TABLE usage_event_keys IN SHARE MODE")
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), fresh_url, str(stream), str(seed)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for seed in (1, 2)
        ]
        try:
            waiting = wait_until_blocked(watcher, holder.info.backend_pid, 2, what="senders")
        finally:
            holder.commit()
        outputs = [p.communicate(timeout=300) for p in procs]
    assert len(set(waiting)) == 2
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(out) for out, _ in outputs]
    assert sum(r["inserted"] for r in results) == 80_000
    assert all(r["inserted"] + r["duplicates"] == 100_000 for r in results)
    assert all(r["rejected"] == 0 for r in results)

    with db.connection() as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM usage_events),"
            " (SELECT count(DISTINCT (account_id, idempotency_key)) FROM usage_events),"
            " (SELECT count(*) FROM usage_event_keys)"
        ).fetchone()
        # Each key row points at its event, with the event's own time.
        unlinked = conn.execute(
            "SELECT count(*) FROM usage_event_keys k LEFT JOIN usage_events e"
            " ON e.account_id = k.account_id AND e.id = k.event_id"
            " AND e.occurred_at = k.occurred_at AND e.idempotency_key = k.idempotency_key"
            " WHERE e.id IS NULL"
        ).fetchone()
        stored = {
            key: (account_id, meter, str(quantity), occurred_at)
            for key, account_id, meter, quantity, occurred_at in conn.execute(
                "SELECT idempotency_key, account_id, meter_code, quantity::int, occurred_at"
                " FROM usage_events"
            )
        }
    assert counts == (80_000, 80_000, 80_000)
    assert unlinked == (0,)
    # Every stored event is one whole send of its key (the first or the re-send, never a mix
    # of the two), and a key that was sent once is stored as sent.
    sends: dict[str, list[tuple[int, str, str, datetime]]] = {}
    for e in unique + resent:
        sends.setdefault(e["idempotency_key"], []).append(
            (
                e["account_id"],
                e["meter_code"],
                e["quantity"],
                datetime.fromisoformat(e["occurred_at"]),
            )
        )
    assert set(stored) == set(sends)
    assert all(stored[key] in versions for key, versions in sends.items())

    refresh_rollups(db)
    with db.connection() as conn:
        diff = conn.execute(
            "SELECT count(*) FROM ("
            " (SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC'), count(*),"
            "  sum(quantity), max(quantity) FROM usage_events GROUP BY 1, 2, 3"
            "  EXCEPT SELECT account_id, meter_code, bucket_start, event_count, quantity_sum,"
            "  quantity_max FROM usage_rollups WHERE granularity = 'hour')"
            " UNION ALL"
            " (SELECT account_id, meter_code, bucket_start, event_count, quantity_sum, quantity_max"
            "  FROM usage_rollups WHERE granularity = 'hour'"
            "  EXCEPT SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC'),"
            "  count(*), sum(quantity), max(quantity) FROM usage_events GROUP BY 1, 2, 3)) d"
        ).fetchone()
    assert diff == (0,)
