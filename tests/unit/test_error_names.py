"""Errors name the logical constraint and table, not a Citus shard's."""

from __future__ import annotations

import pytest

from datalayer.errors import _logical


@pytest.mark.parametrize(
    ("raw", "logical"),
    [
        ("plans_published_immutable_102009", "plans_published_immutable"),
        ("usage_event_keys_pkey_102345", "usage_event_keys_pkey"),
        ("plans_102008", "plans"),
        ("usage_events_2026_01", "usage_events_2026_01"),  # a partition: kept
        ("invoices_number_key", "invoices_number_key"),
        ("t_12345", "t_12345"),  # five digits: not a shard id
        (None, None),
    ],
)
def test_a_shard_suffix_is_removed_and_nothing_else(raw: str | None, logical: str | None) -> None:
    assert _logical(raw) == logical
