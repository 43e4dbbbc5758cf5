"""Users repository (``sql/users.sql``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .._repository import Repository, many, one, scalar
from .._validation import Email, Id, Limit, Text, escape_like, validated
from ..errors import NotFound
from ..models import User, UserRole

DisplayName = Annotated[Text, Field(max_length=200)]


class UserRepository(Repository):
    """Users of an account. Every method is scoped by ``account_id`` except login lookup."""

    aggregate = "users"

    _create = one("create_user", User)
    _get = one("get_user", User)
    _by_email = one("find_user_by_email", User)
    _list = many("list_users", User)
    _count = scalar("count_users", int)
    _search = many("search_users", User)
    _rename = one("update_user_display_name", User)

    @validated
    def create(
        self,
        *,
        account_id: Id,
        email: Email,
        display_name: DisplayName = "",
        role: UserRole = "member",
    ) -> User:
        """Add a user to an account and return it.

        Raises ``AlreadyExists`` (constraint ``users_email_key``) when a live
        user already has this email in any letter case, ``ReferenceViolation``
        when the account does not exist, ``InvalidInput`` for a bad argument.
        """
        user = self._create(
            account_id=account_id, email=email, display_name=display_name, role=role
        )
        assert user is not None  # INSERT … RETURNING yields one row
        return user

    @validated
    def get(self, *, account_id: Id, user_id: Id) -> User | None:
        """The account's user with this id (deleted ones included), or ``None``."""
        return self._get(account_id=account_id, id=user_id)

    def require(self, *, account_id: int, user_id: int) -> User:
        """Like ``get``, but raises ``NotFound`` instead of returning ``None``."""
        user = self.get(account_id=account_id, user_id=user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found in account {account_id}")
        return user

    @validated
    def find_by_email(self, *, email: Email) -> User | None:
        """The live user with this email in any account, case-insensitively, or ``None``."""
        return self._by_email(email=email)

    @validated
    def page(self, *, account_id: Id, after_id: int = 0, limit: Limit = 50) -> list[User]:
        """A page of the account's live users in id order, starting after ``after_id``."""
        return self._list(account_id=account_id, after_id=after_id, limit=limit)

    @validated
    def count(self, *, account_id: Id) -> int:
        """How many live users the account has."""
        return self._count(account_id=account_id) or 0

    @validated
    def search(self, *, account_id: Id, term: Text, limit: Limit = 50) -> list[User]:
        """Live users whose email or display name contains ``term`` (wildcards literal)."""
        return self._search(account_id=account_id, term=escape_like(term), limit=limit)

    @validated
    def rename(self, *, account_id: Id, user_id: Id, display_name: DisplayName) -> User:
        """Set a live user's display name; raises ``NotFound`` when there is no such user."""
        user = self._rename(account_id=account_id, id=user_id, display_name=display_name)
        if user is None:
            raise NotFound(f"user {user_id} not found in account {account_id}")
        return user
