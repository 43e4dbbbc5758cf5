"""Redis cache-aside: generation-guarded sets, stampede locks, jittered TTLs, a circuit breaker.

One value per tag, under ``cache_key(namespace, version, tag, name)``
(``_cachecore``): versioned (a schema change bumps ``version``), tenant-scoped
by the tag, and in one Redis Cluster slot with its generation and lock.

Why generations rather than a plain delete-after-commit: a reader that missed,
read the old row, and is slow to write it back would otherwise re-cache the
old value just after a writer's delete. Here every invalidation (run after
the writer's transaction commits) increments ``{tag}:gen`` and deletes the
value; a reader reads the generation *before* reading the database and writes
its value back only if the generation is unchanged (one Lua script). So a
value read before a commit can never be stored after that commit's
invalidation.

Redis down or slow is never an error: each call has a short socket timeout,
an error opens a breaker for ``cooldown`` seconds during which Redis is not
tried at all, and every read falls back to the database. Invalidations that
fail are remembered and replayed when Redis answers again.

This module is the Redis I/O; names, the codec, the script and the breaker
are in ``_cachecore``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from ._cachecore import SET_IF_GENERATION, Breaker, CacheStats, Codec, cache_key

__all__ = ["Cache", "CacheStats"]

log = logging.getLogger("datalayer")

M = TypeVar("M", bound=BaseModel)


class Cache:
    """A Redis cache-aside helper; with ``url=None`` it is disabled and every read builds."""

    def __init__(
        self,
        url: str | None,
        *,
        namespace: str = "dl",
        version: int = 1,
        socket_timeout: float = 0.1,
        cooldown: float = 1.0,
        lock_ms: int = 2000,
        wait_ms: int = 500,
    ):
        self.namespace = namespace
        self.version = version
        self.lock_ms = lock_ms
        self.wait_ms = wait_ms
        self.stats = CacheStats()
        self._breaker = Breaker(cooldown)
        self._client: redis.Redis | None = None
        self._set_if_gen: Any = None
        if url:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry_on_timeout=False,
                health_check_interval=30,
            )
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
    def cooldown(self, seconds: float) -> None:
        self._breaker.cooldown = seconds

    def key(self, tag: str, name: str) -> str:
        """The full Redis key of ``name`` under hash tag ``tag``."""
        return cache_key(self.namespace, self.version, tag, name)

    def ping(self) -> bool:
        """Whether Redis is configured and answers now (the breaker is left alone)."""
        if self._client is None:
            return False
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        """Close the Redis connections."""
        if self._client is not None:
            self._client.close()

    # -- availability -------------------------------------------------------------------

    def _available(self) -> bool:
        if self._client is None:
            return False
        if not self._breaker.closed():
            self.stats.add("bypassed")
            return False
        return not self._breaker.has_pending or self._replay()

    def _failed(self, exc: Exception) -> None:
        self.stats.add("errors")
        if self._breaker.trip():
            log.warning(
                "redis unavailable, reading from PostgreSQL for %ss: %s", self.cooldown, exc
            )

    def _replay(self) -> bool:
        """Apply invalidations that failed while Redis was away; False if it still fails."""
        tags = self._breaker.pending()
        try:
            for tag in tags:
                self._bump(tag)
        except redis.RedisError as exc:
            self._failed(exc)
            return False
        self._breaker.replayed(tags)
        log.info("redis back: replayed %d invalidation(s)", len(tags))
        return True

    # -- reads --------------------------------------------------------------------------

    def get_or_build(
        self,
        tag: str,
        model: type[M],
        build: Callable[[], M | None],
        *,
        ttl: float,
        negative_ttl: float,
        after_hit: Callable[[M], None] | None = None,
    ) -> M | None:
        """The value cached under ``tag``, else ``build()``'s, cached for ``ttl`` (±10%).

        ``None`` from ``build`` is cached for ``negative_ttl`` (0: not at all).
        On a miss one caller rebuilds (a lock with ``SET NX``); the others wait
        up to ``wait_ms`` for its value, then build themselves without caching.
        Never raises a Redis error: without Redis this is ``build()``.
        """
        codec = Codec(model)
        if not self._available():
            return build()
        client = self._client
        assert client is not None
        value_key, gen_key = self.key(tag, "value"), self.key(tag, "gen")
        try:
            raw, generation = client.mget([value_key, gen_key])
        except redis.RedisError as exc:
            self._failed(exc)
            return build()
        if raw is not None:
            value = codec.load(raw)
            self.stats.add("hits" if value is not None else "negative_hits")
            if value is not None and after_hit is not None:
                after_hit(value)
            return value
        self.stats.add("misses")
        gen = generation.decode() if isinstance(generation, bytes) else (generation or "0")
        lock_key = self.key(tag, "lock")
        try:
            won = bool(client.set(lock_key, b"1", nx=True, px=self.lock_ms))
        except redis.RedisError as exc:
            self._failed(exc)
            return build()
        if not won:
            return self._wait_for(value_key, codec, build)
        try:
            value = build()
            self.stats.add("rebuilds")
            life = negative_ttl if value is None else ttl
            if life > 0:
                ms = max(1, int(life * 1000 * random.uniform(0.9, 1.1)))
                stored = self._set_if_gen(
                    keys=[value_key, gen_key], args=[gen, codec.dump(value), ms]
                )
                if not stored:
                    self.stats.add("stale_refused")
            return value
        except redis.RedisError as exc:
            self._failed(exc)
            return value
        finally:
            try:
                client.delete(lock_key)
            except redis.RedisError as exc:
                self._failed(exc)

    def _wait_for(self, value_key: str, codec: Codec[M], build: Callable[[], M | None]) -> M | None:
        client = self._client
        assert client is not None
        self.stats.add("waits")
        deadline = time.monotonic() + self.wait_ms / 1000
        delay = 0.002
        try:
            while time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                raw = client.get(value_key)
                if raw is not None:
                    return codec.load(raw)
        except redis.RedisError as exc:
            self._failed(exc)
        return build()

    def remember(self, tag: str, name: str, seconds: float) -> bool:
        """Set a marker for ``seconds`` unless it exists; True if this call set it.

        For "at most once per interval" work; False (do not do it) when Redis
        is away, so an outage never multiplies the work.
        """
        if not self._available():
            return False
        client = self._client
        assert client is not None
        try:
            return bool(client.set(self.key(tag, name), b"1", nx=True, px=int(seconds * 1000)))
        except redis.RedisError as exc:
            self._failed(exc)
            return False

    # -- invalidation -------------------------------------------------------------------

    def invalidate(self, *tags: str) -> None:
        """Make every value under these tags stale: bump their generation, delete nothing else.

        Call after the writing transaction commits. If Redis is away the tags
        are remembered and invalidated as soon as it answers again (before this
        process reads from it).
        """
        if self._client is None or not tags:
            return
        self.stats.add("invalidations", len(tags))
        if self._breaker.has_pending and self._breaker.closed():
            self._replay()  # earlier failures first, also in a process that only writes
        if not self._breaker.closed():
            self._breaker.defer(tags)
            return
        for position, tag in enumerate(tags):
            try:
                self._bump(tag)
            except redis.RedisError as exc:
                self._failed(exc)
                self._breaker.defer(tags[position:])
                return

    def _bump(self, tag: str) -> None:
        client = self._client
        assert client is not None
        # One value per tag. Bumping the generation makes any in-flight
        # rebuild's write-back fail; deleting the value makes the next read miss.
        pipe = client.pipeline(transaction=True)
        pipe.incr(self.key(tag, "gen"))
        pipe.delete(self.key(tag, "value"))
        pipe.execute()
