"""The cache without a Redis server: names, signed values, the write-back rule, trust, counters."""

from __future__ import annotations

import socket
import time
from contextlib import closing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from datalayer import InvalidInput
from datalayer._apikey import hash_secret
from datalayer._cache import Cache
from datalayer._cachecore import (
    CLOCK_SKEW_MS,
    GENERATION_MARGIN_MS,
    GENERATION_TTL_MS,
    GLOBAL_ACCOUNT,
    MAX_TTL,
    WRITE_BACK_WINDOW_MS,
    Breaker,
    CacheStats,
    Codec,
    Freshness,
    Rejected,
    SigningKeys,
    account_tag,
    cache_key,
    key_tag,
    key_use_tag,
    new_generation,
    plan_tag,
    wall_ms,
    write_back_allowed,
)

SECRET_1 = "11" * 32
SECRET_2 = "22" * 32
KEYS = SigningKeys.parse(f"k1:{SECRET_1}")
KEY = "dl:v2:{acct:1}:value"
NOW = 1_800_000_000_000  # ms


class Thing(BaseModel):
    n: int
    name: str = "x"


def _closed_port() -> int:
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_keys_read_namespace_version_and_hash_tag() -> None:
    cache = Cache(None)
    assert cache.key("acct:42", "value") == "dl:v2:{acct:42}:value"
    assert Cache(None, namespace="app", version=3).key("plan:pro", "gen") == "app:v3:{plan:pro}:gen"
    cache.namespace = "t1"
    assert cache.key("acct:42", "lock") == "t1:v2:{acct:42}:lock"


def test_tags_are_tenant_scoped_and_a_key_tag_is_the_hex_sha256_of_the_secret() -> None:
    digest = hash_secret("dl_live_x")
    assert key_tag(digest) == f"key:{digest.hex()}"
    assert len(key_tag(digest)) == len("key:") + 64
    assert account_tag(42) == "acct:42"
    assert plan_tag("pro") == "plan:pro"


def _dump(value: Thing | None, keys: SigningKeys = KEYS, **where: object) -> bytes:
    args: dict[str, object] = {"key": KEY, "generation": "g1", "expires_ms": NOW + 60_000}
    return Codec(Thing, keys).dump(value, **{**args, **where})  # type: ignore[arg-type]


def _load(raw: bytes, keys: SigningKeys = KEYS, **where: object) -> Thing | None:
    args: dict[str, object] = {"key": KEY, "generation": "g1", "now_ms": NOW}
    return Codec(Thing, keys).load(raw, **{**args, **where})  # type: ignore[arg-type]


def test_values_are_signed_compact_json_and_none_has_its_own_marker() -> None:
    stored = _dump(Thing(n=1, name="a b"))
    kid, expires, mac, payload = stored.split(b":", 3)
    assert (kid, int(expires), len(mac)) == (b"k1", NOW + 60_000, 64)
    assert payload == b'{"n":1,"name":"a b"}'
    assert _load(stored) == Thing(n=1, name="a b")
    assert _dump(None).split(b":", 3)[3] == b"\x00none"
    assert _load(_dump(None)) is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"n":1,"name":"x"}', "malformed"),  # what Redis held before values were signed
        (b"k1:abc:00:{}", "malformed"),
        (b"", "malformed"),
        (b"\x00none", "malformed"),
        (b"k9:1800000060000:" + b"0" * 64 + b":\x00none", "unknown key id"),
        (b"k1:1800000060000:" + b"0" * 64 + b':{"n":1}', "bad signature"),
    ],
)
def test_an_unsigned_forged_or_malformed_value_is_rejected_never_raised_otherwise(
    raw: bytes, why: str
) -> None:
    with pytest.raises(Rejected, match=why):
        _load(raw)


def test_a_signed_value_is_bound_to_its_redis_key_and_its_generation() -> None:
    stored = _dump(Thing(n=1))
    with pytest.raises(Rejected, match="bad signature"):
        _load(stored, key="dl:v2:{acct:2}:value")  # moved to another tag
    with pytest.raises(Rejected, match="bad signature"):
        _load(stored, generation="g2")  # replayed after an invalidation
    with pytest.raises(Rejected, match="bad signature"):
        _load(stored.replace(b'"n":1', b'"n":2'))  # edited


def test_a_signed_value_is_refused_after_its_signed_expiry_whatever_redis_keeps() -> None:
    stored = _dump(Thing(n=1), expires_ms=NOW)
    assert _load(stored, now_ms=NOW + CLOCK_SKEW_MS) == Thing(n=1)
    with pytest.raises(Rejected, match="expired"):
        _load(stored, now_ms=NOW + CLOCK_SKEW_MS + 1)


def test_a_value_that_is_signed_but_not_the_model_is_rejected() -> None:
    class Other(BaseModel):
        other: str

    stored = Codec(Other, KEYS).dump(Other(other="x"), key=KEY, generation="g1", expires_ms=NOW)
    with pytest.raises(Rejected, match="not a valid value"):
        _load(stored)


def test_after_a_key_rotation_the_first_key_signs_and_the_older_still_verifies() -> None:
    rotated = SigningKeys.parse(f"k2:{SECRET_2}, k1:{SECRET_1}")
    old_value = _dump(Thing(n=1))
    assert _load(old_value, keys=rotated) == Thing(n=1)
    new_value = _dump(Thing(n=2), keys=rotated)
    assert new_value.startswith(b"k2:")
    with pytest.raises(Rejected, match="unknown key id"):
        _load(new_value)  # a process that does not know k2 yet rebuilds
    retired = SigningKeys.parse(f"k2:{SECRET_2}")
    with pytest.raises(Rejected, match="unknown key id"):
        _load(old_value, keys=retired)


def test_a_key_id_reused_with_another_secret_rejects_the_old_values() -> None:
    reused = SigningKeys.parse(f"k1:{SECRET_2}")
    with pytest.raises(Rejected, match="bad signature"):
        _load(_dump(Thing(n=1)), keys=reused)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not kid:hexsecret"),
        ("k1", "not kid:hexsecret"),
        (f"k1:{SECRET_1[:-2]}", "31 bytes; at least 32"),
        (f"k1:{SECRET_1[:-1]}zz", "not hex"),
        (f"bad kid:{SECRET_1}", "must be 1-16 letters"),
        (f"k:1:{SECRET_1}", "not hex"),
        (f"{'k' * 17}:{SECRET_1}", "must be 1-16 letters"),
        (f"k1:{SECRET_1},k1:{SECRET_2}", "given twice"),
    ],
)
def test_malformed_signing_keys_are_refused_without_showing_a_secret(
    text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        SigningKeys.parse(text)
    for secret in (SECRET_1, SECRET_1[:-2], SECRET_2):
        assert secret not in str(info.value)


def test_signing_keys_show_their_ids_and_never_their_secrets() -> None:
    keys = SigningKeys.parse(f" k2:{SECRET_2.upper()} ,k1:{SECRET_1}")
    assert keys.kids == ("k2", "k1")
    assert repr(keys) == "SigningKeys(kids=('k2', 'k1'))"
    assert SECRET_1 not in repr(keys)
    assert SigningKeys.one_off("demo").startswith("demo:")
    assert SigningKeys.parse(SigningKeys.one_off("demo")).kids == ("demo",)


def test_a_redis_url_without_signing_keys_is_refused_before_any_io() -> None:
    with pytest.raises(InvalidInput) as info:
        Cache(f"redis://127.0.0.1:{_closed_port()}/0")
    assert info.value.field == "DATALAYER_CACHE_KEYS"
    assert Cache(None).enabled is False  # no Redis, no keys needed


@pytest.mark.parametrize(
    ("ttl", "negative_ttl", "field"),
    [
        (0, 10, "ttl"),
        (MAX_TTL + 1, 10, "ttl"),
        (60, -1, "negative_ttl"),
        (60, MAX_TTL + 1, "negative_ttl"),
    ],
)
def test_a_ttl_outside_what_generations_outlive_is_refused(
    ttl: float, negative_ttl: float, field: str
) -> None:
    cache = Cache(f"redis://127.0.0.1:{_closed_port()}/0", keys=KEYS)
    with pytest.raises(InvalidInput) as info:
        cache.get_or_build("t", Thing, lambda: Thing(n=1), ttl=ttl, negative_ttl=negative_ttl)
    assert info.value.field == field
    assert cache.stats.errors == 0  # refused before trying Redis


# -- the write-back rule (SET_IF_GENERATION runs it in Redis) ----------------------------


def test_generations_outlive_their_values_and_twice_the_write_back_window() -> None:
    assert GENERATION_TTL_MS > 1.1 * MAX_TTL * 1000  # after a bump, longer than any value
    assert GENERATION_MARGIN_MS >= 2 * WRITE_BACK_WINDOW_MS
    assert len({new_generation() for _ in range(1000)}) == 1000  # tokens never repeat


def _after(seen: str, events: list[str]) -> str:
    """The generation after ``events``: a bump replaces it, an expiry (or eviction) removes
    it, another reader's claim creates one where there is none."""
    current = seen
    for event in events:
        if event == "bump":
            current = new_generation()
        elif event == "expire":
            current = ""
        else:
            current = current or new_generation()
    return current


events = st.lists(st.sampled_from(["bump", "expire", "claim"]), max_size=5)


@given(before=events, after=events, elapsed=st.integers(0, 2 * WRITE_BACK_WINDOW_MS))
def test_a_value_read_before_a_bump_is_never_stored_after_it_whatever_expired_meanwhile(
    before: list[str], after: list[str], elapsed: int
) -> None:
    seen = new_generation()  # what the reader's claim read, or created
    current = _after(seen, [*before, "bump", *after])
    assert not write_back_allowed(seen=seen, current=current, read_ms=NOW, now_ms=NOW + elapsed)


def test_a_prompt_write_back_is_stored_only_while_its_generation_is_there_unchanged() -> None:
    seen = new_generation()
    assert write_back_allowed(seen=seen, current=seen, read_ms=NOW, now_ms=NOW + 50)
    assert not write_back_allowed(seen=seen, current="", read_ms=NOW, now_ms=NOW + 50)
    expired_and_recreated = _after(seen, ["expire", "claim"])
    assert not write_back_allowed(
        seen=seen, current=expired_and_recreated, read_ms=NOW, now_ms=NOW + 50
    )
    late = NOW + WRITE_BACK_WINDOW_MS + 1
    assert not write_back_allowed(seen=seen, current=seen, read_ms=NOW, now_ms=late)
    assert not write_back_allowed(seen="", current="", read_ms=NOW, now_ms=NOW)


# -- trusting Redis: the journal clock ----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_new_process_reads_the_journal_before_it_trusts_redis() -> None:
    fresh = Freshness(1.0, clock=Clock())
    assert fresh.due()
    assert not fresh.trusted()


def test_redis_is_trusted_for_twice_the_interval_from_the_start_of_a_complete_read() -> None:
    clock = Clock()
    fresh = Freshness(1.0, clock=clock)
    started = fresh.begin()
    clock.now += 0.3  # the read took 0.3 s
    fresh.done(started)
    assert fresh.trusted()
    assert not fresh.due()
    clock.now = started + 1.0
    assert fresh.due()  # one caller reads again; the others still trust Redis
    assert fresh.trusted()
    clock.now = started + 2.0
    assert not fresh.trusted()  # the bound: never longer than 2 s since a read began


def test_after_a_redis_error_only_a_read_that_started_later_restores_trust() -> None:
    clock = Clock()
    fresh = Freshness(1.0, clock=clock)
    fresh.done(fresh.begin())
    clock.now += 0.1
    before_error = fresh.begin()
    clock.now += 0.1
    fresh.distrust()
    assert fresh.due()
    assert not fresh.trusted()
    clock.now += 0.1
    fresh.done(before_error)  # it may have missed what the failed invalidation journaled
    assert not fresh.trusted()
    fresh.done(fresh.begin())
    assert fresh.trusted()


def test_a_failed_read_is_retried_after_the_interval_and_does_not_extend_trust() -> None:
    clock = Clock()
    fresh = Freshness(1.0, clock=clock)
    fresh.done(fresh.begin())
    clock.now += 1.5
    fresh.failed()
    assert not fresh.due()
    assert fresh.trusted()
    clock.now += 0.5
    assert not fresh.trusted()
    clock.now += 0.5
    assert fresh.due()


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
    # Whether a call is fast is the bench's business; what is tested is that after the first
    # error no call goes near the network until the cooldown (30 s) is over: each one is
    # counted as bypassed, not as another error.
    cache = Cache(f"redis://127.0.0.1:{_closed_port()}/0", keys=KEYS, cooldown=30)

    assert cache.get_or_build("t", Thing, lambda: Thing(n=1), ttl=60, negative_ttl=10) == Thing(n=1)
    assert cache.stats.errors == 1
    assert cache.get_or_build("t", Thing, lambda: Thing(n=2), ttl=60, negative_ttl=10) == Thing(n=2)
    cache.invalidate("t")  # remembered, never raised
    assert cache.remember("t", "touch", 60) is False

    assert cache.stats.errors == 1  # the breaker kept the later calls off the network
    assert cache.stats.bypassed == 2
    assert cache.stats.invalidations == 1
    cache.close()


# -- exact edges of the pure rules ----------------------------------------------------------


def test_every_tag_names_its_kind_and_id() -> None:
    assert key_use_tag(42) == "keyuse:42"
    assert cache_key("dl", 2, key_use_tag(42), "mark") == "dl:v2:{keyuse:42}:mark"
    assert GLOBAL_ACCOUNT == 0  # account ids start at 1: no account is the global one


def test_a_write_back_exactly_ten_seconds_after_its_read_is_stored_and_not_a_ms_later() -> None:
    seen = new_generation()
    assert write_back_allowed(seen=seen, current=seen, read_ms=NOW, now_ms=NOW + 10_000)
    assert not write_back_allowed(seen=seen, current=seen, read_ms=NOW, now_ms=NOW + 10_001)
    assert write_back_allowed(seen=seen, current=seen, read_ms=NOW, now_ms=NOW)


def test_a_generation_is_16_hex_characters() -> None:
    generation = new_generation()
    assert len(generation) == 16
    int(generation, 16)


def test_a_malformed_entry_is_named_by_its_position() -> None:
    with pytest.raises(ValueError, match="entry 2 is not kid:hexsecret"):
        SigningKeys.parse(f"k1:{SECRET_1},nocolon")
    with pytest.raises(ValueError, match="entry 1 is not kid:hexsecret"):
        SigningKeys.parse("nocolon")


def test_a_long_key_id_is_shown_cut_to_20_characters() -> None:
    kid = "abcdefghijklmnopqrstuvwxyz"
    with pytest.raises(ValueError, match="is not hex") as info:
        SigningKeys.parse(f"{kid}:zz")
    assert str(info.value) == "the secret of key id 'abcdefghijklmnopqrst' is not hex"
    with pytest.raises(ValueError, match="must be 1-16") as info:
        SigningKeys([(kid, b"s" * 32)])
    assert (
        str(info.value) == "key id 'abcdefghijklmnopqrst' must be 1-16 letters, digits, '_' or '-'"
    )


def test_a_secret_of_exactly_32_bytes_is_enough() -> None:
    assert SigningKeys([("k", b"s" * 32)]).kids == ("k",)
    with pytest.raises(ValueError, match="31 bytes"):
        SigningKeys([("k", b"s" * 31)])
    with pytest.raises(ValueError, match="no key given"):
        SigningKeys([])


def test_the_mac_length_prefixes_each_part_so_parts_cannot_be_shifted() -> None:
    assert KEYS.mac("k1", b"ab", b"c") != KEYS.mac("k1", b"a", b"bc")
    assert KEYS.mac("k1", b"ab", b"c") == KEYS.mac("k1", b"ab", b"c")
    with pytest.raises(KeyError):
        KEYS.mac("k9", b"x")


def test_wall_ms_is_this_process_wall_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    now = wall_ms()
    after = time.time_ns() // 1_000_000
    assert before <= now <= after


def test_the_counters_are_the_public_integers_only() -> None:
    stats = CacheStats()
    assert set(stats.as_dict()) == {
        "hits", "negative_hits", "misses", "rebuilds", "waits", "stale_refused", "errors",
        "rejected", "bypassed", "invalidations", "replayed", "hit_ratio_pct",
    }  # fmt: skip
    assert "_lock" not in repr(stats)
    stats.add("hits")
    assert stats.as_dict()["hit_ratio_pct"] == 100


def test_the_breaker_opens_for_exactly_the_cooldown() -> None:
    clock = Clock()
    breaker = Breaker(5.0, clock=clock)
    assert breaker.closed()
    assert breaker.trip() is True  # a new outage
    assert not breaker.closed()
    clock.now += 4.999
    assert breaker.trip() is False  # still the same outage: the cooldown restarts
    assert not breaker.closed()
    clock.now += 5.0
    assert breaker.closed()  # exactly the cooldown after the last trip
    assert breaker.trip() is True


def test_the_breaker_keeps_deferred_invalidations_until_replayed() -> None:
    breaker = Breaker(1.0, clock=Clock())
    assert breaker.has_pending is False
    assert breaker.pending() == []
    breaker.defer(["b", "a"])
    breaker.defer(["a"])
    assert breaker.has_pending is True
    assert breaker.pending() == ["a", "b"]
    breaker.replayed(["a"])
    assert breaker.pending() == ["b"]
    breaker.replayed(["b", "c"])
    assert breaker.has_pending is False


def test_the_trust_bound_is_twice_the_interval_whatever_the_interval() -> None:
    clock = Clock()
    fresh = Freshness(0.5, clock=clock)
    assert fresh.bound == 1.0
    fresh.done(fresh.begin())
    clock.now += 0.999
    assert fresh.trusted()
    clock.now += 0.001
    assert not fresh.trusted()


def test_a_redis_error_at_the_instant_a_read_began_withdraws_trust_from_that_read() -> None:
    clock = Clock()
    fresh = Freshness(1.0, clock=clock)
    started = fresh.begin()
    fresh.distrust()  # same clock reading as the read's start
    fresh.done(started)
    assert not fresh.trusted()
    assert fresh.due()
    later = Freshness(1.0, clock=clock)
    later.done(later.begin())
    later.distrust()  # after a read completed, at the same instant it began
    assert not later.trusted()
    assert later.due()


def test_an_older_read_completing_late_does_not_move_trust_back() -> None:
    clock = Clock()
    fresh = Freshness(1.0, clock=clock)
    older = fresh.begin()
    clock.now += 1.0
    newer = fresh.begin()
    fresh.done(newer)
    fresh.done(older)  # finished after the newer one
    clock.now += 1.5
    assert fresh.trusted()  # 1.5 s since the newer read began: within the 2 s bound
