"""The money-path invariant: concurrent overlapping batches store each event exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

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
with Database(Settings(database_url=url, pool_max_size=2)) as db:
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
    db: Database, fresh_url: str, tmp_path: Path
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
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), fresh_url, str(stream), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    results = [json.loads(out) for out, _ in outputs]
    assert sum(r["inserted"] for r in results) == 80_000
    assert all(r["inserted"] + r["duplicates"] == 100_000 for r in results)
    assert all(r["rejected"] == 0 for r in results)

    with db.connection() as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM usage_events),"
            " (SELECT count(DISTINCT (account_id, idempotency_key)) FROM usage_events),"
            " (SELECT count(*) FROM usage_event_keys),"
            " (SELECT count(*) FROM usage_events WHERE quantity = 99)"
        ).fetchone()
    assert counts is not None
    assert counts[:3] == (80_000, 80_000, 80_000)
    assert counts[3] <= 20_000  # whichever send of a key arrived first is the one stored

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
