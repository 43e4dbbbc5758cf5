"""The pool sweep against a real database: figures per pool size, and errors counted, not raised.

Exhaustion of the pool itself (a typed ``Unavailable`` after ``pool_timeout``, never a
hang, and recovery once the connection is released) is tested in ``test_pool.py``
(``test_an_exhausted_pool_raises_unavailable_after_the_pool_timeout_and_recovers_on_release``);
here it is the sweep's accounting of it that is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from datalayer import Database, Settings
from datalayer._bench.poolsweep import run_pool_sweep


def _settings(url: str, **overrides: Any) -> Settings:
    return Settings(database_url=url, connect_timeout=2, **overrides)


def _account_with_usage(url: str) -> int:
    """An account with 200 events of the last hour: the sweep's summaries read it."""
    with Database(_settings(url, pool_min_size=1, pool_max_size=1)) as db:
        with db.connection() as conn:
            conn.execute(
                "INSERT INTO meters (code, name, unit, aggregation)"
                " VALUES ('api_calls', 'API calls', 'call', 'sum')"
            )
        account = db.accounts.create(name="Heavy").id
        now = datetime.now(UTC)
        db.usage.record_batch(
            events=[
                {"account_id": account, "meter_code": "api_calls", "quantity": Decimal(1),
                 "occurred_at": now - timedelta(seconds=i), "idempotency_key": f"seed-{i}"}
                for i in range(200)
            ]
        )  # fmt: skip
    return account


def _scalar(url: str, sql: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def test_a_short_sweep_measures_each_pool_size_and_one_connection_for_four_clients_waits(
    fresh_url: str,
) -> None:
    _account_with_usage(fresh_url)
    results = run_pool_sweep(_settings(fresh_url), sizes=(1, 4), clients=4, seconds=0.5)

    assert [r.pool_size for r in results] == [1, 4]
    for r in results:
        assert r.clients == 4
        assert r.seconds >= 0.5
        assert r.errors == 0
        assert r.ops == r.reads + r.summaries + r.consumes + r.batches
        assert min(r.reads, r.summaries, r.consumes, r.batches) > 0
        assert r.reads > r.consumes > r.batches  # the production-like mix
        # seconds is rounded to the ms: within 0.2% over half a second
        assert r.ops_per_s == pytest.approx(r.ops / r.seconds, rel=0.002)
        assert 0 < r.p50_us <= r.p99_us
        assert 0 <= r.wait_p50_us <= r.wait_p99_us
        assert r.wait_total_s >= 0
    one, four = results
    assert one.queued > 0
    assert one.wait_total_s > four.wait_total_s
    assert four.queued == 0  # as many connections as clients: nobody ever queues

    # The operations really ran (the warm-up adds to both, hence >=).
    stored = _scalar(
        fresh_url, "SELECT count(*) FROM usage_events WHERE idempotency_key ~ '^sweep-'"
    )
    assert stored >= 100 * (one.batches + four.batches)
    used = _scalar(fresh_url, "SELECT coalesce(sum(used), 0) FROM quota_counters")
    assert used >= one.consumes + four.consumes


def test_a_pool_exhausted_past_its_timeout_counts_unavailable_as_errors_and_the_sweep_ends(
    fresh_url: str,
) -> None:
    # One connection, four clients, a 2 ms acquire timeout: every wait behind an
    # ingestion batch (several ms) ends in Unavailable.
    settings = _settings(fresh_url, pool_timeout=0.002)
    started = time.monotonic()

    [result] = run_pool_sweep(settings, sizes=(1,), clients=4, seconds=0.5)

    assert time.monotonic() - started < 10
    assert result.errors > 0
    assert result.errors <= result.queued  # each error is a request that queued and gave up
    assert result.ops > 0
    assert result.p99_us >= result.p50_us > 0


@pytest.mark.slow
def test_the_cli_sweeps_four_pool_sizes_and_writes_its_recommendation(
    fresh_url: str, fresh_admin_url: str, tmp_path: Path
) -> None:
    _account_with_usage(fresh_url)
    out = tmp_path / "sweep.json"
    done = subprocess.run(
        [sys.executable, "-m", "datalayer", "bench", "--pool-sweep", "--sweep-seconds", "0.3",
         "--json", str(out)],
        env={**os.environ, "DATABASE_URL": fresh_url, "DATALAYER_ADMIN_URL": fresh_admin_url,
             "REDIS_URL": ""},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recommended pool size here:" in done.stdout
    data = json.loads(out.read_text())
    assert [r["pool_size"] for r in data["pool_sweep"]] == [2, 4, 8, 16]
    assert all(r["clients"] == 16 and r["ops"] > 0 for r in data["pool_sweep"])
    assert data["recommended"] in {2, 4, 8, 16}
    assert data["machine"]["cpus"] >= 1
