"""What the cache decides without Redis: key names and tags, the codec, the set script, the breaker.

``_cache.Cache`` does the Redis calls; everything here is pure (or, for the
breaker and the counters, in-process state), so it is unit-tested without a
server and shared as-is by any other cache front end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel

__all__ = [
    "NEGATIVE",
    "SET_IF_GENERATION",
    "Breaker",
    "CacheStats",
    "Codec",
    "account_tag",
    "cache_key",
    "key_tag",
    "key_use_tag",
    "plan_tag",
]

M = TypeVar("M", bound=BaseModel)

# -- names ------------------------------------------------------------------------------------


def cache_key(namespace: str, version: int, tag: str, name: str) -> str:
    """``<namespace>:v<version>:{<tag>}:<name>``.

    The ``{tag}`` is a Redis Cluster hash tag, so a value, its generation
    counter and its rebuild lock always live in one slot; ``version`` is bumped
    when a cached model's shape changes.
    """
    return f"{namespace}:v{version}:{{{tag}}}:{name}"


def key_tag(secret_hash: bytes) -> str:
    """Tag of an API key's auth bundle: the SHA-256 of its secret, in hex."""
    return f"key:{secret_hash.hex()}"


def account_tag(account_id: int) -> str:
    """Tag of an account's current subscription and plan."""
    return f"acct:{account_id}"


def plan_tag(code: str) -> str:
    """Tag of the current published version of a plan code."""
    return f"plan:{code}"


def key_use_tag(key_id: int) -> str:
    """Tag of the shared once-a-minute marker of a key's ``last_used_at`` write."""
    return f"keyuse:{key_id}"


# -- values -----------------------------------------------------------------------------------

NEGATIVE = b"\x00none"  # a cached "no such thing" (negative caching)

# Set the value only if the generation is what the reader saw before it read
# the database (a missing generation counts as "0").
SET_IF_GENERATION = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class Codec(Generic[M]):
    """A model as compact JSON; ``None`` as its own marker."""

    def __init__(self, model: type[M]):
        self.model = model

    def dump(self, value: M | None) -> bytes:
        return NEGATIVE if value is None else value.model_dump_json().encode()

    def load(self, raw: bytes | str) -> M | None:
        return None if raw == NEGATIVE else self.model.model_validate_json(raw)


# -- state ------------------------------------------------------------------------------------


@dataclass
class CacheStats:
    """Counters since the cache was created (all processes keep their own)."""

    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    rebuilds: int = 0
    waits: int = 0
    stale_refused: int = 0
    errors: int = 0
    bypassed: int = 0
    invalidations: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        """The counters by name, and the hit ratio in percent."""
        with self._lock:
            values = {
                k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, int)
            }
        lookups = values["hits"] + values["negative_hits"] + values["misses"]
        values["hit_ratio_pct"] = (
            round(100 * (values["hits"] + values["negative_hits"]) / lookups) if lookups else 0
        )
        return values


class Breaker:
    """After a Redis error, skip Redis for ``cooldown`` seconds; keep failed invalidations.

    ``trip`` opens the breaker; ``closed`` says whether Redis may be tried now.
    Invalidations that could not be sent are ``defer``red and handed back by
    ``pending`` until ``replayed`` removes them.
    """

    def __init__(self, cooldown: float, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown
        self._clock = clock
        self._down_until = 0.0
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def closed(self) -> bool:
        """Whether Redis may be tried now (no error in the last ``cooldown`` seconds)."""
        return self._clock() >= self._down_until

    def trip(self) -> bool:
        """Open the breaker for ``cooldown`` seconds; True if it was closed (a new outage)."""
        now = self._clock()
        was_closed = now >= self._down_until
        self._down_until = now + self.cooldown
        return was_closed

    def defer(self, tags: Iterable[str]) -> None:
        with self._lock:
            self._pending.update(tags)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._pending)

    def replayed(self, tags: Iterable[str]) -> None:
        with self._lock:
            self._pending.difference_update(tags)
