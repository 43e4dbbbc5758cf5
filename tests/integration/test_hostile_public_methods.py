"""Every public method, driven with hostile values: a correct result or a ``DataLayerError``.

The methods are found by introspection (every repository in ``REPOSITORIES``
and ``CachedReads``, and their twins in ``ASYNC_REPOSITORIES`` and
``AsyncCachedReads`` through a bridged ``AsyncDatabase``), so a new public
method is covered the day it is added, on both APIs;
a parameter name the sweep has no good value for fails the sweep until one is
given here. Each call draws, for each parameter, either a good value for a
small world of real rows (an account with a user, a subscription on a plan
with a hard quota, an API key, a file, an invoice, a reservation) or a hostile
one: wrong types, out-of-range numbers and instants, NUL and lone surrogates,
SQL-ish text, huge strings, NaN. What is accepted:

* a return value of the declared return type, or
* a ``DataLayerError`` (the rule of every public entry point: nothing else,
  not even a ``TypeError``, since every keyword given is a real one);

and after every call the pool lends a working connection. At the end, every
account the sweep touched is still readable through every read method: no
call committed a row that the library cannot read back.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import threading
import traceback
import types
import typing
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import redis
from async_bridge import Bridge
from conftest import REDIS_URL as TEST_REDIS_URL
from conftest import _clone, pg_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datalayer import (
    AsyncCachedReads,
    AsyncDatabase,
    CachedReads,
    Database,
    DataLayerError,
    NotFound,
    Page,
    PlanMeterSpec,
    Settings,
)
from datalayer.repositories import ASYNC_REPOSITORIES, REPOSITORIES

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
REDIS_URL = f"{TEST_REDIS_URL}/0"
NAMESPACE = f"hostile-{uuid.uuid4().hex[:8]}"


def entry_points(*classes: type) -> list[tuple[type, str]]:
    found = []
    for cls in classes:
        for name, _fn in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("_"):
                found.append((cls, name))
    return found


ENTRY_POINTS = entry_points(*REPOSITORIES, CachedReads)
ASYNC_ENTRY_POINTS = entry_points(*ASYNC_REPOSITORIES, AsyncCachedReads)


# -- the world --------------------------------------------------------------------------------


@dataclass
class World:
    account: int
    user: int
    plan: int
    plan_code: str
    subscription: int
    period_start: datetime
    period_end: datetime
    key: int
    secret: str
    file: int
    invoice: int
    reservation: int


@pytest.fixture(scope="module")
def hostile_db(template_dbname: str) -> Iterator[Database]:
    janitor = _clone(template_dbname)
    with janitor:
        url = pg_url(janitor.dbname)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO meters (code, name, unit, aggregation)"
                " VALUES ('api_calls', 'API calls', 'call', 'sum')"
            )
        settings = Settings(
            database_url=url,
            redis_url=REDIS_URL,
            cache_keys="hostile:" + "cd" * 32,
            pool_min_size=1,
            pool_max_size=4,
            pool_timeout=5,
            statement_timeout_ms=10_000,
        )
        with Database(settings) as db:
            db.cache.namespace = NAMESPACE
            yield db
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{NAMESPACE}:*"))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture(scope="module")
def hostile_async_db(hostile_db: Database, bridge: Bridge) -> Iterator[Any]:
    """An ``AsyncDatabase`` on the sweep's database (and cache namespace), bridged."""
    with bridge.wrap(AsyncDatabase(hostile_db.settings)) as db:
        db.cache.namespace = NAMESPACE
        yield db


def build_world(db: Database) -> World:
    tag = uuid.uuid4().hex[:10]
    draft = db.plans.create_draft(
        code=f"p-{tag}",
        name="Plan",
        billing_interval="month",
        base_price_minor=1000,
        currency="USD",
        meters=[
            PlanMeterSpec(
                meter_code="api_calls",
                included_quantity=Decimal(1000),
                limit_kind="hard",
                overage_unit_price_minor=Decimal(2),
            )
        ],
    )
    plan = db.plans.publish(plan_id=draft.id)
    owned = db.accounts.create_with_owner(name=f"A {tag}", owner_email=f"o-{tag}@example.com")
    account = owned.account.id
    subscription = db.subscriptions.start(account_id=account, plan_id=plan.id, now=NOW)
    issued = db.api_keys.issue(
        account_id=account, name="k", environment="live", scopes=["usage:write"]
    )
    file = db.files.register(
        account_id=account, storage_key=f"s/{tag}", file_name="a.txt", content_type="text/plain"
    )
    invoice = db.billing.generate_invoice(
        account_id=account,
        subscription_id=subscription.id,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
    )
    reservation = db.quotas.reserve(
        account_id=account, meter_code="api_calls", quantity=Decimal(1), ttl=timedelta(hours=1)
    )
    return World(
        account=account,
        user=owned.owner.id,
        plan=plan.id,
        plan_code=plan.code,
        subscription=subscription.id,
        period_start=subscription.current_period_start,
        period_end=subscription.current_period_end,
        key=issued.key.id,
        secret=issued.secret.get_secret_value(),
        file=file.id,
        invoice=invoice.id,
        reservation=reservation.id,
    )


def unique() -> str:
    return uuid.uuid4().hex[:12]


# Good values by parameter name; a callable of the world (and the database).
GOOD: dict[str, Callable[[World, Database], Any]] = {
    "account_id": lambda w, db: w.account,
    "account_ids": lambda w, db: [w.account],
    "user_id": lambda w, db: w.user,
    "uploaded_by": lambda w, db: w.user,
    "created_by": lambda w, db: w.user,
    "api_key_id": lambda w, db: w.key,
    "plan_id": lambda w, db: w.plan,
    "subscription_id": lambda w, db: w.subscription,
    "key_id": lambda w, db: w.key,
    "file_id": lambda w, db: w.file,
    "invoice_id": lambda w, db: w.invoice,
    "reservation_id": lambda w, db: w.reservation,
    "name": lambda w, db: "Thing",
    "owner_email": lambda w, db: f"{unique()}@example.com",
    "email": lambda w, db: f"{unique()}@example.com",
    "owner_display_name": lambda w, db: "Owner",
    "display_name": lambda w, db: "Someone",
    "cursor": lambda w, db: None,
    "limit": lambda w, db: 10,
    "term": lambda w, db: "some",
    "code": lambda w, db: w.plan_code,
    "base_price_minor": lambda w, db: 100,
    "currency": lambda w, db: "USD",
    "interval_count": lambda w, db: 1,
    "trial_days": lambda w, db: 0,
    "is_public": lambda w, db: True,
    "meters": lambda w, db: [],
    "now": lambda w, db: NOW,
    "trial": lambda w, db: False,
    "batch": lambda w, db: 10,
    "idempotency_key": lambda w, db: unique(),
    "meter_code": lambda w, db: "api_calls",
    "quantity": lambda w, db: Decimal(1),
    "occurred_at": lambda w, db: NOW,
    "properties": lambda w, db: {"k": "v"},
    "events": lambda w, db: [
        {
            "account_id": w.account,
            "meter_code": "api_calls",
            "quantity": Decimal(1),
            "occurred_at": NOW,
            "idempotency_key": unique(),
            "category": "feature",
            "name": "export",
        }
    ],
    "batch_size": lambda w, db: 10,
    "days": lambda w, db: [],
    "ttl": lambda w, db: timedelta(hours=1),
    "used": lambda w, db: Decimal(1),
    "period_start": lambda w, db: w.period_start,
    "period_end": lambda w, db: w.period_end,
    "start": lambda w, db: NOW - timedelta(days=1),
    "end": lambda w, db: NOW,
    "start_date": lambda w, db: NOW.date() - timedelta(days=7),
    "end_date": lambda w, db: NOW.date(),
    "start_month": lambda w, db: date(NOW.year, 1, 1),
    "end_month": lambda w, db: NOW.date(),
    "attempt": lambda w, db: 1,
    "processing_ms": lambda w, db: 10,
    "error": lambda w, db: "boom",
    "content_type": lambda w, db: "text/plain",
    "created_since": lambda w, db: None,
    "created_before": lambda w, db: None,
    "size_bytes": lambda w, db: 10,
    "checksum_sha256": lambda w, db: "0" * 64,
    "storage_key": lambda w, db: f"s/{unique()}",
    "file_name": lambda w, db: "b.txt",
    "max_attempts": lambda w, db: 3,
    "lease": lambda w, db: timedelta(minutes=5),
    "secret": lambda w, db: w.secret,
    "record_use": lambda w, db: True,
    "context": lambda w, db: db.api_keys.authenticate(secret=w.secret, record_use=False),
    "scope": lambda w, db: "usage:write",
    "scopes": lambda w, db: ["usage:write"],
    "expires_at": lambda w, db: None,
    "overlap": lambda w, db: timedelta(0),
    "include_revoked": lambda w, db: False,
    "due_in": lambda w, db: timedelta(days=30),
    "prorations": lambda w, db: None,
    "provider": lambda w, db: "stripe",
    "provider_payment_id": lambda w, db: f"pi_{unique()}",
    "amount_minor": lambda w, db: 100,
    "refund": lambda w, db: False,
    "refund_id": lambda w, db: 1,
    "provider_refund_id": lambda w, db: f"re_{unique()}",
    "grace": lambda w, db: timedelta(hours=1),
    "reason": lambda w, db: "sent twice by a retrying client",
    "cancelled_by": lambda w, db: w.user,
    "stop": lambda w, db: threading.Event(),
    "job": lambda w, db: "rollups",
    "thresholds": lambda w, db: None,
}

MINUS_5H = timezone(timedelta(hours=-5))
PLUS_14H = timezone(timedelta(hours=14))
HOSTILE_VALUES: list[Any] = [
    None, 0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**100, True, False,
    1.5, -0.0, math.nan, math.inf, "", " ", "0", "1", "x" * 10_001, "\x00", "a\x00b",
    "\ud800", "é" * 300, "'; DROP TABLE accounts; --", "%(x)s", "$1", "NaN",
    b"bytes", bytearray(b"x"), [], [None], [1, "x"], {}, {"a": object()}, (1, 2), {1, 2},
    object(), Decimal("NaN"), Decimal("-Infinity"), Decimal("1e400"), Decimal("-1"),
    Decimal("0.0000001"), datetime(2026, 1, 1), datetime.max.replace(tzinfo=UTC),
    datetime.min.replace(tzinfo=UTC), datetime(9999, 12, 31, 23, tzinfo=MINUS_5H),
    datetime(1, 1, 1, tzinfo=PLUS_14H), datetime(9999, 12, 15, tzinfo=UTC),
    date.min, date.max, date(2026, 1, 1), timedelta.max, timedelta.min, timedelta(-1),
    timedelta(0), uuid.uuid4(), Exception("boom"), len,
]  # fmt: skip
HOSTILE = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.lists(st.sampled_from(HOSTILE_VALUES), max_size=3),
    st.dictionaries(st.text(max_size=5), st.sampled_from(HOSTILE_VALUES), max_size=3),
)


# -- judging results --------------------------------------------------------------------------


def conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the declared return type (models by class, lists by item)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if (isinstance(annotation, type) and issubclass(annotation, Page)) or origin is Page:
        item = args[0] if args else getattr(annotation, "__pydantic_generic_metadata__", {})
        if isinstance(item, dict):
            item = (item.get("args") or (Any,))[0]
        return isinstance(value, Page) and all(conforms(v, item) for v in value.items)
    if annotation is bool:
        return type(value) is bool
    if annotation is int:
        return type(value) is int
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def hints(cls: type, name: str) -> dict[str, Any]:
    """The resolved annotations of a public method (``Annotated`` kept)."""
    fn = inspect.unwrap(getattr(cls, name))
    return typing.get_type_hints(fn, include_extras=True)


def literals(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` annotation (inside ``Annotated`` or ``| None``), else ()."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)
    if origin is typing.Annotated or origin in (typing.Union, types.UnionType):
        return tuple(v for a in typing.get_args(annotation)[:2] for v in literals(a))
    return ()


def good_value(param: str, annotation: Any, world: World, db: Database) -> Any:
    if param in GOOD:
        return GOOD[param](world, db)
    return literals(annotation)[0]


def healthy(db: Database) -> None:
    with db.connection() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- the sweep --------------------------------------------------------------------------------


def test_the_sweep_knows_a_good_value_for_every_parameter_of_every_public_method() -> None:
    missing = sorted(
        {
            f"{cls.__name__}.{name}({param})"
            for cls, name in ENTRY_POINTS + ASYNC_ENTRY_POINTS
            for param in inspect.signature(getattr(cls, name)).parameters
            if param != "self" and param not in GOOD and not literals(hints(cls, name).get(param))
        }
    )
    assert missing == []
    assert len(ENTRY_POINTS) >= 95
    # the same methods, names and keyword arguments on both APIs
    assert sorted((c.__name__.removeprefix("Async"), n) for c, n in ASYNC_ENTRY_POINTS) == sorted(
        (c.__name__, n) for c, n in ENTRY_POINTS
    )


@pytest.mark.parametrize(
    ("cls", "name"), ENTRY_POINTS, ids=[f"{c.__name__}.{n}" for c, n in ENTRY_POINTS]
)
def test_a_public_method_returns_its_type_or_raises_a_datalayer_error_on_hostile_input(
    hostile_db: Database, cls: type, name: str
) -> None:
    sweep(hostile_db, hostile_db, cls, name, values=HOSTILE_VALUES, mixes=25)


@pytest.mark.parametrize(
    ("cls", "name"),
    ASYNC_ENTRY_POINTS,
    ids=[f"{c.__name__}.{n}" for c, n in ASYNC_ENTRY_POINTS],
)
def test_an_async_public_method_returns_its_type_or_raises_a_datalayer_error_on_hostile_input(
    hostile_db: Database, hostile_async_db: Any, cls: type, name: str
) -> None:
    """The same sweep through ``AsyncDatabase`` (bridged: tests/async_bridge.py). The
    validation is shared code and the sync sweep tries all of it: here every third
    listed value (wrong types, extreme numbers and instants, NUL, huge text, NaN) in
    every parameter of every async method, and two random mixes (any hostile value)."""
    sweep(hostile_async_db, hostile_db, cls, name, values=HOSTILE_VALUES[::3], mixes=2)


def sweep(
    db: Any, sync_db: Database, cls: type, name: str, *, values: list[Any], mixes: int
) -> None:
    """Call ``cls.name`` of ``db`` with each of ``values`` in every parameter, then with
    ``mixes`` random mixes; each call returns its type or raises a ``DataLayerError``,
    and leaves the pool lending a working connection. ``sync_db`` builds the world."""
    world = build_world(sync_db)
    target = getattr(db, "_target", db)  # a bridged AsyncDatabase: find attributes on it
    holder: Any = (
        db.cached
        if cls in (CachedReads, AsyncCachedReads)
        else getattr(
            db,
            next(
                attr
                for attr in dir(type(target))
                if not attr.startswith("_") and type(getattr(target, attr, None)) is cls
            ),
        )
    )
    method = getattr(holder, name)
    params = [
        p for p in inspect.signature(getattr(cls, name)).parameters.values() if p.name != "self"
    ]
    annotations = hints(cls, name)
    expected = annotations["return"]
    outcomes: dict[str, int] = {}

    def attempt(args: dict[str, Any]) -> None:
        try:
            result = method(**args)
        except DataLayerError as exc:
            outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
        except BaseException as exc:
            raise AssertionError(
                f"{cls.__name__}.{name}({args!r}) raised {type(exc).__name__}: {exc}\n"
                + "".join(traceback.format_exception(exc))
            ) from exc
        else:
            outcomes["returned"] = outcomes.get("returned", 0) + 1
            assert conforms(result, expected), (name, args, result, expected)
        healthy(db)

    def good(param: inspect.Parameter) -> Any:
        return good_value(param.name, annotations.get(param.name), world, sync_db)

    # Every listed hostile value in every parameter, the others good.
    for param in params:
        for value in values:
            attempt({**{p.name: good(p) for p in params}, param.name: value})

    # Then random mixes, hostile values of any shape in several parameters at once.
    @settings(
        max_examples=mixes,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def mix(data: st.DataObject) -> None:
        args: dict[str, Any] = {}
        for param in params:
            choice = data.draw(st.sampled_from(["good", "hostile", "hostile", "omit"]))
            if choice == "omit" and param.default is not inspect.Parameter.empty:
                continue
            if choice == "hostile":
                args[param.name] = data.draw(HOSTILE, label=param.name)
            else:
                args[param.name] = good(param)
        attempt(args)

    mix()
    attempt({p.name: good(p) for p in params})
    assert sum(outcomes.values()) >= len(params) * len(values)


def read_everything(db: Database, account_id: int) -> None:
    """Every read method of the account: none may fail on what the sweep stored."""
    reads: list[Callable[[], Any]] = [
        lambda: db.accounts.get(account_id=account_id),
        lambda: db.users.list(account_id=account_id),
        lambda: db.subscriptions.current(account_id=account_id),
        lambda: db.subscriptions.history(account_id=account_id, limit=1000),
        lambda: db.quotas.status(account_id=account_id),
        lambda: db.api_keys.list(account_id=account_id, include_revoked=True, limit=1000),
        lambda: db.files.list(account_id=account_id, limit=1000),
        lambda: db.files.list(account_id=account_id, status="deleted", limit=1000),
        lambda: db.billing.balance(account_id=account_id),
        lambda: db.billing.transactions(account_id=account_id, limit=1000),
        lambda: db.usage_reports.period_totals(
            account_id=account_id,
            period_start=NOW - timedelta(days=40),
            period_end=NOW + timedelta(days=1),
        ),
        lambda: db.cached.subscription(account_id=account_id),
    ]
    for read in reads:
        read()
    for invoice in db.billing.invoices(account_id=account_id, limit=1000).items:
        db.billing.get_invoice(account_id=account_id, invoice_id=invoice.id)
        db.billing.payments(account_id=account_id, invoice_id=invoice.id)
    for subscription in db.subscriptions.history(account_id=account_id, limit=1000).items:
        db.subscriptions.require(account_id=account_id, subscription_id=subscription.id)


def test_after_the_sweep_every_account_reads_back_and_no_connection_is_left_in_a_transaction(
    hostile_db: Database,
) -> None:
    db = hostile_db
    build_world(db)  # at least one account even when run alone
    with db.connection() as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM accounts ORDER BY id")]
        stuck = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state LIKE 'idle in transaction%'"
        ).fetchone()
    assert stuck == (0,)
    for account_id in ids:
        with contextlib.suppress(NotFound):
            read_everything(db, account_id)
    db.plans.list_public(limit=1000)
    db.billing.monthly_revenue(start_month=date(2000, 1, 1), end_month=date(8999, 12, 1))
