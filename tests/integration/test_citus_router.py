"""Every tenant-scoped named query runs on Citus and is routed to the account's one shard.

Issue 16, part 2. In the Citus session (``make test-citus``) each named query is
prepared and explained on the coordinator of a migrated, distributed clone
(``tests/citus_router.py`` says how); the queries that run on every shard on purpose
are listed there with their reason, and in the README.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from citus_router import MULTI_SHARD_ON_PURPOSE, assert_every_tenant_query_is_routed

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.requires_parts("citus")
def test_every_tenant_query_is_routed_to_one_shard(fresh_admin_url: str) -> None:
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
        assert_every_tenant_query_is_routed(conn)


@pytest.mark.parametrize("name", sorted(MULTI_SHARD_ON_PURPOSE))
def test_each_query_multi_shard_on_purpose_is_listed_in_the_readme(name: str) -> None:
    assert f"`{name}`" in README, f"{name} runs on every shard on purpose: list it in the README"
