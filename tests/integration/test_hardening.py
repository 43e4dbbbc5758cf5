"""Regression tests of issue 13's defects 1-4: what hostile input broke, and must not again.

1. an instant out of range committed rows the library could not read back;
2. entry points raised raw Python exceptions (or touched Redis) before validating;
3. one event with bad properties sank a whole usage batch;
4. the 4096-byte properties limit was measured after compression.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from conftest import REDIS_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datalayer import (
    Database,
    InvalidInput,
    PlanMeterSpec,
    Settings,
    UsageDayKey,
)
from datalayer._validation import PROPERTIES_MAX_BYTES, properties_refusal

NOW = datetime.now(UTC) - timedelta(minutes=1)
MINUS_5H = timezone(timedelta(hours=-5))
PLUS_14H = timezone(timedelta(hours=14))
# Instants that Python can hold but that lie outside the documented range (or
# that become year 10000 or year 0 in UTC).
OUT_OF_RANGE = [
    datetime(9999, 12, 15, tzinfo=UTC),
    datetime(9999, 12, 31, 23, tzinfo=MINUS_5H),
    datetime(1, 1, 1, tzinfo=PLUS_14H),
    datetime(9000, 1, 1, tzinfo=UTC),
    datetime(1899, 12, 31, 23, 59, tzinfo=UTC),
]


@pytest.fixture
def world(db: Database) -> dict[str, int]:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )
    draft = db.plans.create_draft(
        code="pro",
        name="Pro",
        billing_interval="month",
        base_price_minor=2500,
        currency="USD",
        meters=[PlanMeterSpec(meter_code="api_calls", included_quantity=Decimal(10))],
    )
    plan = db.plans.publish(plan_id=draft.id)
    account = db.accounts.create(name="Acme")
    subscription = db.subscriptions.start(account_id=account.id, plan_id=plan.id)
    return {"account": account.id, "plan": plan.id, "subscription": subscription.id}


def readable(db: Database, account_id: int) -> None:
    """Every read of the account's subscriptions and quotas still works."""
    db.subscriptions.current(account_id=account_id)
    db.subscriptions.history(account_id=account_id)
    db.quotas.status(account_id=account_id)
    db.billing.invoices(account_id=account_id)


# -- 1. instants out of range -------------------------------------------------------------------


@pytest.mark.parametrize("now", OUT_OF_RANGE, ids=str)
def test_starting_a_subscription_at_an_instant_out_of_range_is_refused_and_commits_nothing(
    db: Database, world: dict[str, int], now: datetime
) -> None:
    other = db.accounts.create(name="Other")
    with pytest.raises(InvalidInput) as info:
        db.subscriptions.start(account_id=other.id, plan_id=world["plan"], now=now)
    assert info.value.field == "now"
    assert db.subscriptions.current(account_id=other.id) is None
    readable(db, other.id)


@pytest.mark.parametrize("now", OUT_OF_RANGE, ids=str)
@pytest.mark.parametrize("method", ["cancel_now", "cancel_at_period_end", "upgrade_now"])
def test_changing_a_subscription_at_an_instant_out_of_range_is_refused_and_keeps_it_readable(
    db: Database, world: dict[str, int], now: datetime, method: str
) -> None:
    args: dict[str, Any] = {
        "account_id": world["account"],
        "subscription_id": world["subscription"],
        "now": now,
    }
    if method == "upgrade_now":
        args["plan_id"] = world["plan"]
    with pytest.raises(InvalidInput) as info:
        getattr(db.subscriptions, method)(**args)
    assert info.value.field == "now"
    current = db.subscriptions.current(account_id=world["account"])
    assert current is not None
    assert current.id == world["subscription"]
    assert current.cancel_at_period_end is False
    readable(db, world["account"])


def test_reports_and_invoices_refuse_instants_out_of_range_before_any_sql(
    db: Database, world: dict[str, int]
) -> None:
    edge = datetime(9999, 12, 31, 23, tzinfo=MINUS_5H)
    before = db.stats().get("requests_num", 0)
    with pytest.raises(InvalidInput) as info:
        db.usage_reports.top_accounts(meter_code="api_calls", start=NOW, end=edge)
    assert info.value.field == "end"
    with pytest.raises(InvalidInput) as info:
        db.billing.generate_invoice(
            account_id=world["account"],
            subscription_id=world["subscription"],
            period_start=NOW,
            period_end=edge,
        )
    assert info.value.field == "period_end"
    with pytest.raises(InvalidInput) as info:
        db.billing.finalize(account_id=world["account"], invoice_id=1, now=edge)
    assert info.value.field == "now"
    assert db.stats().get("requests_num", 0) == before


def test_the_range_includes_its_first_instant_and_the_last_before_9000(
    db: Database, world: dict[str, int]
) -> None:
    other = db.accounts.create(name="Edge")
    last = datetime(8999, 12, 31, 23, 59, 59, tzinfo=UTC)
    started = db.subscriptions.start(account_id=other.id, plan_id=world["plan"], now=last)
    assert started.current_period_start == last
    db.subscriptions.cancel_now(account_id=other.id, subscription_id=started.id, now=last)
    readable(db, other.id)
    first = db.accounts.create(name="Old")
    old = db.subscriptions.start(
        account_id=first.id, plan_id=world["plan"], now=datetime(1900, 1, 1, tzinfo=UTC)
    )
    assert old.current_period_start.year == 1900
    readable(db, first.id)


# -- 2. raw exceptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [None, {"a": 1}, "abc", b"abc", 3, {1, 2}, iter([])],
    ids=["None", "dict", "str", "bytes", "int", "set", "iterator"],
)
@pytest.mark.parametrize("repository", ["usage", "analytics"])
def test_a_batch_that_is_not_a_list_is_refused_naming_events(
    db: Database, repository: str, events: Any
) -> None:
    with pytest.raises(InvalidInput) as info:
        getattr(db, repository).record_batch(events=events)
    assert info.value.field == "events"


@pytest.mark.parametrize(
    "now",
    ["", "2026-01-01", 0, datetime(2026, 1, 1), datetime(1, 1, 1, tzinfo=UTC), date(2026, 1, 1)],
    ids=repr,
)
@pytest.mark.parametrize("repository", ["usage", "analytics"])
def test_a_batch_with_a_bad_now_is_refused_naming_now(
    db: Database, repository: str, now: Any
) -> None:
    with pytest.raises(InvalidInput) as info:
        getattr(db, repository).record_batch(events=[], now=now)
    assert info.value.field == "now"


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("refresh_usage_days", {"days": ["x"]}),
        ("refresh_usage_days", {"days": [{"account_id": 0, "meter_code": "x", "day_start": 1}]}),
        ("refresh_usage_days", {"days": "abc"}),
        ("rebuild_analytics_days", {"days": [None]}),
        ("refresh_usage_hours", {"account_id": 1, "batch_size": 0}),
        ("refresh_usage_hours", {"account_id": 1, "batch_size": "5"}),
        ("refresh_usage_hours", {"account_id": 0, "batch_size": 5}),
        ("refresh_usage_hours", {"batch_size": 5}),
        ("claim_analytics_days", {"account_id": 1, "batch_size": 10**9}),
        ("claim_analytics_days", {"account_id": -1, "batch_size": 5}),
        ("queued_usage_accounts", {"limit": 0}),
        ("queued_analytics_accounts", {"limit": "10"}),
    ],
)
def test_rollup_steps_refuse_bad_arguments_before_any_sql(
    db: Database, method: str, args: dict[str, Any]
) -> None:
    before = db.stats().get("requests_num", 0)
    with pytest.raises(InvalidInput):
        getattr(db.rollups, method)(**args)
    assert db.stats().get("requests_num", 0) == before


def test_a_usage_day_key_is_accepted_by_refresh_usage_days(db: Database) -> None:
    key = UsageDayKey(account_id=1, meter_code="api_calls", day_start=NOW)
    assert db.rollups.refresh_usage_days(days=[key]) == 0


@pytest.fixture
def cached_db(db: Database, world: dict[str, int]) -> Iterator[Database]:
    settings = Settings(
        database_url=db.settings.database_url,
        redis_url=f"{REDIS_URL}/0",
        cache_keys="test:" + "ab" * 32,
    )
    with Database(settings) as cdb:
        cdb.cache.namespace = f"hardening-{world['account']}-{id(cdb)}"
        yield cdb
        client = redis.Redis.from_url(f"{REDIS_URL}/0")
        keys = list(client.scan_iter(match=f"{cdb.cache.namespace}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.mark.parametrize(
    ("method", "args", "field"),
    [
        ("auth", {"secret": None}, "secret"),
        ("auth", {"secret": b"dl_live_x"}, "secret"),
        ("plan", {"code": "\ud800"}, "code"),
        ("plan", {"code": None}, "code"),
        ("plan", {"code": "x" * 10_000}, "code"),
        ("subscription", {"account_id": "42"}, "account_id"),
        ("subscription", {"account_id": 0}, "account_id"),
        ("subscription", {"account_id": True}, "account_id"),
    ],
)
def test_cached_reads_refuse_bad_arguments_before_touching_redis_or_postgresql(
    cached_db: Database, method: str, args: dict[str, Any], field: str
) -> None:
    before = (cached_db.cache.stats.as_dict(), cached_db.stats().get("requests_num", 0))
    with pytest.raises(InvalidInput) as info:
        getattr(cached_db.cached, method)(**args)
    assert info.value.field == field
    assert (cached_db.cache.stats.as_dict(), cached_db.stats().get("requests_num", 0)) == before


def test_a_cached_subscription_refuses_a_string_id_also_when_the_value_is_warm(
    cached_db: Database, world: dict[str, int]
) -> None:
    warm = cached_db.cached.subscription(account_id=world["account"])
    assert warm is not None
    assert cached_db.cached.subscription(account_id=world["account"]) == warm  # a hit
    with pytest.raises(InvalidInput):
        cached_db.cached.subscription(account_id=str(world["account"]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda db: db.run_in_transaction(lambda uow: None, attempts=0), "attempts"),
        (lambda db: db.run_in_transaction(lambda uow: None, attempts="3"), "attempts"),
        (lambda db: db.run_in_transaction(None), "fn"),
        (lambda db: db.run_in_transaction(lambda uow: None, base_delay=-1), "base_delay"),
        (lambda db: db.unit_of_work(isolation="snapshot").__enter__(), "isolation"),
        (lambda db: db.unit_of_work(isolation=["serializable"]).__enter__(), "isolation"),
        (lambda db: db.unit_of_work(read_only="yes").__enter__(), "read_only"),
    ],
)
def test_database_methods_refuse_bad_arguments_with_invalid_input(
    db: Database, call: Any, field: str
) -> None:
    before = db.stats().get("requests_num", 0)
    with pytest.raises(InvalidInput) as info:
        call(db)
    assert info.value.field == field
    assert db.stats().get("requests_num", 0) == before


# -- 3. one bad event in a usage batch ----------------------------------------------------------


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


BAD_PROPERTIES: dict[str, Any] = {
    "nan": {"x": math.nan},
    "infinity": {"x": math.inf},
    "nul": {"x": "a\x00b"},
    "nul key": {"a\x00": 1},
    "surrogate": {"x": "\ud800"},
    "over 4 KB": {"x": "y" * 5000},
    "decimal": {"x": Decimal("1.5")},
    "bytes": {"x": b"raw"},
    "datetime": {"x": NOW},
    "set": {"x": {1, 2}},
    "int key": {1: "x"},
    "1000 levels": deep(1000),
    "33 levels": deep(33),
    "not a dict": ["x"],
}


@pytest.mark.parametrize("kind", list(BAD_PROPERTIES))
def test_one_event_with_bad_properties_is_rejected_and_the_other_99_are_stored(
    db: Database, world: dict[str, int], kind: str
) -> None:
    events: list[dict[str, Any]] = [
        {
            "account_id": world["account"],
            "meter_code": "api_calls",
            "quantity": Decimal(1),
            "occurred_at": NOW,
            "idempotency_key": f"{kind}-{i}",
            "properties": {"i": i},
        }
        for i in range(100)
    ]
    events[37]["properties"] = BAD_PROPERTIES[kind]
    result = db.usage.record_batch(events=events)
    assert (result.inserted, result.duplicates) == (99, 0)
    assert [(r.index, r.idempotency_key) for r in result.rejected] == [(37, f"{kind}-37")]
    assert result.rejected[0].reason.startswith("bad properties")
    assert db.usage.get_by_key(account_id=world["account"], idempotency_key=f"{kind}-36")
    assert db.usage.get_by_key(account_id=world["account"], idempotency_key=f"{kind}-37") is None


@pytest.mark.parametrize("kind", list(BAD_PROPERTIES))
def test_recording_one_event_with_bad_properties_raises_invalid_input_naming_properties(
    db: Database, world: dict[str, int], kind: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        db.usage.record(
            account_id=world["account"],
            meter_code="api_calls",
            quantity=Decimal(1),
            occurred_at=NOW,
            idempotency_key=f"one-{kind}",
            properties=BAD_PROPERTIES[kind],
        )
    assert info.value.field == "properties"
    assert db.usage.get_by_key(account_id=world["account"], idempotency_key=f"one-{kind}") is None


@pytest.mark.parametrize("kind", [k for k in BAD_PROPERTIES if k != "not a dict"])
def test_one_analytics_event_with_bad_properties_is_rejected_and_the_rest_stored(
    db: Database, world: dict[str, int], kind: str
) -> None:
    events = [
        {
            "account_id": world["account"],
            "category": "feature",
            "name": "export",
            "occurred_at": NOW,
        }
        for _ in range(10)
    ]
    events[3] = {**events[3], "properties": BAD_PROPERTIES[kind]}
    result = db.analytics.record_batch(events=events)
    assert result.inserted == 9
    assert [r.index for r in result.rejected] == [3]
    assert result.rejected[0].reason.startswith("bad properties")


# -- 4. the size limit is on the JSON text ------------------------------------------------------


def test_fifty_kilobytes_of_repetitive_text_are_refused_though_they_compress_small(
    db: Database, world: dict[str, int]
) -> None:
    repetitive = {"text": "abcd" * 12_500}
    result = db.analytics.record_batch(
        events=[
            {
                "account_id": world["account"],
                "category": "feature",
                "name": "export",
                "occurred_at": NOW,
                "properties": repetitive,
            }
        ]
    )
    assert result.inserted == 0
    assert result.rejected[0].reason == (
        f"bad properties: larger than {PROPERTIES_MAX_BYTES} bytes of JSON text"
    )


@pytest.mark.parametrize("table", ["usage_events", "analytics_events"])
def test_the_tables_refuse_properties_over_4096_bytes_of_json_text_written_around_the_library(
    db: Database, world: dict[str, int], table: str
) -> None:
    with db.connection() as conn:
        conn.execute("CREATE TEMP TABLE stored (j jsonb)")
        conn.execute("INSERT INTO stored VALUES (%s)", [json.dumps({"text": "abcd" * 12_500})])
        row = conn.execute("SELECT pg_column_size(j), octet_length(j::text) FROM stored").fetchone()
        assert row is not None
        assert row[0] < 4096 < row[1]  # small as stored (compressed), large as text
        columns = {
            "usage_events": "(account_id, id, meter_code, quantity, occurred_at, "
            "idempotency_key, properties) VALUES (%s, 1, 'api_calls', 1, now(), 'k', %s)",
            "analytics_events": "(account_id, category, name, occurred_at, properties)"
            " VALUES (%s, 'feature', 'x', now(), %s)",
        }[table]
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                f"INSERT INTO {table} {columns}",
                [world["account"], json.dumps({"text": "abcd" * 12_500})],
            )


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.text(
                st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8
            ),
            children,
            max_size=6,
        )
    ),
    max_leaves=40,
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=st.dictionaries(st.text(max_size=8).filter(lambda k: "\x00" not in k), JSON_VALUES))
def test_the_library_measures_properties_exactly_as_the_database_does(
    conn: psycopg.Connection[Any], value: dict[str, Any]
) -> None:
    try:
        json.dumps(value).encode()
    except UnicodeEncodeError:
        return  # a surrogate in a key: refused by both, measured by neither
    row = conn.execute("SELECT octet_length(%s::jsonb::text)", [json.dumps(value)]).fetchone()
    assert row is not None
    refusal = properties_refusal(value)
    assert (refusal is None) == (row[0] <= PROPERTIES_MAX_BYTES), (row[0], refusal)


def test_properties_of_exactly_4096_bytes_of_json_text_are_accepted_and_4097_refused(
    conn: psycopg.Connection[Any],
) -> None:
    overhead = len('{"x": ""}')
    for size, accepted in ((4096, True), (4097, False)):
        value = {"x": "y" * (size - overhead)}
        row = conn.execute("SELECT octet_length(%s::jsonb::text)", [json.dumps(value)]).fetchone()
        assert row == (size,)
        assert (properties_refusal(value) is None) is accepted
