"""Work queues across accounts, claimed one account at a time (what runs on Citus too).

On Citus, sharded by account, ``SELECT … FOR UPDATE [SKIP LOCKED]`` runs only
when the statement routes to one shard, and a write that touches many
accounts is a multi-shard write. So a claim across accounts is two steps, on
one set of SQL for plain PostgreSQL and Citus alike: a read of the next
candidates without locks (a multi-shard read is fine), in the queue's order
after a keyset cursor; then, for each account among them, a claim pinned to
it (``WHERE account_id = :account_id … FOR UPDATE SKIP LOCKED``, a router
query) of up to as many items as the account has among the candidates.

Without contention that claims exactly what one statement over every account
would have: the candidates are the queue's first ``limit`` items, so each
account's share is its own oldest items. A candidate another worker holds (or
took since the read) is skipped by its account's claim; while the batch is
short of ``limit`` the next candidates after the last one read are claimed
too, so that two workers still skip each other's rows and each fills its batch
rather than coming back empty while work remains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar

__all__ = ["EARLIEST", "Candidate", "claim_per_account", "shares"]

# The keyset cursor of a queue ordered by time, before its first item.
EARLIEST = datetime.min.replace(tzinfo=UTC)


class Candidate(Protocol):
    """An item of a work queue, read without locks: at least the account it belongs to."""

    @property
    def account_id(self) -> int: ...


C = TypeVar("C", bound=Candidate)
T = TypeVar("T")


def shares(candidates: Iterable[Candidate]) -> list[tuple[int, int]]:
    """Each account of ``candidates`` with how many it has, in the order it first appears."""
    counts: dict[int, int] = {}
    for candidate in candidates:
        counts[candidate.account_id] = counts.get(candidate.account_id, 0) + 1
    return list(counts.items())


async def claim_per_account(
    read: Callable[[C | None, int], Awaitable[Sequence[C]]],
    claim: Callable[[list[tuple[int, int]]], Awaitable[Sequence[T]]],
    limit: int,
) -> list[T]:
    """Claim up to ``limit`` items across accounts, one account per claim.

    ``read(after, n)`` returns up to ``n`` candidates in the queue's order,
    after the candidate ``after`` (``None``: from the start), without locks;
    ``claim(shares)`` claims, for each ``(account_id, n)``, up to ``n`` of
    that account's items, one statement per account (``Bound.each`` sends
    them together), and returns what it claimed. Returns the claimed items,
    account by account in the order the accounts first appear among the
    candidates. Run it in one transaction, so that the batch is claimed whole
    or not at all.
    """
    claimed: list[T] = []
    after: C | None = None
    while len(claimed) < limit:
        wanted = limit - len(claimed)
        candidates = await read(after, wanted)
        if candidates:
            claimed += await claim(shares(candidates))
        if len(candidates) < wanted:  # the queue holds no more
            break
        after = candidates[-1]
    return claimed
