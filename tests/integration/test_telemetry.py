"""OpenTelemetry, asserted attribute by attribute with the SDK's in-memory exporters."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import PG_HOST, PG_PORT, REDIS_URL
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import datalayer
from datalayer import AlreadyExists, Database, Settings
from datalayer._cachecore import SigningKeys
from datalayer._telemetry import shape_of
from datalayer.repositories import REPOSITORIES


class Recorded:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.metrics = InMemoryMetricReader()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.meter_provider = MeterProvider(metric_readers=[self.metrics])

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        found = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        found += list(item.data.data_points)
        return found


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    rec = Recorded()
    datalayer.instrument(tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider)
    try:
        yield rec
    finally:
        datalayer.uninstrument()


@pytest.fixture
def db(fresh_url: str) -> Iterator[Database]:
    with Database(Settings(database_url=fresh_url, pool_min_size=1)) as database:
        yield database


def query_sql(name: str) -> str:
    for repo in REPOSITORIES:
        for ref in repo.query_refs.values():
            if ref.query is not None and ref.query.name == name:
                return ref.query.sql
    raise AssertionError(name)


def test_a_named_query_is_a_client_span_with_the_stable_database_attributes(
    recorded: Recorded, db: Database, fresh_dbname: str
) -> None:
    account = db.accounts.create(name="Traced")
    recorded.spans.clear()
    assert db.accounts.get(account_id=account.id) == account
    [span] = recorded.finished()
    assert span.name == "accounts.get_account"
    assert span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "db.system.name": "postgresql",
        "db.namespace": fresh_dbname,
        "db.operation.name": "SELECT",
        "db.collection.name": "accounts",
        "db.query.summary": "SELECT accounts",
        "db.query.text": query_sql("get_account"),
        "server.address": PG_HOST,
        "server.port": PG_PORT,
    }
    assert "Traced" not in str(span.attributes)  # parameter values are never recorded


def test_a_refused_statement_records_the_error_class_and_sqlstate(
    recorded: Recorded, db: Database
) -> None:
    account = db.accounts.create(name="Traced")
    email = f"{uuid.uuid4().hex[:8]}@traced.test"
    db.users.create(account_id=account.id, email=email, role="owner")
    recorded.spans.clear()
    with pytest.raises(AlreadyExists):
        db.users.create(account_id=account.id, email=email, role="member")
    failed = [s for s in recorded.finished() if s.status.status_code is StatusCode.ERROR]
    # users.create is a transaction of its own (the address is reserved in user_emails,
    # then the user inserted): its span fails with the one refused statement in it.
    assert [s.name for s in failed if s.name == "datalayer.unit_of_work"] == [
        "datalayer.unit_of_work"
    ]
    failed = [s for s in failed if s.name != "datalayer.unit_of_work"]
    assert len(failed) == 1
    attributes = dict(failed[0].attributes or {})
    assert attributes["error.type"] == "AlreadyExists"
    assert attributes["db.response.status_code"] == "23505"
    assert attributes["db.operation.name"] == "INSERT"
    [point] = [
        p
        for p in recorded.points("db.client.operation.duration")
        if p.attributes.get("error.type") == "AlreadyExists"
    ]
    assert point.attributes["db.response.status_code"] == "23505"
    assert point.count == 1


def test_a_unit_of_work_span_holds_its_statements_and_a_copy_records_its_batch_size(
    recorded: Recorded, db: Database
) -> None:
    account = db.accounts.create(name="Batched")
    now = datetime.now(UTC)
    events = [
        {"account_id": account.id, "category": "feature", "name": "export.csv",
         "occurred_at": now - timedelta(minutes=i)}
        for i in range(7)
    ]  # fmt: skip
    recorded.spans.clear()
    with db.unit_of_work() as uow:
        uow.accounts.get(account_id=account.id)
        uow.accounts.get(account_id=account.id + 1)
    [unit] = recorded.named("datalayer.unit_of_work")
    children = [
        s for s in recorded.finished() if s.parent and s.parent.span_id == unit.context.span_id
    ]
    assert [s.name for s in children] == ["accounts.get_account"] * 2
    result = db.analytics.record_batch(events=events)
    assert result.inserted == 7
    [copy] = [
        s for s in recorded.finished() if (s.attributes or {}).get("db.operation.name") == "COPY"
    ]
    assert copy.name == "analytics.copy_analytics_staging"
    assert (copy.attributes or {})["db.operation.batch.size"] == 7


def test_cached_reads_are_spans_that_say_hit_or_miss(recorded: Recorded, fresh_url: str) -> None:
    keys = SigningKeys.one_off("telemetry")
    settings = Settings(database_url=fresh_url, redis_url=f"{REDIS_URL}/0", cache_keys=keys)
    with Database(settings) as db:
        db.cache.namespace = f"otel-{uuid.uuid4().hex[:8]}"
        recorded.spans.clear()
        assert db.cached.plan(code="no-such-plan") is None
        assert db.cached.plan(code="no-such-plan") is None
    outcomes = [
        (s.attributes or {}).get("datalayer.cache.outcome")
        for s in recorded.named("datalayer.cache.get_or_build")
    ]
    assert outcomes == ["miss", "negative_hit"]
    hits = [
        (s.attributes or {}).get("datalayer.cache.hit")
        for s in recorded.named("datalayer.cache.get_or_build")
    ]
    assert hits == [False, True]


def test_metrics_give_the_duration_by_query_and_the_pool_gauges(
    recorded: Recorded, db: Database, fresh_dbname: str
) -> None:
    account = db.accounts.create(name="Measured")
    for _ in range(3):
        db.accounts.get(account_id=account.id)
    [point] = [
        p
        for p in recorded.points("db.client.operation.duration")
        if p.attributes["datalayer.query.name"] == "accounts.get_account"
    ]
    assert point.count == 3
    assert point.sum > 0
    assert point.attributes["db.query.summary"] == "SELECT accounts"
    assert point.attributes["db.namespace"] == fresh_dbname
    mine = {"db.client.connection.pool.name": db.pool_name}
    counts = {
        p.attributes["db.client.connection.state"]: p.value
        for p in recorded.points("db.client.connection.count")
        if p.attributes.items() >= mine.items()
    }
    stats = db.stats()
    seen = {p.attributes.get("db.client.connection.pool.name")
            for p in recorded.points("db.client.connection.count")}  # fmt: skip
    assert set(counts) == {"idle", "used"}, (db.pool_name, seen)
    assert counts["idle"] + counts["used"] >= 1
    assert counts["idle"] + counts["used"] <= stats["pool_max"]
    [maximum] = [p for p in recorded.points("db.client.connection.max") if p.attributes == mine]
    assert maximum.value == db.settings.pool_max_size
    [pending] = [
        p for p in recorded.points("db.client.connection.pending_requests") if p.attributes == mine
    ]
    assert pending.value == 0


def test_after_uninstrument_nothing_is_recorded(recorded: Recorded, db: Database) -> None:
    datalayer.uninstrument()
    db.accounts.create(name="Quiet")
    assert recorded.finished() == []


@pytest.mark.parametrize(
    ("sql", "summary"),
    [
        ("SELECT a FROM accounts WHERE id = 1", "SELECT accounts"),
        ("WITH x AS (SELECT 1 FROM users) INSERT INTO files (a) SELECT 1", "INSERT files"),
        ("UPDATE ONLY invoices SET a = 1", "UPDATE invoices"),
        ("DELETE FROM quota_reservations WHERE x", "DELETE quota_reservations"),
        ("COPY usage_events (a, b) FROM STDIN (FORMAT BINARY)", "COPY usage_events"),
        ("-- from nowhere\nSELECT 'FROM x', now()", "SELECT"),
        ("SELECT pg_advisory_xact_lock(hashtext('datalayer.rollups'))", "SELECT"),
        ("CREATE TEMP TABLE usage_staging (a int) ON COMMIT DROP", "CREATE usage_staging"),
    ],
)
def test_the_query_summary_names_the_main_operation_and_table(sql: str, summary: str) -> None:
    assert shape_of(sql).summary == summary


def test_every_named_query_has_an_operation_name() -> None:
    for repo in REPOSITORIES:
        for ref in repo.query_refs.values():
            assert ref.query is not None
            assert shape_of(ref.query.sql).operation != "OTHER", ref.query.name


def test_without_opentelemetry_installed_the_library_works_and_instrument_says_how(
    fresh_url: str,
) -> None:
    script = textwrap.dedent(
        f"""
        import sys

        class Absent:
            def find_spec(self, name, path=None, target=None):
                if name == "opentelemetry" or name.startswith("opentelemetry."):
                    raise ModuleNotFoundError(name)
                return None

        sys.meta_path.insert(0, Absent())
        import datalayer
        from datalayer import Database, DataLayerError, Settings

        with Database(Settings(database_url={fresh_url!r}, pool_min_size=1)) as db:
            assert db.accounts.get(account_id=1) is None
        try:
            datalayer.instrument()
        except DataLayerError as exc:
            print("refused:", exc)
        try:
            Database(Settings(database_url={fresh_url!r}, otel=True))
        except DataLayerError as exc:
            print("refused:", exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ['refused: OpenTelemetry is not installed: pip install "datalayer[otel]"'] * 2


@pytest.mark.parametrize("field", ["tracer_provider", "meter_provider"])
def test_instrument_refuses_what_is_not_a_provider(field: str) -> None:
    with pytest.raises(datalayer.InvalidInput) as info:
        datalayer.instrument(**{field: "not a provider"})
    assert info.value.field == field
    assert datalayer._telemetry.ACTIVE is None
