"""The cache without a Redis server: key names, the codec, counters, disabled and unreachable."""

from __future__ import annotations

import socket
import time
from contextlib import closing

from pydantic import BaseModel

from datalayer._apikey import hash_secret
from datalayer._cache import Cache
from datalayer._cachecore import CacheStats, Codec, account_tag, key_tag, plan_tag


class Thing(BaseModel):
    n: int
    name: str = "x"


def _closed_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_keys_read_namespace_version_and_hash_tag() -> None:
    cache = Cache(None)
    assert cache.key("acct:42", "value") == "dl:v1:{acct:42}:value"
    assert Cache(None, namespace="app", version=3).key("plan:pro", "gen") == "app:v3:{plan:pro}:gen"
    cache.namespace = "t1"
    assert cache.key("acct:42", "lock") == "t1:v1:{acct:42}:lock"


def test_tags_are_tenant_scoped_and_a_key_tag_is_the_hex_sha256_of_the_secret() -> None:
    digest = hash_secret("dl_live_x")
    assert key_tag(digest) == f"key:{digest.hex()}"
    assert len(key_tag(digest)) == len("key:") + 64
    assert account_tag(42) == "acct:42"
    assert plan_tag("pro") == "plan:pro"


def test_values_are_compact_json_and_none_has_its_own_marker() -> None:
    codec = Codec(Thing)
    assert codec.dump(Thing(n=1, name="a b")) == b'{"n":1,"name":"a b"}'
    assert codec.load(b'{"n":1,"name":"a b"}') == Thing(n=1, name="a b")
    assert codec.dump(None) == b"\x00none"
    assert codec.load(b"\x00none") is None


def test_the_hit_ratio_counts_negative_hits_as_hits() -> None:
    stats = CacheStats()
    assert stats.as_dict()["hit_ratio_pct"] == 0
    stats.add("hits", 3)
    stats.add("negative_hits")
    stats.add("misses", 4)
    values = stats.as_dict()
    assert (values["hits"], values["negative_hits"], values["misses"]) == (3, 1, 4)
    assert values["hit_ratio_pct"] == 50


def test_a_disabled_cache_builds_every_time_and_counts_nothing() -> None:
    cache = Cache(None)
    calls: list[int] = []

    def build() -> Thing:
        calls.append(1)
        return Thing(n=len(calls))

    assert cache.enabled is False
    assert cache.get_or_build("t", Thing, build, ttl=60, negative_ttl=10) == Thing(n=1)
    assert cache.get_or_build("t", Thing, build, ttl=60, negative_ttl=10) == Thing(n=2)
    cache.invalidate("t")
    assert cache.remember("t", "touch", 60) is False
    assert {k: v for k, v in cache.stats.as_dict().items() if v} == {}


def test_an_unreachable_redis_falls_back_to_build_and_then_skips_redis_for_the_cooldown() -> None:
    cache = Cache(f"redis://127.0.0.1:{_closed_port()}/0", cooldown=30)
    start = time.perf_counter()

    assert cache.get_or_build("t", Thing, lambda: Thing(n=1), ttl=60, negative_ttl=10) == Thing(n=1)
    assert cache.stats.errors == 1
    assert cache.get_or_build("t", Thing, lambda: Thing(n=2), ttl=60, negative_ttl=10) == Thing(n=2)
    cache.invalidate("t")  # remembered, never raised
    assert cache.remember("t", "touch", 60) is False

    assert time.perf_counter() - start < 0.5
    assert cache.stats.errors == 1  # the breaker kept the later calls off the network
    assert cache.stats.bypassed == 2
    assert cache.stats.invalidations == 1
    cache.close()
