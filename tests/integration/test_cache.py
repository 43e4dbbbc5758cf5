"""The Redis cache of ``db.cached``: hits, invalidation after commit, races, outages.

Each test gets its own key namespace (``db.cache.namespace``) in a logical Redis
database picked from its node id, and deletes its keys afterwards, so tests
running at the same time in other workers never see each other's keys. Tests of
Redis outages start their own ``redis-server`` on a free port.

The tests of this module share one fresh clone of the migrated database (a clone
costs about 0.7 s): each makes its own account and plan codes, and its own
``Database`` object, so counters and pools start from zero in every test.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from conftest import CACHE_KEYS, REDIS_URL, _clone, pg_url
from pydantic import BaseModel
from redis.crc import key_slot

from datalayer import Database, DataLayerError, Settings
from datalayer import _cache as cache_module
from datalayer._apikey import generate_secret, hash_secret
from datalayer._cache import Cache
from datalayer._cachecore import (
    GENERATION_MARGIN_MS,
    GENERATION_TTL_MS,
    MAX_TTL,
    Breaker,
    Codec,
    SigningKeys,
    account_tag,
    key_tag,
    plan_tag,
)
from datalayer.models.cached import AuthBundle
from datalayer.models.plans import PlanMeterSpec, PlanWithMeters
from datalayer.models.subscriptions import Subscription
from datalayer.repositories import ApiKeyRepository, Repositories
from datalayer.repositories import api_keys as api_keys_module

pytestmark = pytest.mark.both_apis

REDIS = REDIS_URL
NEGATIVE = b"\x00none"
KEYS = SigningKeys.parse(CACHE_KEYS)
AUTH_TTL_MS = 300_000
PLAN_TTL_MS = 3_600_000
NEGATIVE_TTL_MS = 10_000


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """A logical database 1..15 chosen by the test's id (keys are namespaced per test too)."""
    return f"{REDIS}/{1 + zlib.crc32(request.node.nodeid.encode()) % 15}"


@pytest.fixture
def raw(redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    """A plain client on the test's logical database; deletes the test's keys at the end."""
    client = redis.Redis.from_url(redis_url)
    _drop_namespace(client, namespace)
    yield client
    _drop_namespace(client, namespace)
    client.close()


@pytest.fixture(scope="module")
def cache_db_url(template_dbname: str) -> Iterator[str]:
    """One fresh clone of the migrated template for this module's tests (they commit)."""
    janitor = _clone(template_dbname)
    with janitor:
        yield pg_url(janitor.dbname)


@pytest.fixture
def cdb(cache_db_url: str, redis_url: str, namespace: str, raw: redis.Redis) -> Iterator[Database]:
    """An open ``Database`` caching in this test's namespace."""
    with Database(_settings(cache_db_url, redis_url)) as database:
        database.cache.namespace = namespace
        yield database


@pytest.fixture
def cache(redis_url: str, namespace: str, raw: redis.Redis) -> Iterator[Cache]:
    """A bare ``Cache`` in this test's namespace (no PostgreSQL)."""
    instance = Cache(redis_url, namespace=namespace, keys=KEYS)
    yield instance
    instance.close()


class RedisServer:
    """A throwaway ``redis-server`` on a free port: start, kill (SIGKILL), pause, resume."""

    def __init__(self) -> None:
        with closing(socket.socket()) as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 5
        with closing(client):
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise
                time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case it was paused
            self.proc.kill()
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


# -- helpers ------------------------------------------------------------------------------


def _settings(database_url: str, redis_url: str | None, keys: str = CACHE_KEYS) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        cache_keys=keys if redis_url else None,
        pool_min_size=1,
        pool_max_size=8,
        pool_timeout=5,
    )


def _drop_namespace(client: redis.Redis, namespace: str) -> None:
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)


@dataclass(frozen=True)
class World:
    account_id: int
    plan: PlanWithMeters
    subscription: Subscription
    key_id: int
    secret: str


def publish(db: Database, code: str, *, price: int = 2500, included: int = 1000) -> PlanWithMeters:
    draft = db.plans.create_draft(
        code=code,
        name=code.title(),
        billing_interval="month",
        base_price_minor=price,
        currency="USD",
        meters=[
            PlanMeterSpec(
                meter_code="api_calls", included_quantity=Decimal(included), limit_kind="hard"
            )
        ],
    )
    db.plans.publish(plan_id=draft.id)
    return db.plans.require(plan_id=draft.id)


def unique(prefix: str) -> str:
    """A plan code no other test uses (plans are shared by the whole database)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def build_world(db: Database) -> World:
    """A meter, a published plan with it, an account subscribed to the plan, and a live key."""
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )
    plan = publish(db, unique("pro"))
    account = db.accounts.create(name="Cached Inc")
    subscription = db.subscriptions.start(account_id=account.id, plan_id=plan.id)
    issued = db.api_keys.issue(
        account_id=account.id, name="ci", environment="live", scopes=["usage:write"]
    )
    return World(
        account_id=account.id,
        plan=plan,
        subscription=subscription,
        key_id=issued.key.id,
        secret=issued.secret.get_secret_value(),
    )


def issue(db: Database, account_id: int, name: str = "second") -> tuple[int, str]:
    issued = db.api_keys.issue(account_id=account_id, name=name, environment="live", scopes=[])
    return issued.key.id, issued.secret.get_secret_value()


def counters(db: Database) -> dict[str, int]:
    return db.cache.stats.as_dict()


def delta(db: Database, before: dict[str, int]) -> dict[str, int]:
    after = counters(db)
    return {k: after[k] - before[k] for k in after if k != "hit_ratio_pct"}


def sql_requests(db: Database) -> int:
    """How many connections the pool has lent so far (absent from the stats until the first)."""
    return db.stats().get("requests_num", 0)


def payload(stored: bytes | None) -> bytes | None:
    """What a signed value holds (``<kid>:<expiry>:<hmac>:<payload>``), unverified."""
    return None if stored is None else stored.split(b":", 3)[3]


def auth_key(db: Database, secret: str, name: str = "value") -> str:
    return db.cache.key(key_tag(hash_secret(secret)), name)


class Thing(BaseModel):
    n: int


# -- 1. hits ------------------------------------------------------------------------------


def test_a_second_auth_is_a_hit_that_returns_the_same_bundle_with_plan_and_meters(
    cdb: Database,
) -> None:
    w = build_world(cdb)
    first = cdb.cached.auth(secret=w.secret)
    before, sql_before = counters(cdb), sql_requests(cdb)

    second = cdb.cached.auth(secret=w.secret)

    changed = delta(cdb, before)
    assert (changed["hits"], changed["misses"], changed["rebuilds"]) == (1, 0, 0)
    assert sql_requests(cdb) == sql_before  # a hit costs no SQL
    assert second is not None
    assert second == first
    assert second.context.key_id == w.key_id
    assert second.context.account_id == w.account_id
    assert second.context.scopes == ("usage:write",)
    assert second.current is not None
    assert second.current.subscription.id == w.subscription.id
    assert second.current.subscription.status == "active"
    assert second.current.plan == w.plan
    meters = [(m.meter_code, m.included_quantity, m.limit_kind) for m in second.current.plan.meters]
    assert meters == [("api_calls", Decimal(1000), "hard")]


# -- 2. invalidation after commit, never after a rollback ---------------------------------


def test_a_revoke_rolled_back_leaves_the_cached_bundle_served_and_the_key_valid(
    cdb: Database, raw: redis.Redis
) -> None:
    w = build_world(cdb)
    bundle = cdb.cached.auth(secret=w.secret)
    assert bundle is not None

    with pytest.raises(RuntimeError, match="abort"), cdb.unit_of_work() as uow:
        uow.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)
        raise RuntimeError("abort")

    before = counters(cdb)
    assert cdb.cached.auth(secret=w.secret) == bundle
    assert delta(cdb, before)["hits"] == 1
    assert before["invalidations"] == counters(cdb)["invalidations"]
    assert raw.exists(auth_key(cdb, w.secret)) == 1
    assert cdb.api_keys.authenticate(secret=w.secret, record_use=False) is not None


def test_a_revoke_in_a_unit_of_work_invalidates_when_it_commits_and_not_before(
    cdb: Database, raw: redis.Redis
) -> None:
    w = build_world(cdb)
    assert cdb.cached.auth(secret=w.secret) is not None

    with cdb.unit_of_work() as uow:
        uow.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)
        # Not yet committed: other transactions still see a live key, so the value stays.
        assert raw.exists(auth_key(cdb, w.secret)) == 1
    assert raw.exists(auth_key(cdb, w.secret)) == 0

    assert cdb.cached.auth(secret=w.secret) is None
    assert cdb.cached.auth(secret=w.secret) is None  # and cached as such


def test_a_revoke_outside_a_unit_of_work_rejects_the_key_on_the_next_call(cdb: Database) -> None:
    w = build_world(cdb)
    assert cdb.cached.auth(secret=w.secret) is not None
    assert cdb.cached.auth(secret=w.secret) is not None  # a hit

    cdb.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)

    assert cdb.cached.auth(secret=w.secret) is None


def test_a_rotation_invalidates_the_old_keys_bundle_and_the_new_key_authenticates(
    cdb: Database,
) -> None:
    w = build_world(cdb)
    old = cdb.cached.auth(secret=w.secret)
    assert old is not None
    assert old.context.expires_at is None

    rotated = cdb.api_keys.rotate(
        account_id=w.account_id, key_id=w.key_id, overlap=timedelta(hours=1)
    )

    again = cdb.cached.auth(secret=w.secret)
    assert again is not None
    assert again.context.expires_at is not None
    new = cdb.cached.auth(secret=rotated.secret.get_secret_value())
    assert new is not None
    assert new.context.key_id == rotated.key.id

    cdb.api_keys.rotate(account_id=w.account_id, key_id=rotated.key.id, overlap=timedelta(0))
    assert cdb.cached.auth(secret=rotated.secret.get_secret_value()) is None


# -- 3. subscription, account and plan changes --------------------------------------------


def test_an_upgrade_and_a_cancellation_show_in_the_next_cached_reads(cdb: Database) -> None:
    w = build_world(cdb)
    bigger = publish(cdb, unique("max"), price=9900, included=50_000)
    assert cdb.cached.subscription(account_id=w.account_id) is not None
    assert cdb.cached.auth(secret=w.secret) is not None
    assert cdb.cached.subscription(account_id=w.account_id) is not None  # a hit

    upgrade = cdb.subscriptions.upgrade_now(
        account_id=w.account_id, subscription_id=w.subscription.id, plan_id=bigger.id
    )

    current = cdb.cached.subscription(account_id=w.account_id)
    assert current is not None
    assert current.subscription.id == upgrade.subscription.id
    assert current.plan == bigger
    bundle = cdb.cached.auth(secret=w.secret)
    assert bundle is not None
    assert bundle.current == current

    cdb.subscriptions.cancel_now(account_id=w.account_id, subscription_id=upgrade.subscription.id)

    assert cdb.cached.subscription(account_id=w.account_id) is None
    bundle = cdb.cached.auth(secret=w.secret)
    assert bundle is not None
    assert bundle.current is None


def test_suspending_an_account_rejects_its_cached_keys_and_reactivating_restores_them(
    cdb: Database,
) -> None:
    w = build_world(cdb)
    _, second = issue(cdb, w.account_id)
    assert cdb.cached.auth(secret=w.secret) is not None
    assert cdb.cached.auth(secret=second) is not None

    cdb.accounts.update(account_id=w.account_id, status="suspended")

    assert cdb.cached.auth(secret=w.secret) is None
    assert cdb.cached.auth(secret=second) is None
    assert cdb.cached.auth(secret=w.secret) is None  # a cached "none"

    cdb.accounts.update(account_id=w.account_id, status="active")

    assert cdb.cached.auth(secret=w.secret) is not None
    assert cdb.cached.auth(secret=second) is not None


def test_publishing_and_archiving_a_version_change_the_cached_current_plan(
    cdb: Database,
) -> None:
    w = build_world(cdb)
    assert cdb.cached.plan(code=w.plan.code) == w.plan
    assert cdb.cached.plan(code=w.plan.code) == w.plan  # a hit

    v2 = publish(cdb, w.plan.code, price=3000)
    assert v2.version == 2
    assert cdb.cached.plan(code=w.plan.code) == v2

    cdb.plans.archive(plan_id=v2.id)
    assert cdb.cached.plan(code=w.plan.code) == w.plan

    code = unique("new")
    assert cdb.cached.plan(code=code) is None
    assert cdb.cached.plan(code=code) is None  # a cached "none"
    publish(cdb, code)
    current = cdb.cached.plan(code=code)  # the cached "none" was cleared
    assert current is not None
    assert current.code == code


def test_archiving_a_plan_shows_in_the_cached_subscription_of_its_subscribers(
    cdb: Database,
) -> None:
    w = build_world(cdb)
    cached = cdb.cached.subscription(account_id=w.account_id)
    assert cached is not None
    assert cached.plan.status == "published"
    assert cdb.cached.auth(secret=w.secret) is not None

    cdb.plans.archive(plan_id=w.plan.id)

    archived = cdb.plans.require(plan_id=w.plan.id)
    assert archived.status == "archived"
    bundle = cdb.cached.auth(secret=w.secret)
    assert bundle is not None
    assert bundle.current is not None
    assert bundle.current.plan == archived
    cached = cdb.cached.subscription(account_id=w.account_id)
    assert cached is not None
    assert cached.plan == archived


# -- 4. no stale write-back ---------------------------------------------------------------


def test_a_value_built_before_an_invalidation_is_refused_and_rebuilt_next_time(
    cdb: Database, raw: redis.Redis
) -> None:
    tag = "race:1"
    calls: list[str] = []

    def build_old() -> Thing:
        calls.append("old")
        cdb.cache.invalidate(tag)  # a writer commits while the reader builds
        return Thing(n=1)

    def build_new() -> Thing:
        calls.append("new")
        return Thing(n=2)

    value = cdb.cache.get_or_build(tag, Thing, build_old, ttl=60, negative_ttl=10)

    assert value == Thing(n=1)  # the reader still answers with what it read
    assert raw.get(cdb.cache.key(tag, "value")) is None
    assert cdb.cache.stats.stale_refused == 1
    assert cdb.cache.get_or_build(tag, Thing, build_new, ttl=60, negative_ttl=10) == Thing(n=2)
    assert cdb.cache.get_or_build(tag, Thing, build_new, ttl=60, negative_ttl=10) == Thing(n=2)
    assert calls == ["old", "new"]
    assert cdb.cache.stats.stale_refused == 1


def test_a_reader_that_read_the_old_subscription_before_an_upgrade_does_not_cache_it(
    cdb: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(cdb)
    bigger = publish(cdb, unique("max"), price=9900)
    original = cdb.subscriptions.current
    read_old, go_on = threading.Event(), threading.Event()
    results: list[Any] = []

    def current(*, account_id: int) -> Subscription | None:
        value = original(account_id=account_id)
        if threading.current_thread().name == "reader":
            read_old.set()
            go_on.wait(5)
        return value

    monkeypatch.setattr(cdb.subscriptions, "current", current)
    reader = threading.Thread(
        target=lambda: results.append(cdb.cached.subscription(account_id=w.account_id)),
        name="reader",
    )
    reader.start()
    try:
        assert read_old.wait(5)
        cdb.subscriptions.upgrade_now(
            account_id=w.account_id, subscription_id=w.subscription.id, plan_id=bigger.id
        )
    finally:
        go_on.set()
        reader.join(5)

    assert results[0].plan.id == w.plan.id  # it answered with what it read
    assert cdb.cache.stats.stale_refused == 1
    fresh = cdb.cached.subscription(account_id=w.account_id)
    assert fresh is not None
    assert fresh.plan.id == bigger.id


# -- 5. negative caching ------------------------------------------------------------------


def test_an_unknown_key_is_cached_as_none_and_asked_again_runs_no_sql(
    cdb: Database, raw: redis.Redis
) -> None:
    secret = generate_secret("live")
    assert cdb.cached.auth(secret=secret) is None
    before, sql_before = counters(cdb), sql_requests(cdb)

    assert cdb.cached.auth(secret=secret) is None

    assert delta(cdb, before)["negative_hits"] == 1
    assert delta(cdb, before)["rebuilds"] == 0
    assert sql_requests(cdb) == sql_before
    assert payload(raw.get(auth_key(cdb, secret))) == NEGATIVE
    ttl = raw.pttl(auth_key(cdb, secret))
    assert 0.9 * NEGATIVE_TTL_MS - 50 <= ttl <= 1.1 * NEGATIVE_TTL_MS


def test_a_malformed_key_is_refused_without_redis_or_sql(
    redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    # Never opened, on a database that does not exist: any SQL would raise.
    db = Database(_settings(pg_url("no_such_database"), redis_url))
    db.cache.namespace = namespace
    secret = generate_secret("live")
    typo = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    try:
        assert db.cached.auth(secret=typo) is None
        assert db.cached.auth(secret=secret[:-1]) is None
        assert db.cached.auth(secret="") is None
    finally:
        db.cache.close()

    assert {k: v for k, v in counters(db).items() if v} == {}  # not even a Redis lookup
    assert list(raw.scan_iter(match=f"{namespace}:*")) == []


def test_issuing_a_key_clears_a_cached_none_for_its_secret(
    cdb: Database, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(cdb)
    secret = generate_secret("live")
    assert cdb.cached.auth(secret=secret) is None  # somebody tried it: cached as "none"
    assert payload(raw.get(auth_key(cdb, secret))) == NEGATIVE
    monkeypatch.setattr(api_keys_module, "generate_secret", lambda environment: secret)

    issued = cdb.api_keys.issue(account_id=w.account_id, name="new", environment="live", scopes=[])

    assert issued.secret.get_secret_value() == secret
    bundle = cdb.cached.auth(secret=secret)
    assert bundle is not None
    assert bundle.context.key_id == issued.key.id


def test_rotating_to_a_secret_cached_as_none_authenticates_at_once(
    cdb: Database, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(cdb)
    secret = generate_secret("live")
    assert cdb.cached.auth(secret=secret) is None
    monkeypatch.setattr(api_keys_module, "generate_secret", lambda environment: secret)

    with cdb.unit_of_work() as uow:
        rotated = uow.api_keys.rotate(
            account_id=w.account_id, key_id=w.key_id, overlap=timedelta(minutes=5)
        )
        assert payload(raw.get(auth_key(cdb, secret))) == NEGATIVE  # cleared only at commit

    bundle = cdb.cached.auth(secret=secret)
    assert bundle is not None
    assert bundle.context.key_id == rotated.key.id


# -- 6. stampede --------------------------------------------------------------------------


def test_fifty_concurrent_misses_rebuild_once_and_all_get_the_same_value(
    cdb: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = build_world(cdb)
    bigger = publish(cdb, unique("max"), price=9900)
    original = cdb.subscriptions.current
    builds: list[int] = []

    def slow_current(*, account_id: int) -> Subscription | None:
        builds.append(account_id)
        time.sleep(0.2)
        return original(account_id=account_id)

    monkeypatch.setattr(cdb.subscriptions, "current", slow_current)
    # Waiters give up after wait_ms and build for themselves (test_a_waiter_whose_...); here
    # they must outlast the 0.2 s build even on a loaded 2-core machine, where 50
    # threads make it take longer than the default 0.5 s.
    monkeypatch.setattr(cdb.cache, "wait_ms", 3000)

    def storm() -> list[Any]:
        barrier = threading.Barrier(50)
        results: list[Any] = []

        def call() -> None:
            barrier.wait(5)
            try:
                results.append(cdb.cached.subscription(account_id=w.account_id))
            except Exception as exc:  # collected, reported by the assertion below
                results.append(exc)

        threads = [threading.Thread(target=call) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        return results

    before = counters(cdb)
    cold = storm()
    assert len(cold) == 50
    assert all(r is not None and not isinstance(r, Exception) for r in cold), cold
    assert cold[0].plan.id == w.plan.id
    assert all(r == cold[0] for r in cold)
    assert delta(cdb, before)["rebuilds"] == 1
    assert len(builds) == 1
    assert delta(cdb, before)["waits"] + delta(cdb, before)["hits"] == 49

    cdb.subscriptions.upgrade_now(  # invalidates: the next storm meets a just-emptied key
        account_id=w.account_id, subscription_id=w.subscription.id, plan_id=bigger.id
    )
    before, builds[:] = counters(cdb), []
    invalidated = storm()
    assert all(r is not None and not isinstance(r, Exception) for r in invalidated), invalidated
    assert invalidated[0].plan.id == bigger.id
    assert all(r == invalidated[0] for r in invalidated)
    assert delta(cdb, before)["rebuilds"] == 1
    assert len(builds) == 1


def test_a_caller_that_wins_the_lock_after_another_stored_the_value_takes_it_and_builds_nothing(
    cache: Cache, redis_url: str, namespace: str
) -> None:
    """The race behind a double rebuild: our read missed, another caller then built,
    stored the value and released the lock, and only then did we claim the lock."""
    other = Cache(redis_url, namespace=namespace, keys=KEYS)
    claim = cache._claim
    built: list[str] = []

    def build(who: str, n: int) -> Callable[[], Thing]:
        return lambda: built.append(who) or Thing(n=n)  # type: ignore[func-returns-value]

    def claim_after_the_other_stored(**kwargs: Any) -> Any:
        assert other.get_or_build("race", Thing, build("other", 1), ttl=60, negative_ttl=0)
        return claim(**kwargs)

    cache._claim = claim_after_the_other_stored
    try:
        value = cache.get_or_build("race", Thing, build("us", 2), ttl=60, negative_ttl=0)
    finally:
        cache._claim = claim
        other.close()
    assert value == Thing(n=1)  # the other caller's value
    assert built == ["other"]
    assert (cache.stats.misses, cache.stats.hits, cache.stats.rebuilds) == (1, 1, 0)
    assert cache.get_or_build("race", Thing, build("us", 3), ttl=60, negative_ttl=0) == Thing(n=1)
    assert built == ["other"]  # and the lock was released: a later read is a plain hit


# -- 7. TTLs ------------------------------------------------------------------------------


def test_values_expire_within_ten_percent_of_their_ttl_and_the_ttls_vary(
    cdb: Database, raw: redis.Redis
) -> None:
    w = build_world(cdb)
    cdb.cached.auth(secret=w.secret)
    cdb.cached.subscription(account_id=w.account_id)
    cdb.cached.plan(code=w.plan.code)

    slack = 100  # ms between the SET and the PTTL
    for key, ttl in [
        (auth_key(cdb, w.secret), AUTH_TTL_MS),
        (cdb.cache.key(account_tag(w.account_id), "value"), AUTH_TTL_MS),
        (cdb.cache.key(plan_tag(w.plan.code), "value"), PLAN_TTL_MS),
    ]:
        assert 0.9 * ttl - slack <= raw.pttl(key) <= 1.1 * ttl, key

    for i in range(30):
        cdb.cache.get_or_build(f"jitter:{i}", Thing, lambda: Thing(n=1), ttl=100, negative_ttl=0)
    ttls = [raw.pttl(cdb.cache.key(f"jitter:{i}", "value")) for i in range(30)]
    assert all(90_000 - slack <= t <= 110_000 for t in ttls), ttls
    assert max(ttls) - min(ttls) > 2_000, ttls  # jittered, not one fixed TTL


def test_a_none_is_not_cached_when_the_negative_ttl_is_zero(
    cdb: Database, raw: redis.Redis
) -> None:
    calls: list[int] = []

    def build() -> Thing | None:
        calls.append(1)
        return None

    assert cdb.cache.get_or_build("none:1", Thing, build, ttl=60, negative_ttl=0) is None
    assert cdb.cache.get_or_build("none:1", Thing, build, ttl=60, negative_ttl=0) is None
    assert len(calls) == 2
    assert raw.exists(cdb.cache.key("none:1", "value")) == 0


# -- 8. keys and values -------------------------------------------------------------------


def test_keys_are_namespaced_versioned_and_hash_tagged_and_values_are_signed_compact_json(
    cdb: Database, raw: redis.Redis, namespace: str
) -> None:
    w = build_world(cdb)
    bundle = cdb.cached.auth(secret=w.secret)
    cdb.cached.subscription(account_id=w.account_id)
    cdb.cached.plan(code=w.plan.code)
    assert bundle is not None

    tags = [f"key:{hash_secret(w.secret).hex()}", f"acct:{w.account_id}", f"plan:{w.plan.code}"]
    # Setting up invalidated every tag once (issue, start, publish), so each has a generation.
    expected = {f"{namespace}:v2:{{{tag}}}:{name}" for tag in tags for name in ("value", "gen")}
    assert {k.decode() for k in raw.scan_iter(match=f"{namespace}:*")} == expected
    for tag in tags:
        names = [cdb.cache.key(tag, name).encode() for name in ("value", "gen", "lock")]
        assert {n[n.index(b"{") + 1 : n.index(b"}")] for n in names} == {tag.encode()}
        assert len({key_slot(n) for n in names}) == 1

    stored = raw.get(auth_key(cdb, w.secret))
    assert stored is not None
    kid, expires, mac, body = stored.split(b":", 3)
    assert kid == b"t1"  # the key id that signed it (the first of DATALAYER_CACHE_KEYS)
    assert int(expires) > time.time() * 1000  # the signed expiry
    assert len(mac) == 64  # HMAC-SHA256, hex
    assert body == bundle.model_dump_json().encode()
    assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert AuthBundle.model_validate_json(body) == bundle

    cdb.cache.version = 3  # a new model version never reads the old values
    before = counters(cdb)
    assert cdb.cached.auth(secret=w.secret) == bundle
    assert delta(cdb, before)["misses"] == 1
    assert raw.exists(f"{namespace}:v3:{{{tags[0]}}}:value") == 1


# -- 9. Redis down ------------------------------------------------------------------------


class _Clock:
    """The breaker's clock, moved by the test: no cooldown ends by itself meanwhile."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def test_with_redis_killed_reads_come_from_postgresql_and_recover_after_restart(
    cache_db_url: str, redis_server: RedisServer
) -> None:
    with Database(_settings(cache_db_url, redis_server.url)) as db:
        clock = _Clock()
        db.cache._breaker = Breaker(db.cache.cooldown, clock=clock)
        w = build_world(db)
        second_id, second = issue(db, w.account_id)
        bundle = db.cached.auth(secret=w.secret)
        current = db.cached.subscription(account_id=w.account_id)
        plan = db.cached.plan(code=w.plan.code)
        assert db.cached.auth(secret=second) is not None
        assert bundle is not None
        assert current is not None
        assert plan is not None
        assert db.cached.auth(secret=w.secret) == bundle
        assert db.cache.stats.hits == 1

        redis_server.kill()
        before = counters(db)
        for _ in range(8):
            assert db.cached.auth(secret=w.secret) == bundle
            assert db.cached.subscription(account_id=w.account_id) == current
            assert db.cached.plan(code=w.plan.code) == plan
        db.api_keys.revoke(account_id=w.account_id, key_id=second_id)
        assert db.cached.auth(secret=second) is None
        # Fast is the bench's business; what is tested is that Redis was tried once, and
        # every later read within the cooldown went straight to PostgreSQL.
        down = counters(db)
        assert down["errors"] - before["errors"] == 1
        reads = 3 * 8 + 1
        assert down["bypassed"] - before["bypassed"] == reads - 1  # all but the first
        assert down["hits"] == before["hits"]

        redis_server.start()  # empty, on the same port
        clock.now += db.cache.cooldown  # the cooldown is over: Redis is tried again
        deadline = time.monotonic() + 5
        while db.cache.stats.hits == down["hits"]:
            assert time.monotonic() < deadline, "the cache never came back"
            assert db.cached.auth(secret=w.secret) == bundle
            time.sleep(0.05)
        assert db.cached.subscription(account_id=w.account_id) == current
        assert db.cached.plan(code=w.plan.code) == plan
        assert db.cached.auth(secret=second) is None
        assert db.cached.auth(secret=second) is None
        assert counters(db)["negative_hits"] > down["negative_hits"]  # served by Redis again
        with closing(redis_server.client()) as client:
            assert client.exists(db.cache.key(account_tag(w.account_id), "value")) == 1


def test_a_revoke_while_the_breaker_is_open_is_replayed_before_the_next_read(
    cache_db_url: str, redis_server: RedisServer
) -> None:
    with (
        Database(_settings(cache_db_url, redis_server.url)) as db,
        closing(redis_server.client()) as client,
    ):
        db.cache.cooldown = 0.3
        w = build_world(db)
        assert db.cached.auth(secret=w.secret) is not None
        value_key = auth_key(db, w.secret)
        assert client.exists(value_key) == 1

        redis_server.pause()
        try:
            assert db.cached.plan(code=w.plan.code) == w.plan  # times out: the breaker opens
            assert db.cache.stats.errors == 1
            db.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)  # Redis not tried
        finally:
            redis_server.resume()
        assert client.exists(value_key) == 1  # the revoke has not reached Redis
        time.sleep(0.35)

        assert db.cached.auth(secret=w.secret) is None
        assert payload(client.get(value_key)) == NEGATIVE


def test_a_revoke_deferred_by_the_breaker_reaches_other_processes_once_redis_answers(
    cache_db_url: str, redis_server: RedisServer
) -> None:
    settings = _settings(cache_db_url, redis_server.url)
    with Database(settings) as writer, Database(settings) as reader:
        writer.cache.cooldown = 0.3
        w = build_world(writer)
        other = writer.accounts.create(name="Other")
        assert reader.cached.auth(secret=w.secret) is not None

        redis_server.pause()
        try:
            writer.cached.plan(code=w.plan.code)  # the writer's breaker opens
        finally:
            redis_server.resume()
        writer.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)  # deferred
        time.sleep(0.35)
        writer.accounts.update(account_id=other.id, name="Other 2")  # reaches Redis
        assert writer.cache.stats.errors == 1  # Redis answered that invalidation

        assert reader.cached.auth(secret=w.secret) is None


# -- 10. no Redis -------------------------------------------------------------------------


def test_without_redis_the_cached_reads_go_to_postgresql(cache_db_url: str) -> None:
    with Database(_settings(cache_db_url, None)) as db:
        assert db.cache.enabled is False
        w = build_world(db)
        for _ in range(2):
            bundle = db.cached.auth(secret=w.secret)
            assert bundle is not None
            assert bundle.context.key_id == w.key_id
            assert bundle.current is not None
            assert bundle.current.plan == w.plan
            current = db.cached.subscription(account_id=w.account_id)
            assert current is not None
            assert current.subscription.id == w.subscription.id
            assert db.cached.plan(code=w.plan.code) == w.plan
        assert db.cached.auth(secret=generate_secret("live")) is None

        db.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)

        assert db.cached.auth(secret=w.secret) is None
        assert {k: v for k, v in counters(db).items() if v} == {}


def test_a_waiter_whose_rebuilder_never_finishes_builds_for_itself_after_wait_ms(
    cache: Cache, raw: redis.Redis
) -> None:
    cache.wait_ms = 150
    # Another process holds the rebuild lock and never writes the value.
    raw.set(cache.key("t", "lock"), b"1", px=10_000)
    builds: list[int] = []

    def build() -> Thing:
        builds.append(1)
        return Thing(n=7)

    started = time.monotonic()
    value = cache.get_or_build("t", Thing, build, ttl=60, negative_ttl=0)
    waited = time.monotonic() - started

    assert value == Thing(n=7)
    assert builds == [1]
    assert 0.15 <= waited < 1.0  # it waited wait_ms, then gave up: never a hang
    assert raw.get(cache.key("t", "value")) is None  # and did not cache what it built
    assert cache.stats.as_dict()["waits"] == 1


# -- 11. the journal: invalidations reach every process whatever Redis or the writer do --


WRITER = """
import sys
from datalayer import DataLayerError, Database, Settings

database_url, redis_url, keys, namespace, action, account_id, ident = sys.argv[1:]
settings = Settings(database_url=database_url, redis_url=redis_url, cache_keys=keys)
with Database(settings) as db:
    db.cache.namespace = namespace
    if action == "revoke":
        db.api_keys.revoke(account_id=int(account_id), key_id=int(ident))
    elif action == "suspend":
        db.accounts.update(account_id=int(account_id), status="suspended")
    else:
        db.subscriptions.cancel_now(account_id=int(account_id), subscription_id=int(ident))
    print(db.cache.stats.as_dict()["errors"])
"""


def _closed_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("action", ["revoke", "suspend", "cancel"])
def test_a_change_whose_writer_cannot_reach_redis_and_exits_reaches_readers_within_the_bound(
    cache_db_url: str, redis_server: RedisServer, namespace: str, action: str
) -> None:
    """A key revoked, an account suspended, a subscription ended by a process that cannot
    reach Redis and then exits, while Redis keeps the old bundle: every reader refuses it
    within 2 * journal_every seconds of the commit."""
    with (
        Database(_settings(cache_db_url, redis_server.url)) as reader,
        closing(redis_server.client()) as client,
    ):
        reader.cache.namespace = namespace
        w = build_world(reader)
        assert reader.cached.auth(secret=w.secret) is not None
        before = counters(reader)
        bundle = reader.cached.auth(secret=w.secret)
        assert bundle is not None
        assert bundle.current is not None
        assert delta(reader, before)["hits"] == 1
        ident = {"revoke": w.key_id, "suspend": 0, "cancel": w.subscription.id}[action]

        redis_server.pause()  # the writer's Redis stops answering; its data stays
        try:
            done = subprocess.run(
                [sys.executable, "-c", WRITER, cache_db_url, redis_server.url, CACHE_KEYS,
                 namespace, action, str(w.account_id), str(ident)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert int(done.stdout) >= 1  # its invalidation never reached Redis; it exited
            journal = reader.cache_invalidations.pending()
        finally:
            redis_server.resume()
        tag = key_tag(hash_secret(w.secret))
        assert (w.account_id, tag) in {(p.account_id, p.tag) for p in journal}
        committed = max(p.created_at for p in journal).timestamp()  # the writer's now()
        assert client.exists(auth_key(reader, w.secret)) == 1  # the old bundle is still there

        bound = 2 * reader.cache.journal_every
        calls: list[tuple[float, AuthBundle | None]] = []
        while not calls or calls[-1][0] < committed + bound + 0.2:
            calls.append((time.time(), reader.cached.auth(secret=w.secret)))
            time.sleep(0.01)  # a request every 10 ms, leaving the CPU to the others

        def refused(got: AuthBundle | None) -> bool:
            return got is None if action != "cancel" else got is not None and got.current is None

        late = [(at - committed, got) for at, got in calls if at > committed + bound]
        assert late
        assert [seconds for seconds, got in late if not refused(got)] == []
        assert reader.cache.stats.replayed >= 1
        assert pending(reader, w.account_id) == []  # applied, then forgotten


def pending(db: Repositories, *account_ids: int) -> list[tuple[int, str]]:
    """The journal's pending (account, tag) pairs of these accounts (tests share a database)."""
    journal = db.cache_invalidations.pending()
    return [(p.account_id, p.tag) for p in journal if p.account_id in account_ids]


def test_a_change_and_its_invalidation_commit_together_or_not_at_all(
    cdb: Database, raw: redis.Redis, cache_db_url: str
) -> None:
    w = build_world(cdb)
    tag = key_tag(hash_secret(w.secret))
    assert pending(cdb, w.account_id, 0) == []  # each writer forgot what Redis took
    assert cdb.cached.auth(secret=w.secret) is not None

    with pytest.raises(RuntimeError, match="abort"), cdb.unit_of_work() as uow:
        uow.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)
        assert pending(uow, w.account_id) == [(w.account_id, tag)]
        raise RuntimeError("abort")
    assert pending(cdb, w.account_id) == []
    assert cdb.api_keys.authenticate(secret=w.secret, record_use=False) is not None

    with cdb.unit_of_work() as uow:
        uow.plans.publish(plan_id=uow.plans.create_draft(
            code=w.plan.code, name="V2", billing_interval="month", base_price_minor=1,
            currency="USD",
        ).id)  # fmt: skip
        assert (0, plan_tag(w.plan.code)) in pending(uow, 0)
    assert (0, plan_tag(w.plan.code)) not in pending(cdb, 0)

    partitioned = _settings(cache_db_url, f"redis://127.0.0.1:{_closed_port()}/0")
    with Database(partitioned) as writer:
        writer.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)
        assert writer.cache.stats.errors == 1
    assert pending(cdb, w.account_id) == [(w.account_id, tag)]
    assert raw.exists(auth_key(cdb, w.secret)) == 1  # Redis never heard of the revoke

    cdb.cache.journal_every = 0.01  # the next read is due at once
    assert cdb.cached.auth(secret=w.secret) is None
    assert pending(cdb, w.account_id) == []


def test_after_a_redis_error_a_reader_applies_the_journal_before_it_trusts_redis_again(
    cache_db_url: str, redis_server: RedisServer
) -> None:
    with (
        Database(_settings(cache_db_url, redis_server.url)) as reader,
        Database(_settings(cache_db_url, f"redis://127.0.0.1:{_closed_port()}/0")) as writer,
    ):
        reader.cache.journal_every = 60  # only the error can make it read the journal now
        reader.cache.cooldown = 0.05
        w = build_world(reader)
        assert reader.cached.auth(secret=w.secret) is not None
        assert reader.cached.auth(secret=w.secret) is not None  # a hit
        writer.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)  # journaled only

        redis_server.pause()
        try:
            assert reader.cached.plan(code=w.plan.code) == w.plan  # times out: an error
        finally:
            redis_server.resume()
        assert reader.cache.stats.errors == 1
        deadline = time.monotonic() + 5
        while not reader.cache._breaker.closed():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        hits = reader.cache.stats.hits

        assert reader.cached.auth(secret=w.secret) is None
        assert reader.cache.stats.hits == hits
        assert reader.cache.stats.replayed >= 1
        assert pending(reader, w.account_id) == []


def test_an_invalidation_outside_a_transaction_is_refused(cdb: Database) -> None:
    with pytest.raises(DataLayerError, match="outside a transaction"):
        ApiKeyRepository(cdb._session)._invalidate(1, "key:00")


# -- 12. Redis is outside the trust boundary: signed values -------------------------------


def _forged(db: Database, victim: str, attacker: str, *, signer: SigningKeys | None) -> bytes:
    """The victim's bundle stored for the attacker's secret: unsigned, or signed by ``signer``."""
    bundle = db.cached.auth(secret=victim)
    assert bundle is not None
    if signer is None:
        return bundle.model_dump_json().encode()  # what Redis held before values were signed
    gen = db.cache._client.get(auth_key(db, attacker, "gen")) if db.cache._client else None
    return Codec(AuthBundle, signer).dump(
        bundle,
        key=auth_key(db, attacker),
        generation=gen.decode() if gen else "",
        expires_ms=int(time.time() * 1000) + 60_000,
    )


@pytest.mark.parametrize("signer", ["unsigned", "another key", "same key id, another secret"])
def test_an_auth_bundle_planted_in_redis_for_a_secret_of_the_attackers_choice_is_refused(
    cdb: Database, raw: redis.Redis, signer: str
) -> None:
    w = build_world(cdb)
    attacker = generate_secret("live")  # well-formed, unknown to PostgreSQL
    keys = {
        "unsigned": None,
        "another key": SigningKeys.parse("evil:" + "66" * 32),
        "same key id, another secret": SigningKeys.parse("t1:" + "66" * 32),
    }[signer]
    raw.set(auth_key(cdb, attacker), _forged(cdb, w.secret, attacker, signer=keys), px=60_000)
    before = counters(cdb)

    assert cdb.cached.auth(secret=attacker) is None

    changed = delta(cdb, before)
    assert (changed["rejected"], changed["misses"], changed["hits"]) == (1, 1, 0)
    assert changed["rebuilds"] == 1  # rebuilt from PostgreSQL...
    stored = raw.get(auth_key(cdb, attacker))
    assert stored is not None
    assert stored.startswith(b"t1:")  # ...and overwritten with our own signed "none"
    assert payload(stored) == NEGATIVE
    assert cdb.cached.auth(secret=attacker) is None
    assert delta(cdb, before)["negative_hits"] == 1


def test_a_genuine_value_copied_under_another_key_or_replayed_after_a_revoke_is_refused(
    cdb: Database, raw: redis.Redis
) -> None:
    w = build_world(cdb)
    assert cdb.cached.auth(secret=w.secret) is not None
    genuine = raw.get(auth_key(cdb, w.secret))
    assert genuine is not None
    attacker = generate_secret("live")
    raw.set(auth_key(cdb, attacker), genuine, px=60_000)  # moved to another tag

    assert cdb.cached.auth(secret=attacker) is None
    assert counters(cdb)["rejected"] == 1

    cdb.api_keys.revoke(account_id=w.account_id, key_id=w.key_id)
    raw.set(auth_key(cdb, w.secret), genuine, px=60_000)  # replayed under a new generation

    assert cdb.cached.auth(secret=w.secret) is None
    assert counters(cdb)["rejected"] == 2


def test_rotating_the_signing_keys_keeps_the_values_of_keys_still_listed_and_rebuilds_others(
    cache_db_url: str, redis_url: str, namespace: str, raw: redis.Redis
) -> None:
    def database(keys: str) -> Database:
        db = Database(_settings(cache_db_url, redis_url, keys=keys))
        db.cache.namespace = namespace
        return db.open()

    first, second = "t1:" + "11" * 32, "t2:" + "22" * 32
    with database(first) as old, database(f"{second},{first}") as rotated:
        w = build_world(old)
        bundle = old.cached.auth(secret=w.secret)
        assert bundle is not None
        assert rotated.cached.auth(secret=w.secret) == bundle  # t1 still verifies: a hit
        assert counters(rotated)["hits"] == 1
        stored = raw.get(auth_key(old, w.secret))
        assert stored is not None
        assert stored.startswith(b"t1:")

        raw.delete(auth_key(old, w.secret))
        assert rotated.cached.auth(secret=w.secret) == bundle  # rebuilt, signed with t2
        stored = raw.get(auth_key(old, w.secret))
        assert stored is not None
        assert stored.startswith(b"t2:")
        assert old.cached.auth(secret=w.secret) == bundle  # t2 unknown there: rebuilt
        assert counters(old)["rejected"] == 1


# -- 13. generations expire, and an expired one resurrects nothing ------------------------


def test_every_generation_key_expires_and_outlives_the_values_under_it(
    cdb: Database, raw: redis.Redis, namespace: str
) -> None:
    w = build_world(cdb)
    _, second = issue(cdb, w.account_id)
    for secret in (w.secret, second):
        assert cdb.cached.auth(secret=secret) is not None
    cdb.cached.subscription(account_id=w.account_id)
    cdb.cached.plan(code=w.plan.code)
    cdb.accounts.update(account_id=w.account_id, name="Renamed")  # bumps every key's tag
    for secret in (w.secret, second):
        assert cdb.cached.auth(secret=secret) is not None
    cdb.cached.subscription(account_id=w.account_id)
    unknown = generate_secret("live")
    assert cdb.cached.auth(secret=unknown) is None

    everything = list(raw.scan_iter(match=f"{namespace}:*"))
    assert all(raw.pttl(k) > 0 for k in everything)  # nothing in Redis lives for ever
    gens = [k for k in everything if k.endswith(b":gen")]
    assert len(gens) == 5
    for gen in gens:
        value_ttl = raw.pttl(gen.replace(b":gen", b":value"))
        assert value_ttl > 0, gen
        assert raw.pttl(gen) > value_ttl, gen  # a value never outlives its generation
    bumped = [g for g in gens if g != auth_key(cdb, unknown, "gen").encode()]
    assert all(1.1 * MAX_TTL * 1000 < raw.pttl(g) <= GENERATION_TTL_MS for g in bumped)
    # A generation never bumped (an unknown key's) lives only a little longer than its
    # "none": a flood of unknown keys leaves nothing lasting behind.
    assert raw.pttl(auth_key(cdb, unknown, "gen")) <= 1.1 * NEGATIVE_TTL_MS + GENERATION_MARGIN_MS


def _paused_rebuild(cache: Cache, tag: str, interleave: Callable[[], None]) -> Thing | None:
    """get_or_build whose build runs ``interleave`` after the generation was read."""
    results: list[Thing | None] = []
    built = threading.Event()

    def build() -> Thing:
        interleave()
        built.set()
        return Thing(n=1)  # what the database said before the writer's change

    reader = threading.Thread(
        target=lambda: results.append(
            cache.get_or_build(tag, Thing, build, ttl=60, negative_ttl=10)
        )
    )
    reader.start()
    reader.join(10)
    assert built.is_set()
    return results[0]


def test_a_slow_reader_cannot_store_a_stale_value_once_the_bumped_generation_expired(
    cache: Cache, raw: redis.Redis
) -> None:
    tag = "gen:expired"
    gen_key = cache.key(tag, "gen")

    def writer_commits_and_generation_expires() -> None:
        cache.invalidate(tag)  # the writer's bump, after the reader read the generation
        assert raw.exists(gen_key) == 1
        raw.pexpire(gen_key, 1)  # ...and the generation expires before the write-back
        deadline = time.monotonic() + 5
        while raw.exists(gen_key):
            assert time.monotonic() < deadline
            time.sleep(0.001)

    assert _paused_rebuild(cache, tag, writer_commits_and_generation_expires) == Thing(n=1)

    assert raw.get(cache.key(tag, "value")) is None  # the stale value was refused
    assert cache.stats.stale_refused == 1
    fresh = cache.get_or_build(tag, Thing, lambda: Thing(n=2), ttl=60, negative_ttl=10)
    assert fresh == Thing(n=2)


def test_a_write_back_later_than_the_window_after_its_generation_read_is_refused(
    cache: Cache, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "WRITE_BACK_WINDOW_MS", 100)

    def slow_build() -> None:
        seconds, micros = raw.time()
        start = seconds * 1000 + micros // 1000
        deadline = time.monotonic() + 5
        while True:  # until Redis's own clock says the window has passed
            seconds, micros = raw.time()
            if seconds * 1000 + micros // 1000 - start > 150:
                return
            assert time.monotonic() < deadline
            time.sleep(0.01)

    assert _paused_rebuild(cache, "gen:late", slow_build) == Thing(n=1)

    assert raw.get(cache.key("gen:late", "value")) is None
    assert cache.stats.stale_refused == 1


def test_applied_invalidations_of_several_accounts_are_forgotten_account_by_account(
    db: Database,
) -> None:
    # One DELETE per account (each routes to one shard on Citus), in one transaction.
    with db.unit_of_work() as uow:
        uow.cache_invalidations._journal([(1, "a"), (2, "b"), (2, "c"), (0, "plan")])
    pending = db.cache_invalidations.pending()
    assert [(e.account_id, e.tag) for e in pending] == [(0, "plan"), (1, "a"), (2, "b"), (2, "c")]
    assert db.cache_invalidations._forget(pending[:3]) == 3
    assert db.cache_invalidations.pending() == pending[3:]
    assert db.cache_invalidations._forget(pending) == 1  # those already gone are skipped
    assert db.cache_invalidations.pending() == []
