"""`datalayer bench` end to end on a small seeded database: every scenario, in the JSON shape.

The timings themselves are not asserted (speed is for `make bench`, not for
tests); what is asserted is that every scenario ran and reported consistent
figures, that each ratio is its p50 (or throughput) over its baseline's, and
that the CLI writes the JSON, the table and the chart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import APP_ROLE, CACHE_KEYS, REDIS_URL, _clone, pg_url

from datalayer import Database, Settings, _telemetry
from datalayer._bench.async_scenarios import run_async_bench
from datalayer._bench.scenarios import Profile, Result, describe, run_bench
from datalayer._conninfo import with_user
from datalayer._ops.seed import seed_database

REDIS = f"{REDIS_URL}/0"
LATENCY = [
    "raw_pk_lookup", "pk_lookup", "traced_pk_lookup", "sqlalchemy_core_pk_lookup",
    "sqlalchemy_orm_pk_lookup", "aiosql_pk_lookup", "usage_summary_raw", "usage_summary_rollup",
    "auth_uncached",
    "auth_cached", "quota_consume", "file_claim", "invoice_generate", "dau_30d",
    "latency_percentiles_day", "raw_pk_lookup_named", "raw_pk_lookup_beside_traced",
    "raw_pk_lookup_beside_peers", "pk_lookup_beside_peers",
    "raw_async_pk_lookup", "async_pk_lookup", "asyncpg_pk_lookup",
]  # fmt: skip
BASELINES = {
    "pk_lookup": "raw_pk_lookup",
    "traced_pk_lookup": "raw_pk_lookup_beside_traced",
    "sqlalchemy_core_pk_lookup": "raw_pk_lookup_beside_peers",
    "sqlalchemy_orm_pk_lookup": "raw_pk_lookup_beside_peers",
    "aiosql_pk_lookup": "raw_pk_lookup_beside_peers",
    "pk_lookup_beside_peers": "raw_pk_lookup_beside_peers",
    "usage_summary_rollup": "usage_summary_raw",
    "auth_cached": "auth_uncached",
    "ingest_exactly_once": "raw_copy",
    "raw_pk_lookup_named": "raw_pk_lookup",
    "async_pk_lookup": "raw_async_pk_lookup",
    "asyncpg_pk_lookup": "raw_async_pk_lookup",
    "async_ingest_exactly_once": "raw_async_copy",
}
THROUGHPUT = {"ingest_exactly_once", "async_ingest_exactly_once"}
TINY = Profile(iterations=40, events=2000, scale=True)


@pytest.fixture(scope="module")
def seeded_url(template_dbname: str) -> Iterator[str]:
    janitor = _clone(template_dbname)
    with janitor:
        url = pg_url(janitor.dbname)
        with psycopg.connect(url, autocommit=True) as conn:
            seed_database(conn, accounts=10, events=5_000, analytics=1_000, seed=5, progress=None)
        yield url


@pytest.fixture(scope="module")
def results(seeded_url: str) -> list[Result]:
    # As in production: the scenarios run as the application role, the bench's own setup
    # and cleanup (deleting its events, ANALYZE) as the admin.
    app = with_user(seeded_url, APP_ROLE)
    settings = Settings(database_url=app, redis_url=REDIS, cache_keys=CACHE_KEYS)
    profile = dataclasses.replace(TINY, admin_url=seeded_url)
    with Database(settings) as db:
        return run_bench(db, profile) + run_async_bench(db, profile)


def test_every_scenario_runs_at_one_and_four_threads(results: list[Result]) -> None:
    seen = {(r.name, r.threads) for r in results}
    for name in LATENCY:
        assert {(name, 1), (name, 4)} <= seen, name
    assert {("raw_copy", 1), ("ingest_exactly_once", 1), ("billing_run", 1)} <= seen
    assert {("raw_async_copy", 1), ("async_ingest_exactly_once", 1)} <= seen
    assert {("usage_summary_rollup_10x", 1), ("usage_summary_raw_10x", 4)} <= seen


def test_tracing_is_switched_off_again_after_its_group(results: list[Result]) -> None:
    # traced_pk_lookup runs with tracing on for its whole group; nothing after it is traced.
    assert _telemetry.ACTIVE is None


def test_figures_are_consistent(results: list[Result]) -> None:
    for r in results:
        assert 0 < r.p50_us <= r.p95_us <= r.p99_us, r
        assert r.ops_per_s > 0, r


def test_each_ratio_is_against_its_baseline_measured_in_the_same_run(
    results: list[Result],
) -> None:
    by_key = {(r.name, r.threads): r for r in results}
    for r in results:
        if r.name.endswith("_10x"):
            assert r.baseline == r.name.removesuffix("_10x")
        else:
            assert r.baseline == BASELINES.get(r.name), r.name
        if r.baseline is None:
            assert r.ratio is None
            continue
        base = by_key[(r.baseline, r.threads)]
        if r.name in THROUGHPUT:  # throughput: baseline events/s over ours
            assert r.ratio == pytest.approx(base.ops_per_s / r.ops_per_s, rel=0.01)
        else:
            assert r.ratio == pytest.approx(r.p50_us / base.p50_us, rel=0.01)
    assert set(describe(results)) >= {
        "pk_lookup@1", "pk_lookup@4", "ingest_exactly_once@1", "async_pk_lookup@1",
        "async_pk_lookup@4", "async_ingest_exactly_once@1",
    }  # fmt: skip


def test_the_bench_leaves_the_data_as_the_seed_made_it(
    seeded_url: str, results: list[Result]
) -> None:
    with psycopg.connect(seeded_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM usage_events WHERE idempotency_key LIKE '%bench-%'),"
            " (SELECT count(*) FROM usage_event_keys WHERE idempotency_key LIKE '%bench-%'),"
            " (SELECT count(*) FROM usage_events), (SELECT sum(event_count) FROM usage_rollups"
            "  WHERE granularity = 'hour')"
        ).fetchone()
    assert row is not None
    assert row[:2] == (0, 0)  # ingestion and --scale events, and their keys, are gone
    assert row[2] == row[3] == 5_000  # and the rollups agree with what is left


@pytest.mark.slow
def test_the_cli_prints_the_table_and_writes_json_and_chart(
    seeded_url: str, tmp_path: Path
) -> None:
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    done = subprocess.run(
        [sys.executable, "-m", "datalayer", "bench", "--quick", "--no-peers", "--iterations",
         "40", "--events", "2000", "--json", str(out), "--chart", str(chart)],
        env={**os.environ, "DATABASE_URL": seeded_url, "REDIS_URL": REDIS,
             "DATALAYER_CACHE_KEYS": CACHE_KEYS},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pk_lookup" in done.stdout
    assert "cache: hit ratio" in done.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    names = {s["name"] for s in data["scenarios"]}
    assert names >= {"pk_lookup", "raw_pk_lookup", "ingest_exactly_once", "raw_copy", "dau_30d"}
    assert set(data["scenarios"][0]) == {
        "name", "p50_us", "p95_us", "p99_us", "ops_per_s", "threads", "baseline", "ratio",
    }  # fmt: skip
    assert data["machine"]["cpus"] >= 1
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
