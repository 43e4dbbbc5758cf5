"""``map_error`` names the schema's constraint and table, also when a Citus shard reports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from datalayer.errors import AlreadyExists, LiveSubscriptionExists, map_error


@dataclass
class _Diag:
    constraint_name: str | None
    table_name: str | None
    message_primary: str = "duplicate key value violates unique constraint"
    message_detail: str | None = None
    column_name: str | None = None


class _Unique(psycopg.errors.UniqueViolation):
    """A unique violation as the server would report it, with the diagnostics given."""

    def __init__(self, diag: _Diag):
        super().__init__(diag.message_primary)
        self._diag = diag

    @property
    def diag(self) -> Any:
        return self._diag


@pytest.mark.parametrize(
    ("constraint", "table", "expected"),
    [
        ("users_email_key", "user_emails", ("users_email_key", "user_emails")),
        # A Citus shard: the shard id appended to both names.
        ("users_email_key_102078", "user_emails_102078", ("users_email_key", "user_emails")),
        ("api_keys_pkey_102130", "api_keys_102130", ("api_keys_pkey", "api_keys")),
        # Digits that are not one shard's suffix on both names are the schema's own.
        ("usage_events_2026_07_pkey", "usage_events_2026_07", ("usage_events_2026_07_pkey",
                                                               "usage_events_2026_07")),
        ("plans_v_2", "plans_3", ("plans_v_2", "plans_3")),
        ("ledger_key_1", None, ("ledger_key_1", None)),
        (None, "users_102129", (None, "users_102129")),
    ],
)  # fmt: skip
def test_a_constraint_and_table_are_named_as_in_the_schema(
    constraint: str | None, table: str | None, expected: tuple[str | None, str | None]
) -> None:
    error = map_error(_Unique(_Diag(constraint, table)))
    assert isinstance(error, AlreadyExists)
    assert (error.constraint, error.table) == expected


def test_a_domain_constraint_is_recognised_on_a_shard_too() -> None:
    diag = _Diag("subscriptions_one_live_per_account_102040", "subscriptions_102040")
    error = map_error(_Unique(diag))
    assert isinstance(error, LiveSubscriptionExists)
    assert error.constraint == "subscriptions_one_live_per_account"
