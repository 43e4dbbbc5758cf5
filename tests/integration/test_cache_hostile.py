"""``Cache``'s public methods, driven with hostile values against a real Redis.

For every public method and property setter of ``Cache`` (found by
introspection, so a new one is covered the day it is added), each parameter in
turn gets each hostile value while the others stay good. What is accepted: the
call works, or it raises a ``DataLayerError`` naming the parameter. Nothing
else, and afterwards Redis still answers, the breaker is still closed and no
Redis error was counted: bad input is refused before any I/O, so it can never
switch the cache off for everyone else.
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from conftest import REDIS_URL
from pydantic import BaseModel

from datalayer import Cache, DataLayerError, InvalidInput
from datalayer._cachecore import SigningKeys
from datalayer.models.cached import PendingInvalidation

REDIS = f"{REDIS_URL}/0"
KEYS = SigningKeys.parse("hostile:" + "ab" * 32)

HOSTILE: list[Any] = [
    None, 0, -1, 2**63, 10**100, True, 1.5, -0.0, math.nan, math.inf, -math.inf, "", " ",
    "x" * 5_000, "\x00", "\ud800", "'; FLUSHALL", "redis://:pa#ss@h/0", "http://x",
    "redis://127.0.0.1:99999", b"bytes", [], [None], [1, "x"], {}, (1, 2), object(),
    Decimal("NaN"), datetime(2026, 1, 1, tzinfo=UTC), uuid.uuid4(), Exception("boom"), dict, len,
]  # fmt: skip


CALLBACKS = {"build", "after_hit", "read", "forget"}


class Thing(BaseModel):
    n: int


def good_values(namespace: str) -> dict[str, Any]:
    return {
        "url": REDIS,
        "keys": KEYS,
        "namespace": namespace,
        "version": 1,
        "socket_timeout": 0.5,
        "cooldown": 1.0,
        "lock_ms": 200,
        "wait_ms": 50,
        "journal_every": 1.0,
        "tag": "acct:1",
        "name": "marker",
        "seconds": 0.5,
        "tags": "acct:1",
        "model": Thing,
        "build": lambda: Thing(n=1),
        "ttl": 5.0,
        "negative_ttl": 0.0,
        "after_hit": None,
        "entries": [
            PendingInvalidation(id=1, account_id=1, tag="acct:1", created_at=datetime.now(UTC))
        ],
        "read": lambda limit: [],
        "forget": lambda entries: None,
    }


def entry_points() -> list[tuple[str, Callable[..., Any]]]:
    """(name, function) for ``__init__``, every public method and every property setter."""
    found: list[tuple[str, Callable[..., Any]]] = [("__init__", Cache.__init__)]
    for name, member in vars(Cache).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            if member.fset is not None:
                found.append((name, member.fset))
        elif inspect.isfunction(member) and name != "close":
            found.append((name, member))
    return found


ENTRY_POINTS = entry_points()


@pytest.fixture
def namespace() -> str:
    return f"hostile-{uuid.uuid4().hex[:8]}"


def call(cache: Cache, name: str, args: dict[str, Any]) -> Any:
    if name == "__init__":
        url = args.pop("url")
        return Cache(url, **args)
    member = vars(Cache)[name]
    if isinstance(member, property):
        (value,) = args.values()
        return setattr(cache, name, value)
    if name == "invalidate":
        return cache.invalidate(args["tags"])
    return getattr(cache, name)(**args)


def test_the_sweep_covers_every_public_method_and_setter() -> None:
    names = {name for name, _ in ENTRY_POINTS}
    assert {"__init__", "get_or_build", "remember", "invalidate", "apply", "key"} <= names
    assert {"cooldown", "journal_every", "attach_journal"} <= names
    good = good_values("x")
    for name, fn in ENTRY_POINTS:
        params = [p for p in inspect.signature(fn).parameters if p != "self"]
        if isinstance(vars(Cache).get(name), property):
            continue
        missing = [p for p in params if p not in good]
        assert not missing, f"no good value for {name}({', '.join(missing)})"


@pytest.mark.parametrize("name", [name for name, _ in ENTRY_POINTS])
def test_hostile_arguments_are_refused_before_any_redis_call(name: str, namespace: str) -> None:
    good = good_values(namespace)
    cache = Cache(REDIS, keys=KEYS, namespace=namespace)
    fn = dict(ENTRY_POINTS)[name]
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    if isinstance(vars(Cache).get(name), property):
        params = ["seconds"]
    refused = 0
    try:
        for param in params:
            for value in HOSTILE:
                if param in CALLBACKS and value is len:
                    continue  # a callback's own exception is the caller's and propagates as is
                args = {p: good[p] for p in params}
                args[param] = value
                field = ""
                try:
                    result = call(cache, name, args)
                except InvalidInput as exc:
                    field = str(exc.field)
                except DataLayerError:
                    field = param
                else:
                    if isinstance(result, Cache):
                        result.close()
                if field:
                    refused += 1
                    # a URL without keys names the keys it lacks
                    assert field in {param, "DATALAYER_CACHE_KEYS"}, f"{name}({param}={value!r})"
                assert cache.stats.errors == 0, f"{name}({param}={value!r}) reached Redis"
                assert cache.ping()
        assert refused > 0 or not params  # every entry point with parameters refuses some
    finally:
        cache.close()


def test_a_refused_redis_url_never_shows_its_password() -> None:
    for url in ("redis://:s3cr#et@h:6379/0", "redis://u:s3/cret@h/0", "redis://:s3?cret@h/0"):
        with pytest.raises(InvalidInput) as caught:
            Cache(url, keys=KEYS)
        assert caught.value.field == "url"
        assert "s3" not in str(caught.value)
        assert "cret" not in str(caught.value)


def test_the_cache_still_works_after_the_sweep(namespace: str) -> None:
    cache = Cache(REDIS, keys=KEYS, namespace=namespace)
    try:
        built = cache.get_or_build("acct:7", Thing, lambda: Thing(n=7), ttl=5, negative_ttl=0)
        again = cache.get_or_build("acct:7", Thing, lambda: Thing(n=8), ttl=5, negative_ttl=0)
        assert built == again == Thing(n=7)
        assert cache.stats.hits == 1
        assert cache.stats.errors == 0
    finally:
        cache.close()
