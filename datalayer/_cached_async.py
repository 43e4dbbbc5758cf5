"""Cached composite reads: API-key auth bundles, current subscription with plan, plans by code.

What is cached, and why (measured in ``make bench``): the reads on every
request's hot path that cost several queries. A single-row read costs about
as much as a Redis GET, so it is not cached. Hard quota decisions are never
served from here: they stay one atomic statement in PostgreSQL.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from ._apikey import hash_secret, parse_secret
from ._cache_async import AsyncCache
from ._cachecore import account_tag, key_tag, key_use_tag, plan_tag
from ._validation import Id, validated
from .models.cached import AuthBundle, SubscriptionWithPlan
from .models.plans import PlanWithMeters
from .repositories import AsyncRepositories
from .repositories.plans import PlanCode

__all__ = ["AsyncCachedReads"]

AUTH_TTL = 300.0
NEGATIVE_TTL = 10.0
SUBSCRIPTION_TTL = 300.0
PLAN_TTL = 3600.0
TOUCH_EVERY = 60.0


class AsyncCachedReads:
    """Cache-aside reads over repositories; without Redis they go straight to PostgreSQL.

    ``db.cached`` is one, over the database's pool and cache. Attributes:
    ``cache``, the ``Cache`` (its ``stats`` count hits, misses, errors and
    rebuilds).
    """

    def __init__(self, repositories: AsyncRepositories, cache: AsyncCache):
        self._repos = repositories
        self.cache = cache
        self._touched: dict[int, float] = {}

    @validated
    async def auth(self, *, secret: str) -> AuthBundle | None:
        """The auth bundle of a presented API key, or ``None`` if it does not authenticate.

        A malformed key is refused without Redis or SQL. Unknown keys are
        cached as "none" for 10 s so a flood of bad keys stays off the
        database; issuing a key clears that entry when it commits, so a new key
        is never refused. Revoking, rotating, a subscription change and an
        account's suspension invalidate the bundle when they commit. An
        expired key is refused even if its bundle is still cached.
        ``last_used_at`` is still written about once a minute per key. Raises
        nothing from Redis; ``Unavailable`` if PostgreSQL is needed and down.
        """
        if parse_secret(secret) is None:
            return None
        bundle = await self.cache.get_or_build(
            key_tag(hash_secret(secret)),
            AuthBundle,
            lambda: self._build_auth(secret),
            ttl=AUTH_TTL,
            negative_ttl=NEGATIVE_TTL,
            after_hit=self._touch,
        )
        if bundle is None:
            return None
        expires = bundle.context.expires_at
        if expires is not None and expires <= datetime.now(UTC):
            return None
        return bundle

    @validated
    async def subscription(self, *, account_id: Id) -> SubscriptionWithPlan | None:
        """The account's live subscription with its plan, or ``None`` (cached for 5 minutes).

        Raises ``InvalidInput`` for a bad id; nothing from Redis.
        """
        return await self.cache.get_or_build(
            account_tag(account_id),
            SubscriptionWithPlan,
            lambda: self._build_subscription(account_id),
            ttl=SUBSCRIPTION_TTL,
            negative_ttl=NEGATIVE_TTL,
        )

    @validated
    async def plan(self, *, code: PlanCode) -> PlanWithMeters | None:
        """The current published version of a plan code, or ``None`` (cached for an hour).

        Publishing or archiving a version of the code invalidates it. Raises
        ``InvalidInput`` for a malformed code; nothing from Redis.
        """
        return await self.cache.get_or_build(
            plan_tag(code),
            PlanWithMeters,
            lambda: self._repos.plans.current(code=code),
            ttl=PLAN_TTL,
            negative_ttl=NEGATIVE_TTL,
        )

    async def _build_auth(self, secret: str) -> AuthBundle | None:
        context = await self._repos.api_keys.authenticate(secret=secret)
        if context is None:
            return None
        self._touched[context.key_id] = time.monotonic()
        return AuthBundle(
            context=context, current=await self._build_subscription(context.account_id)
        )

    async def _build_subscription(self, account_id: int) -> SubscriptionWithPlan | None:
        subscription = await self._repos.subscriptions.current(account_id=account_id)
        if subscription is None:
            return None
        plan = await self._repos.plans.get(plan_id=subscription.plan_id)
        if plan is None:  # a subscription's plan is never deleted (foreign key)
            return None
        return SubscriptionWithPlan(subscription=subscription, plan=plan)

    async def _touch(self, bundle: AuthBundle) -> None:
        """On a cache hit: record the key's use in PostgreSQL about once a minute.

        A per-process clock keeps most hits free of any extra round trip; a
        Redis marker shared by all processes then lets one of them write.
        """
        key_id = bundle.context.key_id
        now = time.monotonic()
        if now - self._touched.get(key_id, 0.0) < TOUCH_EVERY:
            return
        self._touched[key_id] = now
        if await self.cache.remember(key_use_tag(key_id), "touch", TOUCH_EVERY):
            await self._repos.api_keys.record_use(
                account_id=bundle.context.account_id, key_id=key_id
            )
