"""Accounts and users repositories against the migrated schema (rolled back per test)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import psycopg
import pytest

from datalayer import (
    Account,
    AlreadyExists,
    CheckViolation,
    Database,
    InvalidInput,
    NotFound,
    ReferenceViolation,
    UnitOfWork,
    User,
)

pytestmark = pytest.mark.both_apis


@pytest.fixture
def account(uow: UnitOfWork) -> Account:
    return uow.accounts.create(name="Acme")


def test_create_returns_the_stored_row_as_a_model(uow: UnitOfWork, account: Account) -> None:
    assert isinstance(account, Account)
    assert account.status == "active"
    assert account.created_at.utcoffset() == UTC.utcoffset(None)
    assert uow.accounts.get(account_id=account.id) == account


def test_get_returns_none_and_require_raises_not_found_for_a_missing_row(
    uow: UnitOfWork,
) -> None:
    assert uow.accounts.get(account_id=2**62) is None
    with pytest.raises(NotFound, match="account"):
        uow.accounts.require(account_id=2**62)
    assert uow.users.get(account_id=2**62, user_id=1) is None


def test_list_parameter_selects_rows_by_any_of_the_ids(uow: UnitOfWork) -> None:
    ids = [uow.accounts.create(name=f"a{i}").id for i in range(3)]
    found = uow.accounts.get_many(account_ids=[ids[2], ids[0], 2**62])
    assert [a.id for a in found] == [ids[0], ids[2]]
    assert uow.accounts.get_many(account_ids=[]) == []


def test_email_lookup_ignores_letter_case(uow: UnitOfWork, account: Account) -> None:
    user = uow.users.create(account_id=account.id, email="Ada.Lovelace@Acme.test")
    assert uow.users.find_by_email(email="ada.lovelace@ACME.TEST") == user
    assert uow.users.find_by_email(email="nobody@acme.test") is None


def test_a_duplicate_email_in_any_case_raises_already_exists_naming_the_constraint(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    uow.users.create(account_id=account.id, email="ada@acme.test")
    other = uow.accounts.create(name="Other")
    with pytest.raises(AlreadyExists) as info, conn.transaction():
        uow.users.create(account_id=other.id, email="ADA@acme.test")
    assert info.value.constraint == "users_email_key"
    assert info.value.sqlstate == "23505"
    assert "users_email_key" in str(info.value)
    assert uow.users.count(account_id=other.id) == 0


def test_a_user_of_a_missing_account_raises_reference_violation(
    conn: psycopg.Connection[Any], uow: UnitOfWork
) -> None:
    with pytest.raises(ReferenceViolation) as info, conn.transaction():
        uow.users.create(account_id=2**62, email="ada@acme.test")
    assert info.value.constraint == "users_account_id_fkey"


def test_the_database_refuses_what_validation_would_let_through(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    # A blank name passes the length check but not the table's CHECK.
    with pytest.raises(CheckViolation) as info, conn.transaction():
        uow.accounts.create(name="   ")
    assert info.value.constraint == "accounts_name_check"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"email": "no-at-sign"}, "email"),
        ({"email": "a@b.test\x00"}, "email"),
        ({"email": "a@b.test", "display_name": "x" * 201}, "display_name"),
        ({"email": "a@b.test", "role": "root"}, "role"),
        ({"email": 42}, "email"),
    ],
)
def test_bad_arguments_raise_invalid_input_naming_the_field_before_any_sql(
    uow: UnitOfWork, account: Account, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        uow.users.create(account_id=account.id, **kwargs)
    assert info.value.field == field
    assert uow.users.count(account_id=account.id) == 0


def test_ids_must_be_positive_integers(uow: UnitOfWork) -> None:
    with pytest.raises(InvalidInput) as info:
        uow.accounts.get(account_id=0)
    assert info.value.field == "account_id"
    with pytest.raises(InvalidInput):
        uow.accounts.get(account_id="1")  # type: ignore[arg-type]


def test_strings_that_look_like_sql_are_stored_verbatim(uow: UnitOfWork, account: Account) -> None:
    name = "Robert'); DROP TABLE users; -- :id %s %(x)s $1"
    user = uow.users.create(account_id=account.id, email="bobby@acme.test", display_name=name)
    assert uow.users.require(account_id=account.id, user_id=user.id).display_name == name


def test_search_treats_like_wildcards_in_the_term_literally(
    uow: UnitOfWork, account: Account
) -> None:
    uow.users.create(account_id=account.id, email="a@acme.test", display_name="50% off")
    uow.users.create(account_id=account.id, email="b@acme.test", display_name="500 off")
    uow.users.create(account_id=account.id, email="c_d@acme.test", display_name="plain")
    assert [u.display_name for u in uow.users.search(account_id=account.id, term="0%")] == [
        "50% off"
    ]
    assert [u.email for u in uow.users.search(account_id=account.id, term="c_d")] == [
        "c_d@acme.test"
    ]


def test_keyset_pages_cover_every_user_once_in_id_order(uow: UnitOfWork, account: Account) -> None:
    created = [
        uow.users.create(account_id=account.id, email=f"u{i}@acme.test").id for i in range(7)
    ]
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = uow.users.list(account_id=account.id, cursor=cursor, limit=3)
        assert len(page.items) <= 3
        seen += [u.id for u in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == created
    assert pages == 3
    assert uow.users.count(account_id=account.id) == 7


def test_a_page_is_stable_when_rows_are_inserted_before_it(
    uow: UnitOfWork, account: Account
) -> None:
    for i in range(4):
        uow.users.create(account_id=account.id, email=f"u{i}@acme.test")
    first = uow.users.list(account_id=account.id, limit=2)
    uow.users.delete(account_id=account.id, user_id=first.items[0].id)
    second = uow.users.list(account_id=account.id, cursor=first.next_cursor, limit=2)
    assert [u.email for u in second.items] == ["u2@acme.test", "u3@acme.test"]


@pytest.mark.parametrize(
    "cursor", ["", "garbage", "eyJ2IjoxfQ", "eyJ2IjoxLCJpZCI6LTEsImQiOiJhc2MifQ"]
)
def test_a_forged_cursor_is_refused_naming_the_cursor(
    uow: UnitOfWork, account: Account, cursor: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        uow.users.list(account_id=account.id, cursor=cursor)
    assert info.value.field == "cursor"


def test_exists_and_count_see_only_live_rows(uow: UnitOfWork, account: Account) -> None:
    user = uow.users.create(account_id=account.id, email="ada@acme.test")
    assert uow.users.exists(account_id=account.id, user_id=user.id)
    assert uow.accounts.exists(account_id=account.id)
    uow.users.delete(account_id=account.id, user_id=user.id)
    assert not uow.users.exists(account_id=account.id, user_id=user.id)
    assert uow.users.count(account_id=account.id) == 0
    assert uow.users.get(account_id=account.id, user_id=user.id) is not None  # still readable


def test_tenant_scoped_reads_never_return_another_accounts_users(
    uow: UnitOfWork, account: Account
) -> None:
    other = uow.accounts.create(name="Other")
    mine = uow.users.create(account_id=account.id, email="mine@acme.test")
    uow.users.create(account_id=other.id, email="theirs@other.test")
    assert uow.users.get(account_id=other.id, user_id=mine.id) is None
    assert [u.id for u in uow.users.list(account_id=account.id).items] == [mine.id]
    assert uow.users.search(account_id=account.id, term="theirs") == []


def test_rename_returns_the_updated_user_or_raises_not_found(
    uow: UnitOfWork, account: Account
) -> None:
    user = uow.users.create(account_id=account.id, email="ada@acme.test")
    renamed = uow.users.rename(account_id=account.id, user_id=user.id, display_name="Ada")
    assert isinstance(renamed, User)
    assert renamed.display_name == "Ada"
    assert renamed.updated_at >= user.updated_at
    with pytest.raises(NotFound):
        uow.users.rename(account_id=account.id, user_id=2**62, display_name="x")


def test_create_with_owner_makes_both_or_neither(
    conn: psycopg.Connection[Any], uow: UnitOfWork
) -> None:
    made = uow.accounts.create_with_owner(name="Acme", owner_email="boss@acme.test")
    assert made.owner.role == "owner"
    assert made.owner.account_id == made.account.id
    before = uow.accounts.list(limit=1000).items
    with pytest.raises(AlreadyExists) as info, conn.transaction():
        uow.accounts.create_with_owner(name="Copycat", owner_email="BOSS@acme.test")
    assert info.value.constraint == "users_email_key"
    assert uow.accounts.list(limit=1000).items == before  # no orphan account


def test_create_with_owner_outside_a_unit_of_work_is_atomic(db: Database) -> None:
    db.accounts.create_with_owner(name="Acme", owner_email="boss@acme.test")
    with pytest.raises(AlreadyExists):
        db.accounts.create_with_owner(name="Copycat", owner_email="boss@acme.test")
    assert [a.name for a in db.accounts.list().items] == ["Acme"]


def test_partial_update_changes_only_the_named_fields(uow: UnitOfWork, account: Account) -> None:
    user = uow.users.create(account_id=account.id, email="ada@acme.test", display_name="Ada")
    updated = uow.users.update(account_id=account.id, user_id=user.id, role="admin")
    assert (updated.role, updated.display_name, updated.email) == ("admin", "Ada", user.email)
    with pytest.raises(InvalidInput) as info:
        uow.users.update(account_id=account.id, user_id=user.id)
    assert info.value.field == "fields"
    renamed = uow.accounts.update(account_id=account.id, name="Acme Corp")
    assert (renamed.name, renamed.status) == ("Acme Corp", account.status)


def test_soft_delete_and_restore_round_trip(uow: UnitOfWork, account: Account) -> None:
    user = uow.users.create(account_id=account.id, email="ada@acme.test")
    deleted = uow.users.delete(account_id=account.id, user_id=user.id)
    assert deleted.deleted_at is not None
    assert uow.users.find_by_email(email="ada@acme.test") is None
    with pytest.raises(NotFound):
        uow.users.delete(account_id=account.id, user_id=user.id)
    restored = uow.users.restore(account_id=account.id, user_id=user.id)
    assert restored.deleted_at is None
    assert uow.users.find_by_email(email="ada@acme.test") == restored
    assert uow.accounts.delete(account_id=account.id).deleted_at is not None
    assert not uow.accounts.exists(account_id=account.id)
    assert uow.accounts.restore(account_id=account.id).deleted_at is None


def reserved_emails(conn: psycopg.Connection[Any]) -> set[tuple[str, int]]:
    """The lookup table user_emails: (lower(email), account_id) of every reserved address."""
    return set(conn.execute("SELECT email, account_id FROM user_emails").fetchall())


def live_emails(conn: psycopg.Connection[Any]) -> set[tuple[str, int]]:
    rows = conn.execute(
        "SELECT lower(email), account_id FROM users WHERE deleted_at IS NULL"
    ).fetchall()
    return set(rows)


def test_the_lookup_table_holds_exactly_the_live_users_emails_through_every_change(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    other = uow.accounts.create(name="Other")
    ada = uow.users.create(account_id=account.id, email="Ada@Acme.test")
    bob = uow.users.create(account_id=other.id, email="bob@other.test")
    both = {("ada@acme.test", account.id), ("bob@other.test", other.id)}
    assert reserved_emails(conn) == live_emails(conn) == both
    uow.users.update(account_id=account.id, user_id=ada.id, email="ada@new.test")
    uow.users.update(account_id=account.id, user_id=ada.id, email="ADA@new.test")  # case only
    uow.users.delete(account_id=other.id, user_id=bob.id)
    assert reserved_emails(conn) == live_emails(conn) == {("ada@new.test", account.id)}
    uow.users.restore(account_id=other.id, user_id=bob.id)
    both = {("ada@new.test", account.id), ("bob@other.test", other.id)}
    assert reserved_emails(conn) == live_emails(conn) == both


def test_an_email_change_frees_the_old_address_and_takes_the_new_one(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    ada = uow.users.create(account_id=account.id, email="ada@acme.test")
    moved = uow.users.update(account_id=account.id, user_id=ada.id, email="Ada@New.test")
    assert moved.email == "Ada@New.test"
    assert uow.users.find_by_email(email="ada@new.test") == moved
    assert uow.users.find_by_email(email="ada@acme.test") is None
    other = uow.accounts.create(name="Other")
    taken = uow.users.create(account_id=other.id, email="ADA@acme.test")  # free again
    assert uow.users.find_by_email(email="ada@acme.test") == taken
    with pytest.raises(AlreadyExists) as info, conn.transaction():
        uow.users.create(account_id=other.id, email="ada@NEW.test")
    assert info.value.constraint == "users_email_key"


def test_an_email_change_to_an_address_in_use_is_refused_and_changes_nothing(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    ada = uow.users.create(account_id=account.id, email="ada@acme.test")
    uow.users.create(account_id=account.id, email="grace@acme.test")
    other = uow.accounts.create(name="Other")
    uow.users.create(account_id=other.id, email="bob@other.test")
    before = reserved_emails(conn)
    for taken in ("Grace@acme.test", "BOB@other.test"):  # same account, another account
        with pytest.raises(AlreadyExists) as info, conn.transaction():
            uow.users.update(account_id=account.id, user_id=ada.id, email=taken)
        assert info.value.constraint == "users_email_key"
    assert reserved_emails(conn) == before
    assert uow.users.require(account_id=account.id, user_id=ada.id) == ada


def test_an_email_change_of_a_missing_or_deleted_user_raises_not_found_and_reserves_nothing(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    ada = uow.users.create(account_id=account.id, email="ada@acme.test")
    uow.users.delete(account_id=account.id, user_id=ada.id)
    for user_id in (ada.id, 2**62):
        with pytest.raises(NotFound), conn.transaction():
            uow.users.update(account_id=account.id, user_id=user_id, email="new@acme.test")
    assert reserved_emails(conn) == set()
    with pytest.raises(NotFound), conn.transaction():
        uow.users.restore(account_id=account.id, user_id=2**62)


def test_a_failed_sign_up_outside_a_unit_of_work_leaves_the_address_free(db: Database) -> None:
    with pytest.raises(ReferenceViolation):
        db.users.create(account_id=2**62, email="ada@acme.test")
    account = db.accounts.create(name="Acme")
    assert db.users.create(account_id=account.id, email="ada@acme.test").account_id == account.id


def test_a_user_soft_deleted_by_raw_sql_keeps_its_address_reserved_until_released(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    """The lookup row left behind finds nobody, and still holds the address (never twice)."""
    ada = uow.users.create(account_id=account.id, email="ada@acme.test")
    conn.execute("UPDATE users SET deleted_at = now() WHERE id = %s", [ada.id])
    assert uow.users.find_by_email(email="ada@acme.test") is None
    other = uow.accounts.create(name="Other")
    with pytest.raises(AlreadyExists), conn.transaction():
        uow.users.create(account_id=other.id, email="ada@acme.test")
    conn.execute("DELETE FROM user_emails WHERE email = 'ada@acme.test'")
    assert uow.users.create(account_id=other.id, email="ada@acme.test").account_id == other.id


def test_restoring_a_user_whose_email_was_taken_meanwhile_is_refused(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    old = uow.users.create(account_id=account.id, email="ada@acme.test")
    uow.users.delete(account_id=account.id, user_id=old.id)
    uow.users.create(account_id=account.id, email="Ada@acme.test")
    with pytest.raises(AlreadyExists) as info, conn.transaction():
        uow.users.restore(account_id=account.id, user_id=old.id)
    assert info.value.constraint == "users_email_key"
