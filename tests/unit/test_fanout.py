"""Claims across accounts, one account at a time (``datalayer._fanout``), against a model queue.

The model is a queue of items ordered by (time, account, id). ``read`` sees it without
locks, as the candidate query does; ``claim`` takes an account's oldest items that no
other worker holds, as the per-account ``FOR UPDATE SKIP LOCKED`` statement does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from datalayer._fanout import claim_per_account, shares


@dataclass(frozen=True, order=True)
class Item:
    at: int
    account_id: int
    id: int


@dataclass
class Queue:
    items: list[Item]
    held: set[Item] = field(default_factory=set)  # locked by another worker
    claimed: list[Item] = field(default_factory=list)
    reads: int = 0
    claims: list[list[tuple[int, int]]] = field(default_factory=list)

    def read(self, after: Item | None, n: int) -> list[Item]:
        self.reads += 1
        taken = set(self.claimed)
        return [i for i in sorted(self.items) if i not in taken and (after is None or i > after)][
            :n
        ]

    def claim(self, asked: list[tuple[int, int]]) -> list[Item]:
        self.claims.append(asked)
        got = []
        for account_id, n in asked:
            free = [
                i
                for i in sorted(self.items)
                if i.account_id == account_id and i not in self.held and i not in self.claimed
            ]
            got += free[:n]
            self.claimed += free[:n]
        return got


items = st.lists(
    st.builds(Item, st.integers(0, 50), st.integers(1, 8), st.integers(1, 10_000)),
    unique_by=lambda i: i.id,
    max_size=60,
)


def test_shares_are_counted_per_account_in_the_order_accounts_first_appear() -> None:
    found = shares([Item(1, 7, 1), Item(2, 3, 2), Item(3, 7, 3), Item(4, 5, 4)])
    assert found == [(7, 2), (3, 1), (5, 1)]


@given(items, st.integers(1, 20))
def test_without_contention_it_claims_what_one_statement_across_accounts_would(
    queue_items: list[Item], limit: int
) -> None:
    queue = Queue(queue_items)
    claimed = claim_per_account(queue.read, queue.claim, limit)
    assert sorted(claimed) == sorted(queue_items)[:limit]
    assert queue.reads == 1  # one read, then one statement per account


@given(items, st.data(), st.integers(1, 20))
def test_rows_another_worker_holds_are_skipped_and_the_batch_is_still_filled(
    queue_items: list[Item], data: st.DataObject, limit: int
) -> None:
    held = set(data.draw(st.lists(st.sampled_from(queue_items)) if queue_items else st.just([])))
    queue = Queue(queue_items, held)
    claimed = claim_per_account(queue.read, queue.claim, limit)
    assert not set(claimed) & held
    assert len(claimed) == len(set(claimed)) == min(limit, len(queue_items) - len(held))
    for asked in queue.claims:
        assert len({a for a, _ in asked}) == len(asked)  # one statement per account
        assert sum(n for _, n in asked) <= limit


def test_a_worker_whose_candidates_are_all_held_goes_on_after_them() -> None:
    queue_items = [Item(0, 1, 1), Item(1, 2, 2), Item(2, 3, 3), Item(3, 3, 4)]
    queue = Queue(queue_items, held=set(queue_items[:2]))
    assert claim_per_account(queue.read, queue.claim, 2) == queue_items[2:]
    assert queue.reads == 2


def test_an_accounts_claim_takes_its_oldest_free_items_beyond_the_candidates() -> None:
    # Another worker holds account 1's oldest item: its claim takes the next one instead.
    queue_items = [Item(0, 1, 1), Item(1, 2, 2), Item(2, 1, 3)]
    queue = Queue(queue_items, held={queue_items[0]})
    assert claim_per_account(queue.read, queue.claim, 2) == [Item(2, 1, 3), Item(1, 2, 2)]
