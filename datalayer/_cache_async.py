"""Redis cache-aside: signed values, generation-guarded sets, stampede locks, a journal, a breaker.

One value per tag, under ``cache_key(namespace, version, tag, name)``
(``_cachecore``): versioned (a schema change bumps ``version``), tenant-scoped
by the tag, and in one Redis Cluster slot with its generation and lock.

Why generations rather than a plain delete-after-commit: a reader that missed,
read the old row, and is slow to write it back would otherwise re-cache the
old value just after a writer's delete. Here every invalidation (run after
the writer's transaction commits) sets ``{tag}:gen`` to a new random token
and deletes the value; a reader reads the generation *before* reading the
database (creating one if there is none) and writes its value back only if
that generation is still there, unchanged, and at most
``WRITE_BACK_WINDOW_MS`` later (Lua scripts, on Redis's clock). Generations
expire: ``GENERATION_TTL_MS`` after a bump, ``GENERATION_MARGIN_MS`` after
the last value or read under them. Since a token never repeats and an absent
generation refuses every write-back, an expired (or evicted) generation
cannot make a stale write-back look current.

Redis is outside the trust boundary: every value is signed (HMAC-SHA256 over
the key id, the Redis key name, the generation, an expiry and the payload),
and one that does not verify is a miss, counted as ``rejected``, rebuilt and
overwritten.

Redis down or slow is never an error: each call has a short socket timeout,
an error opens a breaker for ``cooldown`` seconds during which Redis is not
tried at all, and every read falls back to the database. A ``Database``
attaches its journal of pending invalidations (``cache_invalidations``,
written in the writer's transaction): the cache applies what it finds there
at most every ``journal_every`` seconds and after any Redis error of its
own, and trusts Redis only within ``2 * journal_every`` seconds of a complete
read. So an invalidation whose writer could not reach Redis (or died) still
reaches every reader within that bound.

This module is the Redis I/O; names, the codec, the scripts, the breaker and
the journal clock are in ``_cachecore``.
"""

from __future__ import annotations

import asyncio  # async-only
import logging
import random

# sync: import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BaseModel, Field, SkipValidation

from . import _telemetry
from ._cachecore import (
    CLAIM,
    GENERATION_MARGIN_MS,
    GENERATION_TTL_MS,
    MAX_TTL,
    SET_IF_GENERATION,
    WRITE_BACK_WINDOW_MS,
    Breaker,
    CacheStats,
    Codec,
    Freshness,
    Rejected,
    SigningKeys,
    cache_key,
    new_generation,
    wall_ms,
)
from ._conninfo import check_redis_url
from ._lazy import LazyModule
from ._validation import validated
from .errors import DataLayerError, InvalidInput
from .models.cached import PendingInvalidation

if TYPE_CHECKING:
    import redis.asyncio as redis
else:  # imported at first use: see _lazy
    redis = LazyModule("redis.asyncio")  # async-only
    # sync: redis = LazyModule("redis")

__all__ = ["AsyncCache", "CacheStats"]

log = logging.getLogger("datalayer")

M = TypeVar("M", bound=BaseModel)

JOURNAL_PAGE = 1000  # pending invalidations read per query
_JOURNAL_PAGES = 20  # a read that finds more leaves the rest for the next one


# What the public methods accept. A tag or name is any text that fits a sane key;
# a namespace is one word, so that keys stay readable and scannable by prefix.
Tag = Annotated[str, Field(min_length=1, max_length=1024)]
Namespace = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]
Pause = Annotated[float, Field(ge=0, le=86_400, allow_inf_nan=False)]
Millis = Annotated[int, Field(ge=1, le=3_600_000)]


def _refuse_ttl(value: Any, field: str, *, zero: bool) -> None:
    """Refuse a TTL that is not a real number of seconds in range (``zero``: 0 allowed)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    low_ok = number and (value >= 0 if zero else value > 0)
    if not (low_ok and value <= MAX_TTL):  # NaN fails both comparisons
        low = "0" if zero else "more than 0"
        raise InvalidInput(f"must be a number of seconds, {low} to {MAX_TTL:g}", field=field)


def _checked(
    build: Callable[[], Awaitable[M | None]], model: type[M]
) -> Callable[[], Awaitable[M | None]]:
    """``build``, refusing a result that is neither a ``model`` nor ``None``."""

    async def checked() -> M | None:
        value = await build()
        if value is not None and not isinstance(value, model):
            kind = type(value).__name__
            raise InvalidInput(f"returned {kind}, not {model.__name__} or None", field="build")
        return value

    return checked


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else (raw or "")


# async-only: begin
class _JournalLock:
    """``threading.Lock``'s ``acquire(blocking, timeout)`` and ``release()`` for coroutines.

    ``acquire(False)`` takes the lock only if that needs no wait;
    ``acquire(True, timeout)`` waits up to ``timeout`` seconds (-1: no limit).
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    async def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        limit = (None if timeout < 0 else timeout) if blocking else 0
        try:
            async with asyncio.timeout(limit):
                await self._lock.acquire()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        self._lock.release()


# async-only: end


class AsyncCache:
    """A Redis cache-aside helper; with ``url=None`` it is disabled and every read builds.

    ``keys`` sign and verify every value; a URL without keys raises
    ``InvalidInput`` (field ``DATALAYER_CACHE_KEYS``): the cache fails closed
    rather than trusting Redis or inventing a key of its own.
    """

    @validated
    def __init__(
        self,
        url: str | None,
        *,
        # Checked below by isinstance, not by pydantic: a schema built at import would hold
        # on to the class object (tools/mutate.py swaps _cachecore's classes at run time).
        keys: SkipValidation[SigningKeys | None] = None,
        namespace: Namespace = "dl",
        version: Annotated[int, Field(ge=0, le=1_000_000)] = 2,
        socket_timeout: Seconds = 0.1,
        cooldown: Pause = 1.0,
        lock_ms: Millis = 2000,
        wait_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 500,
        journal_every: Seconds = 1.0,
    ):
        if keys is not None and not isinstance(keys, SigningKeys):
            raise InvalidInput("must be SigningKeys or None", field="keys")
        if url:
            try:
                check_redis_url(url)
            except ValueError as exc:
                raise InvalidInput(str(exc), field="url") from None
            if keys is None:
                raise InvalidInput(
                    "a Redis URL needs the keys that sign cached values",
                    field="DATALAYER_CACHE_KEYS",
                )
        self.namespace = namespace
        self.version = version
        self.lock_ms = lock_ms
        self.wait_ms = wait_ms
        self.stats = CacheStats()
        self._keys = keys
        self._breaker = Breaker(cooldown)
        self._freshness = Freshness(journal_every)
        # sync: self._journal_lock = threading.Lock()
        self._journal_lock = _JournalLock()  # async-only
        self._read_journal: Callable[[int], Awaitable[Sequence[PendingInvalidation]]] | None = None
        self._forget_journal: (
            Callable[[Sequence[PendingInvalidation]], Awaitable[object]] | None
        ) = None
        self._last_rejection_log = 0.0
        self._client: redis.Redis | None = None
        self._claim: Any = None
        self._set_if_gen: Any = None
        if url:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry_on_timeout=False,
                health_check_interval=30,
            )
            self._claim = self._client.register_script(CLAIM)
            self._set_if_gen = self._client.register_script(SET_IF_GENERATION)

    @property
    def enabled(self) -> bool:
        """Whether a Redis URL was configured."""
        return self._client is not None

    @property
    def cooldown(self) -> float:
        """Seconds Redis is left alone after an error."""
        return self._breaker.cooldown

    @cooldown.setter
    @validated
    def cooldown(self, seconds: Pause) -> None:
        self._breaker.cooldown = seconds

    @property
    def journal_every(self) -> float:
        """Seconds between reads of the journal; Redis is trusted for twice as long after one."""
        return self._freshness.every

    @journal_every.setter
    @validated
    def journal_every(self, seconds: Seconds) -> None:
        self._freshness.every = seconds

    @validated
    def key(self, tag: Tag, name: Tag) -> str:
        """The full Redis key of ``name`` under hash tag ``tag``."""
        return cache_key(self.namespace, self.version, tag, name)

    @validated
    def attach_journal(
        self,
        read: Callable[[int], Awaitable[Sequence[PendingInvalidation]]],
        forget: Callable[[Sequence[PendingInvalidation]], Awaitable[object]],
    ) -> None:
        """Read pending invalidations with ``read(limit)``; ``forget`` those applied.

        ``Database`` attaches ``cache_invalidations``; a cache without a
        journal trusts Redis after every error once its own failed
        invalidations are replayed.
        """
        self._read_journal, self._forget_journal = read, forget

    async def ping(self) -> bool:
        """Whether Redis is configured and answers now (the breaker is left alone)."""
        if self._client is None:
            return False
        try:
            return bool(await self._client.ping())
        except redis.RedisError:
            return False

    async def close(self) -> None:
        """Close the Redis connections."""
        if self._client is not None:
            await self._client.aclose()

    # -- availability -------------------------------------------------------------------

    async def _available(self) -> bool:
        if self._client is None:
            return False
        if not self._breaker.closed():
            self.stats.add("bypassed")
            return False
        if self._breaker.has_pending and not await self._replay():
            return False
        if self._read_journal is None or await self._trust_redis():
            return True
        self.stats.add("bypassed")
        return False

    async def _trust_redis(self) -> bool:
        """Read the journal if due; whether Redis may be trusted now.

        While Redis is trusted one caller reads the journal and the others go
        on; when it is not (a new process, after an error, a read overdue),
        the others wait up to ``wait_ms`` for that read rather than stampede
        PostgreSQL.
        """
        freshness = self._freshness
        if freshness.due():
            waiting = not freshness.trusted()
            if await self._journal_lock.acquire(waiting, self.wait_ms / 1000 if waiting else -1):
                try:
                    if freshness.due():
                        await self._catch_up()
                finally:
                    self._journal_lock.release()
        return freshness.trusted()

    async def _catch_up(self) -> bool:
        """Apply every pending invalidation of the journal, then forget them."""
        assert self._read_journal is not None
        assert self._forget_journal is not None
        started = self._freshness.begin()
        applied = 0
        try:
            for _ in range(_JOURNAL_PAGES):
                entries = await self._read_journal(JOURNAL_PAGE)
                if entries:
                    await self._bump(sorted({e.tag for e in entries}))
                    await self._forget_journal(entries)
                    applied += len(entries)
                if len(entries) < JOURNAL_PAGE:
                    break
            else:
                self._freshness.failed()
                return False
        except redis.RedisError as exc:
            self._failed(exc)
            return False
        except DataLayerError as exc:
            self._freshness.failed()
            log.warning("cannot read pending cache invalidations, not trusting Redis: %s", exc)
            return False
        self._freshness.done(started)
        if applied:
            self.stats.add("replayed", applied)
            log.info("applied %d pending cache invalidation(s) from the journal", applied)
        return True

    def _failed(self, exc: Exception) -> None:
        self.stats.add("errors")
        self._freshness.distrust()
        if self._breaker.trip():
            log.warning(
                "redis unavailable, reading from PostgreSQL for %ss: %s", self.cooldown, exc
            )

    async def _replay(self) -> bool:
        """Apply invalidations that failed while Redis was away; False if it still fails."""
        tags = self._breaker.pending()
        try:
            await self._bump(tags)
        except redis.RedisError as exc:
            self._failed(exc)
            return False
        self._breaker.replayed(tags)
        log.info("redis back: replayed %d invalidation(s)", len(tags))
        return True

    def _rejected(self, why: Rejected) -> None:
        self.stats.add("rejected")
        now = time.monotonic()
        if now - self._last_rejection_log >= 10:  # a flood must not flood the log
            self._last_rejection_log = now
            log.warning(
                "refused a cached value (%s): rebuilt from PostgreSQL; %d refused so far",
                why,
                self.stats.rejected,
            )

    # -- reads --------------------------------------------------------------------------

    async def get_or_build(
        self,
        tag: str,
        model: type[M],
        build: Callable[[], Awaitable[M | None]],
        *,
        ttl: float,
        negative_ttl: float,
        after_hit: Callable[[M], Awaitable[None]] | None = None,
    ) -> M | None:
        """The value cached under ``tag``, else ``build()``'s, cached for ``ttl`` (±10%).

        ``None`` from ``build`` is cached for ``negative_ttl`` (0: not at all).
        On a miss one caller rebuilds (a lock with ``SET NX``); the others wait
        up to ``wait_ms`` for its value, then build themselves without caching.
        A value whose signature does not verify is a miss. Raises
        ``InvalidInput`` for a ``ttl`` outside (0, ``MAX_TTL``] or a
        ``negative_ttl`` outside [0, ``MAX_TTL``], and never a Redis error:
        without Redis this is ``build()``.
        """
        # Plain checks rather than @validated: this is every cached read's hot path.
        if type(tag) is not str or not 0 < len(tag) <= 1024:
            raise InvalidInput("must be text of 1 to 1024 characters", field="tag")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise InvalidInput("must be a pydantic model class", field="model")
        if not callable(build):
            raise InvalidInput("must be callable", field="build")
        if after_hit is not None and not callable(after_hit):
            raise InvalidInput("must be callable or None", field="after_hit")
        _refuse_ttl(ttl, "ttl", zero=False)
        _refuse_ttl(negative_ttl, "negative_ttl", zero=True)
        build = _checked(build, model)
        telemetry = _telemetry.ACTIVE
        if telemetry is None:
            # sync: return self._lookup(tag, model, build, ttl, negative_ttl, after_hit)[0]
            # async-only: begin
            value, _ = await self._lookup(tag, model, build, ttl, negative_ttl, after_hit)
            return value
            # async-only: end
        with telemetry.span(
            "datalayer.cache.get_or_build", **{"datalayer.cache.model": model.__name__}
        ) as span:
            value, outcome = await self._lookup(tag, model, build, ttl, negative_ttl, after_hit)
            span.set_attribute("datalayer.cache.outcome", outcome)
            span.set_attribute("datalayer.cache.hit", outcome in ("hit", "negative_hit"))
            return value

    async def _lookup(
        self,
        tag: str,
        model: type[M],
        build: Callable[[], Awaitable[M | None]],
        ttl: float,
        negative_ttl: float,
        after_hit: Callable[[M], Awaitable[None]] | None,
    ) -> tuple[M | None, str]:
        """``get_or_build``'s work after validation: the value and what happened
        (``hit``, ``negative_hit``, ``miss`` (built here), ``waited`` (another
        caller built it, or we built after waiting), ``bypass`` (no Redis))."""
        if not await self._available():
            return await build(), "bypass"
        client, keys = self._client, self._keys
        assert client is not None
        assert keys is not None
        codec = Codec(model, keys)
        value_key, gen_key = self.key(tag, "value"), self.key(tag, "gen")
        try:
            found = await self._read(value_key, gen_key, codec, after_hit)
        except redis.RedisError as exc:
            self._failed(exc)
            return await build(), "bypass"
        if found is not None:
            return found
        self.stats.add("misses")
        lock_key = self.key(tag, "lock")
        try:
            won, seen, read_ms = await self._claim(
                keys=[lock_key, gen_key],
                args=[self.lock_ms, new_generation(), GENERATION_MARGIN_MS],
            )
        except redis.RedisError as exc:
            self._failed(exc)
            return await build(), "bypass"
        if not won:
            return await self._wait_for(value_key, gen_key, codec, build), "waited"
        try:
            # The lock is ours. Whoever built the value before us may have stored it and
            # released the lock between our read and our claim: take it, build nothing.
            try:
                found = await self._read(value_key, gen_key, codec, after_hit, again=True)
            except redis.RedisError as exc:
                self._failed(exc)
                found = None
            if found is not None:
                return found
            value = await build()
            self.stats.add("rebuilds")
            life = negative_ttl if value is None else ttl
            if life > 0:
                ms = max(1, int(life * 1000 * random.uniform(0.9, 1.1)))
                gen = _text(seen)
                blob = codec.dump(value, key=value_key, generation=gen, expires_ms=wall_ms() + ms)
                stored = await self._set_if_gen(
                    keys=[value_key, gen_key],
                    args=[gen, blob, ms, read_ms, WRITE_BACK_WINDOW_MS, GENERATION_MARGIN_MS],
                )
                if stored != 1:
                    self.stats.add("stale_refused")
            return value, "miss"
        except redis.RedisError as exc:
            self._failed(exc)
            return value, "miss"
        finally:
            try:
                await client.delete(lock_key)
            except redis.RedisError as exc:
                self._failed(exc)

    async def _read(
        self,
        value_key: str,
        gen_key: str,
        codec: Codec[M],
        after_hit: Callable[[M], Awaitable[None]] | None,
        *,
        again: bool = False,
    ) -> tuple[M | None, str] | None:
        """The value under ``value_key`` if one is stored and verifies, with what it was
        (``hit``, or ``negative_hit`` for a cached "none"); else ``None``. Raises Redis errors.

        ``again``: this caller read it before and found nothing usable; a value that does not
        verify now is the one already counted as ``rejected`` then, not counted twice."""
        client = self._client
        assert client is not None
        raw, generation = await client.mget([value_key, gen_key])
        if raw is None:
            return None
        try:
            value = codec.load(raw, key=value_key, generation=generation, now_ms=wall_ms())
        except Rejected as why:
            if not again:
                self._rejected(why)
            return None
        self.stats.add("hits" if value is not None else "negative_hits")
        if value is not None and after_hit is not None:
            await after_hit(value)
        return value, "hit" if value is not None else "negative_hit"

    async def _wait_for(
        # sync: self, value_key: str, gen_key: str, codec: Codec[M], build: Callable[[], M | None]
        # async-only: begin
        self,
        value_key: str,
        gen_key: str,
        codec: Codec[M],
        build: Callable[[], Awaitable[M | None]],
        # async-only: end
    ) -> M | None:
        client = self._client
        assert client is not None
        self.stats.add("waits")
        deadline = time.monotonic() + self.wait_ms / 1000
        delay = 0.002
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                raw, generation = await client.mget([value_key, gen_key])
                if raw is not None:
                    try:
                        return codec.load(
                            raw, key=value_key, generation=generation, now_ms=wall_ms()
                        )
                    except Rejected as why:
                        self._rejected(why)
        except redis.RedisError as exc:
            self._failed(exc)
        return await build()

    @validated
    async def remember(self, tag: Tag, name: Tag, seconds: Seconds) -> bool:
        """Set a marker for ``seconds`` unless it exists; True if this call set it.

        For "at most once per interval" work; False (do not do it) when Redis
        is away, so an outage never multiplies the work.
        """
        if not await self._available():
            return False
        client = self._client
        assert client is not None
        try:
            marker = self.key(tag, name)
            return bool(await client.set(marker, b"1", nx=True, px=max(1, int(seconds * 1000))))
        except redis.RedisError as exc:
            self._failed(exc)
            return False

    # -- invalidation -------------------------------------------------------------------

    @validated
    async def invalidate(self, *tags: Tag) -> None:
        """Make every value under these tags stale: a new generation, the value deleted.

        Call after the writing transaction commits. If Redis is away the tags
        are remembered and invalidated as soon as it answers again (before this
        process reads from it). Only this process remembers them: a change
        that must reach every process is journaled in its transaction
        (``Repository._invalidate``), which ``apply`` then drains.
        """
        if self._client is None or not tags:
            return
        await self._send(sorted(set(tags)))

    @validated
    async def apply(self, entries: Sequence[PendingInvalidation]) -> None:
        """After their transaction committed: invalidate the entries' tags, then forget them.

        An entry that cannot be sent stays in the journal, and the next
        journal read of any process applies it.
        """
        if self._client is None or not entries:
            return
        if await self._send(sorted({e.tag for e in entries})) and self._forget_journal is not None:
            try:
                await self._forget_journal(entries)
            except DataLayerError as exc:  # applied anyway; a later read applies them again
                log.info("could not clear %d applied cache invalidation(s): %s", len(entries), exc)

    async def _send(self, tags: list[str]) -> bool:
        self.stats.add("invalidations", len(tags))
        if self._breaker.has_pending and self._breaker.closed():
            await self._replay()  # earlier failures first, also in a process that only writes
        if not self._breaker.closed():
            self._breaker.defer(tags)
            return False
        try:
            await self._bump(tags)
        except redis.RedisError as exc:
            self._failed(exc)
            self._breaker.defer(tags)
            return False
        return True

    async def _bump(self, tags: Sequence[str]) -> None:
        """A new generation for each tag, then its value deleted: one round trip."""
        if not tags:
            return
        client = self._client
        assert client is not None
        # The generation first: from then on any in-flight rebuild's write-back is
        # refused; then the value goes, so the next read misses.
        pipe = client.pipeline(transaction=False)
        for tag in tags:
            pipe.set(self.key(tag, "gen"), new_generation(), px=GENERATION_TTL_MS)
            pipe.delete(self.key(tag, "value"))
        await pipe.execute()
