"""The journal of cache invalidations (``sql/cache_invalidations.sql``).

A change that must reach the Redis cache journals its tags in its own
transaction (``Repository._invalidate``); after the commit the writer sends
them to Redis and forgets them. What a writer could not send stays here until
some process that reads from the cache applies it (``Cache``, at most every
second and after any Redis error of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

from .._repository_async import AsyncRepository, execrows, many
from .._validation import Limit, validated
from ..models.cached import PendingInvalidation

__all__ = ["AsyncCacheInvalidationRepository"]


class AsyncCacheInvalidationRepository(AsyncRepository):
    """Cache invalidations committed but not yet known to have reached Redis."""

    aggregate = "cache_invalidations"

    _insert = many("record_cache_invalidations", PendingInvalidation)
    _list = many("list_cache_invalidations", PendingInvalidation)
    _delete = execrows("delete_cache_invalidations")

    @validated
    async def pending(self, *, limit: Limit = 1000) -> list[PendingInvalidation]:
        """Up to ``limit`` pending invalidations, by account and then in journal order.

        Normally empty: rows stay only while Redis is unreachable from the
        writers and until a reader applies them. Raises ``InvalidInput`` for a
        bad ``limit``.
        """
        return await self._list(limit=limit)

    # Not public: the unit of work journals, the cache forgets (see the module docstring).

    async def _journal(self, pairs: Sequence[tuple[int, str]]) -> list[PendingInvalidation]:
        """Journal ``(account_id, tag)`` pairs in this session's transaction."""
        if not pairs:
            return []
        return await self._insert(account_ids=[a for a, _ in pairs], tags=[t for _, t in pairs])

    async def _forget(self, entries: Sequence[PendingInvalidation]) -> int:
        """Delete entries whose tags Redis has; returns how many were still there.

        One statement per account (so that on Citus each routes to one shard);
        those of several accounts in one transaction, so a page costs one commit.
        """
        ids: dict[int, list[int]] = {}
        for e in entries:
            ids.setdefault(e.account_id, []).append(e.id)
        if len(ids) <= 1:
            # sync: return sum(self._delete(account_id=a, ids=i) for a, i in ids.items())
            # async-only: begin
            return sum([await self._delete(account_id=a, ids=i) for a, i in ids.items()])
            # async-only: end
        async with self._atomic() as tx:
            return sum(
                await tx._delete.each([{"account_id": a, "ids": i} for a, i in sorted(ids.items())])
            )
