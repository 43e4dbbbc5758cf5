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


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('duplicate key value violates unique constraint "users_email_key_102078"',
         ("users_email_key", None)),
        ('new row for relation "invoices_102345" violates check constraint'
         ' "invoices_period_check"', ("invoices_period_check", "invoices")),
        # A message of one server, not a shard's: nothing is read back.
        ('duplicate key value violates unique constraint "users_email_key"', (None, None)),
        ('duplicate key value violates unique constraint "usage_events_2026_07_pkey"',
         (None, None)),
    ],
)  # fmt: skip
def test_a_relayed_citus_error_without_fields_is_named_from_its_message(
    message: str, expected: tuple[str | None, str | None]
) -> None:
    error = map_error(_Unique(_Diag(None, None, message_primary=message)))
    assert (error.constraint, error.table) == expected
    assert "_102" not in str(error)


class _Internal(psycopg.errors.InternalError_):
    """An error a Citus coordinator relays from a worker: SQLSTATE XX000, no fields."""

    def __init__(self, message: str):
        super().__init__(message)
        self._diag = _Diag(None, None, message_primary=message)

    @property
    def diag(self) -> Any:
        return self._diag


def test_a_unique_violation_relayed_as_an_internal_error_is_already_exists() -> None:
    error = map_error(
        _Internal('duplicate key value violates unique constraint "usage_event_keys_pkey_102044"')
    )
    assert isinstance(error, AlreadyExists)
    assert error.constraint == "usage_event_keys_pkey"


def test_an_internal_error_of_one_server_stays_a_database_error() -> None:
    error = map_error(_Internal('duplicate key value violates unique constraint "k"'))
    assert type(error).__name__ == "DatabaseError"
