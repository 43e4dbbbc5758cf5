"""``datalayer check-distribution``'s query rules: what pins a lock or a write to one account.

On Citus a statement routes to one shard only when the lock or the write itself names
the account (``account_id = :param``); these cases were read off ``EXPLAIN`` on a
Citus 13.2 cluster (issue 16).
"""

from __future__ import annotations

import pytest

from datalayer._loader import Query, parse_sql
from datalayer._ops.distribution import _query_findings


def query(sql: str) -> Query:
    """One named query of a hypothetical ``sql/notes.sql``."""
    (parsed,) = parse_sql(f"-- name: probe_notes :many\n{sql}\n", "sql/notes.sql")
    return parsed


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # the lock and the write of a claim pinned to one account: a router query
        ("WITH picked AS (SELECT id FROM notes WHERE account_id = :account_id"
         " ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED)"
         " UPDATE notes n SET body = 'x' FROM picked p"
         " WHERE n.account_id = :account_id AND n.id = p.id",
         []),
        # a read of candidates across accounts without locks: a multi-shard read, fine
        ("SELECT DISTINCT account_id FROM notes WHERE body = '' ORDER BY 1 LIMIT :limit", []),
        ("SELECT account_id, id FROM notes ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED",
         ["locks rows of notes across accounts"]),
        # joined on account_id to a pinned CTE, the write still went to every shard on Citus
        ("WITH mine AS (SELECT account_id, id FROM notes WHERE account_id = :account_id)"
         " UPDATE notes n SET body = 'x' FROM mine m"
         " WHERE n.account_id = m.account_id AND n.id = m.id",
         ["UPDATE of notes not pinned to one account"]),
        # pinned only inside the subquery it joins (touch_api_key before issue 16)
        ("UPDATE notes AS n SET body = 'x' FROM (SELECT account_id, id FROM notes"
         " WHERE account_id = :account_id AND id = :id FOR UPDATE SKIP LOCKED) AS due"
         " WHERE n.account_id = due.account_id AND n.id = due.id",
         ["UPDATE of notes not pinned to one account"]),
        ("DELETE FROM notes WHERE account_id = ANY(:account_ids) AND id = ANY(:ids)",
         ["DELETE of notes not pinned to one account"]),
        ("DELETE FROM notes WHERE account_id = :account_id AND id IN"
         " (SELECT id FROM notes WHERE body = '')",
         []),
    ],
)  # fmt: skip
def test_a_lock_or_write_is_pinned_only_by_its_own_account_condition(
    sql: str, expected: list[str]
) -> None:
    found = [f.problem for f in _query_findings(query(sql), {"notes", "accounts"})]
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected, strict=True):
        assert problem.startswith(start), problem
