"""What the cache decides without Redis: names, signed values, the scripts' rules, trust, counters.

``_cache.Cache`` does the Redis calls; everything here is pure (or, for the
breaker, the journal clock and the counters, in-process state), so it is
unit-tested without a server and shared as-is by any other cache front end.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

__all__ = [
    "CLAIM",
    "GENERATION_MARGIN_MS",
    "GENERATION_TTL_MS",
    "GLOBAL_ACCOUNT",
    "MAX_TTL",
    "NEGATIVE",
    "SET_IF_GENERATION",
    "WRITE_BACK_WINDOW_MS",
    "Breaker",
    "CacheStats",
    "Codec",
    "Freshness",
    "Rejected",
    "SigningKeys",
    "account_tag",
    "cache_key",
    "key_tag",
    "key_use_tag",
    "new_generation",
    "plan_tag",
    "wall_ms",
    "write_back_allowed",
]

M = TypeVar("M", bound=BaseModel)

# -- names ------------------------------------------------------------------------------------


def cache_key(namespace: str, version: int, tag: str, name: str) -> str:
    """``<namespace>:v<version>:{<tag>}:<name>``.

    The ``{tag}`` is a Redis Cluster hash tag, so a value, its generation
    and its rebuild lock always live in one slot; ``version`` is bumped when a
    cached model's shape or the value format changes.
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


#: The ``account_id`` a journaled invalidation of a global tag (a plan) carries:
#: account ids start at 1, and Citus cannot distribute a NULL.
GLOBAL_ACCOUNT = 0

# -- lifetimes --------------------------------------------------------------------------------

#: The longest a value may be cached, in seconds (before jitter).
MAX_TTL = 3600.0
#: A write-back more than this long after its generation was read (Redis clock) is refused.
WRITE_BACK_WINDOW_MS = 10_000
#: How long a generation lives after a bump: longer than any value (1.1 * MAX_TTL).
GENERATION_TTL_MS = 7_200_000
#: A generation outlives any value signed with it, and any read of it, by at least this
#: (twice the write-back window): so neither a value nor a prompt write-back is lost to
#: its expiry. Generations that were never bumped live only that much longer than their
#: values, so a flood of unknown API keys leaves no lasting keys behind. Correctness never
#: rests on these lifetimes: an expired or evicted generation refuses every write-back.
GENERATION_MARGIN_MS = 2 * WRITE_BACK_WINDOW_MS
#: Clocks of the processes may differ by this much when a signed expiry is checked.
CLOCK_SKEW_MS = 2_000


def new_generation() -> str:
    """A generation token that never repeats (so an expired one cannot come back)."""
    return secrets.token_hex(8)


def write_back_allowed(*, seen: str, current: str, read_ms: int, now_ms: int) -> bool:
    """Whether a rebuilt value may be stored: the rule ``SET_IF_GENERATION`` runs in Redis.

    ``seen`` is the generation the reader read (creating it if there was none)
    before reading the database, ``current`` the generation now (``""``: gone),
    ``read_ms`` and ``now_ms`` Redis's clock then and now. A generation is a
    random token that only a bump replaces and that never comes back, so a
    bump after the read, whatever expired or was evicted since, leaves
    ``current`` different from ``seen``; and a generation that is gone proves
    nothing, so it refuses too. A write-back more than ``WRITE_BACK_WINDOW_MS``
    after the read is refused outright, so no rebuild, however stalled, stores
    a value older than that.
    """
    return seen != "" and current == seen and now_ms - read_ms <= WRITE_BACK_WINDOW_MS


# Both scripts read Redis's own clock, so no process clock is compared with another.
_NOW_MS = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: lock, generation. ARGV: lock ms, a fresh generation token, GENERATION_MARGIN_MS.
# Take the rebuild lock if it is free and, in the same instant, read the generation
# (creating it if there is none, so a write-back never rests on an absent one, and keeping
# it at least the margin longer) and the clock: {won (0/1), generation, Redis time in ms}.
CLAIM = (
    _NOW_MS
    + """
local won = redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) and 1 or 0
local gen = redis.call('GET', KEYS[2])
if not gen then
  gen = ARGV[2]
  redis.call('SET', KEYS[2], gen, 'PX', ARGV[3])
elseif redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return {won, gen, now}
"""
)

# KEYS: value, generation. ARGV: generation seen, value, ttl ms, read time ms, window ms,
# GENERATION_MARGIN_MS. write_back_allowed, then store, and keep the generation alive at
# least the margin longer than the value. Returns 1 stored, 0 the generation changed or
# is gone, -1 too late.
SET_IF_GENERATION = (
    _NOW_MS
    + """
if now - tonumber(ARGV[4]) > tonumber(ARGV[5]) then return -1 end
local gen = redis.call('GET', KEYS[2])
if not gen or gen == '' or gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local life = tonumber(ARGV[3]) + tonumber(ARGV[6])
if redis.call('PTTL', KEYS[2]) < life then redis.call('PEXPIRE', KEYS[2], life) end
return 1
"""
)

# -- signed values ----------------------------------------------------------------------------

NEGATIVE = b"\x00none"  # the payload of a cached "no such thing" (negative caching)

_KID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_MIN_SECRET = 32


class Rejected(Exception):
    """A cached value that must not be used: malformed, unknown key id, bad signature, expired."""


class SigningKeys:
    """HMAC-SHA256 keys for cached values, by key id; the first signs, every one verifies.

    Parsed from ``"kid2:hex,kid1:hex"`` (``DATALAYER_CACHE_KEYS``): key ids of
    1-16 letters, digits, ``_`` or ``-``; secrets in hex, at least 32 bytes
    (``openssl rand -hex 32``). The secrets never appear in ``repr`` or errors.
    """

    __slots__ = ("_macs", "kids")

    def __init__(self, keys: Iterable[tuple[str, bytes]]):
        self._macs: dict[str, hmac.HMAC] = {}
        kids: list[str] = []
        for kid, secret in keys:
            if not _KID.match(kid):
                raise ValueError(f"key id {kid[:20]!r} must be 1-16 letters, digits, '_' or '-'")
            if kid in self._macs:
                raise ValueError(f"key id {kid} is given twice")
            if len(secret) < _MIN_SECRET:
                raise ValueError(
                    f"the secret of key id {kid} has {len(secret)} bytes; "
                    f"at least {_MIN_SECRET} are needed"
                )
            self._macs[kid] = hmac.new(secret, digestmod=hashlib.sha256)
            kids.append(kid)
        if not kids:
            raise ValueError("no key given; expected kid:hexsecret[,kid:hexsecret...]")
        self.kids = tuple(kids)

    @classmethod
    def parse(cls, text: str) -> SigningKeys:
        """Keys from ``"kid:hex[,kid:hex...]"``; ``ValueError`` (never showing a secret)."""
        pairs: list[tuple[str, bytes]] = []
        for entry in text.split(","):
            kid, colon, encoded = entry.strip().partition(":")
            if not colon:
                raise ValueError(f"entry {len(pairs) + 1} is not kid:hexsecret")
            try:
                secret = bytes.fromhex(encoded.strip())
            except ValueError:
                raise ValueError(f"the secret of key id {kid[:20]!r} is not hex") from None
            pairs.append((kid.strip(), secret))
        return cls(pairs)

    def __repr__(self) -> str:
        return f"SigningKeys(kids={self.kids!r})"

    @staticmethod
    def one_off(kid: str) -> str:
        """A fresh random key as ``DATALAYER_CACHE_KEYS`` text, for one process on its own.

        Only for a tool that caches in a namespace of its own and says so (the
        demo, the bench): processes with different keys reject each other's
        values.
        """
        return f"{kid}:{secrets.token_hex(32)}"

    def mac(self, kid: str, *parts: bytes) -> bytes:
        """HMAC-SHA256 with key ``kid`` over the length-prefixed ``parts``; KeyError if unknown."""
        mac = self._macs[kid].copy()
        mac.update(b"".join([len(part).to_bytes(4, "big") + part for part in parts]))
        return mac.digest()


class Codec(Generic[M]):
    """A model (or ``None``) as a signed value: ``<kid>:<expires ms>:<hmac hex>:<payload>``.

    The HMAC covers the key id, the full Redis key name (a value cannot be
    moved to another tag), the generation it was written under (nor outlive
    an invalidation), the expiry (nor be replayed later) and the payload:
    the model's compact JSON, or ``NEGATIVE``.
    """

    def __init__(self, model: type[M], keys: SigningKeys):
        self.model = model
        self.keys = keys

    def dump(self, value: M | None, *, key: str, generation: str, expires_ms: int) -> bytes:
        payload = NEGATIVE if value is None else value.model_dump_json().encode()
        kid = self.keys.kids[0]
        expires = str(expires_ms).encode()
        mac = self.keys.mac(kid, kid.encode(), key.encode(), generation.encode(), expires, payload)
        return b":".join((kid.encode(), expires, mac.hex().encode(), payload))

    def load(
        self, raw: bytes | str, *, key: str, generation: bytes | str | None, now_ms: int
    ) -> M | None:
        """The value, or ``None`` for a cached "none"; raises ``Rejected`` saying why not.

        ``generation`` is the tag's generation now; ``None`` (expired, evicted or
        never written: a planted value) rejects the value.
        """
        if generation is None:
            raise Rejected("its generation is gone")
        if isinstance(generation, bytes):
            generation = generation.decode("ascii", "replace")
        parts = (raw.encode() if isinstance(raw, str) else raw).split(b":", 3)
        if len(parts) != 4 or not parts[1].isdigit():
            raise Rejected("malformed")
        kid_bytes, expires, mac_hex, payload = parts
        kid = kid_bytes.decode("ascii", "replace")
        if kid not in self.keys.kids:
            raise Rejected("unknown key id")
        gen = generation.encode()
        expected = self.keys.mac(kid, kid_bytes, key.encode(), gen, expires, payload)
        try:
            presented = bytes.fromhex(mac_hex.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise Rejected("malformed") from None
        if not hmac.compare_digest(expected, presented):
            raise Rejected("bad signature")
        if int(expires) + CLOCK_SKEW_MS < now_ms:
            raise Rejected("expired")
        if payload == NEGATIVE:
            return None
        try:
            return self.model.model_validate_json(payload)
        except ValidationError:
            raise Rejected("signed but not a valid value") from None


def wall_ms() -> int:
    """This process's wall clock in ms (signed expiries compare wall clocks)."""
    return time.time_ns() // 1_000_000


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
    rejected: int = 0
    bypassed: int = 0
    invalidations: int = 0
    replayed: int = 0
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


class Freshness:
    """When this process must read the journal of pending invalidations before trusting Redis.

    Redis is trusted for ``bound`` (2 x ``every``) seconds from the start of
    the last complete read of the journal, and a read is ``due`` once ``every``
    seconds have passed; so a process in steady use reads the journal once per
    ``every`` seconds and never serves a value more than ``bound`` seconds
    after an invalidation was committed. A Redis error of this process
    (``distrust``) withdraws trust until a read that started after it
    completes. After a failed read, the next is due ``every`` seconds later.
    """

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self._clock = clock
        self._read_at = -math.inf  # start of the last complete read
        self._distrusted_at = -math.inf
        self._retry_at = -math.inf

    @property
    def bound(self) -> float:
        """Seconds after the start of the last complete read during which Redis is trusted."""
        return 2 * self.every

    def due(self) -> bool:
        """Whether the journal should be read now."""
        now = self._clock()
        if now < self._retry_at:
            return False
        return self._read_at <= self._distrusted_at or now - self._read_at >= self.every

    def trusted(self) -> bool:
        """Whether values read from Redis now may be served."""
        read_at = self._read_at
        return read_at > self._distrusted_at and self._clock() - read_at < self.bound

    def begin(self) -> float:
        """Call before reading the journal; pass the result to ``done``."""
        return self._clock()

    def done(self, started: float) -> None:
        """A read that started at ``started`` applied everything it found."""
        self._retry_at = -math.inf
        if started > self._distrusted_at and started > self._read_at:
            self._read_at = started

    def failed(self) -> None:
        """The journal could not be read: try again ``every`` seconds from now."""
        self._retry_at = self._clock() + self.every

    def distrust(self) -> None:
        """A Redis error: trust nothing until a read that starts after now completes."""
        self._distrusted_at = self._clock()
