"""Users repository (``sql/users.sql``)."""

from __future__ import annotations

import builtins
from typing import Annotated

from pydantic import Field

from .._paging import Page, PageRequest, update_params
from .._repository_async import AsyncRepository, execrows, execute, many, one, scalar
from .._validation import Email, Id, Limit, Text, escape_like, validated
from ..errors import NotFound
from ..models import User, UserRole

DisplayName = Annotated[Text, Field(max_length=200)]


class AsyncUserRepository(AsyncRepository):
    """Users of an account. Every method is scoped by ``account_id`` except login lookup.

    A live user's email (lower-cased) is reserved for its account in the lookup
    table ``user_emails``, whose primary key ``users_email_key`` keeps emails
    unique across accounts; every method that gives a user an address reserves
    it first and every one that takes it away releases it, in one transaction
    (``migrations/0019_global_lookups.sql``).
    """

    aggregate = "users"

    _create = one("create_user", User)
    _get = one("get_user", User)
    _lock = one("lock_user", User)
    _email_account = scalar("find_user_email_account", int)
    _by_email = one("find_user_by_email", User)
    _reserve = execute("reserve_user_email")
    _release = execrows("release_user_email")
    _list = many("list_users", User)
    _exists = scalar("user_exists", bool)
    _count = scalar("count_users", int)
    _search = many("search_users", User)
    _update = one("update_user", User)
    _delete = one("delete_user", User)
    _restore = one("restore_user", User)

    @validated
    async def create(
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
        async with self._atomic() as tx:
            await tx._reserve(email=email, account_id=account_id, current_email=None)
            user = await tx._create(
                account_id=account_id, email=email, display_name=display_name, role=role
            )
        assert user is not None  # INSERT … RETURNING yields one row
        return user

    @validated
    async def get(self, *, account_id: Id, user_id: Id) -> User | None:
        """The account's user with this id (deleted ones included), or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get(account_id=account_id, id=user_id)

    @validated
    async def require(self, *, account_id: Id, user_id: Id) -> User:
        """Like ``get``, but raises ``NotFound`` instead of returning ``None``."""
        user = await self.get(account_id=account_id, user_id=user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found in account {account_id}")
        return user

    @validated
    async def find_by_email(self, *, email: Email) -> User | None:
        """The live user with this email in any account, case-insensitively, or ``None``.

        Two reads: the account that holds the address (``user_emails``), then
        the user in that account (one shard on a cluster). Outside a unit of
        work each is its own statement: an address that moves to another
        account between the two reads is not found by this call. Raises
        ``InvalidInput`` for a bad argument, before any SQL.
        """
        account_id = await self._email_account(email=email)
        if account_id is None:
            return None
        return await self._by_email(account_id=account_id, email=email)

    @validated
    async def list(
        self, *, account_id: Id, cursor: str | None = None, limit: Limit = 50
    ) -> Page[User]:
        """A page of the account's live users in id order; pass ``next_cursor`` for the next.

        Raises ``InvalidInput`` (field ``cursor``) for a cursor not from this listing.
        """
        request = PageRequest.of(cursor, limit)
        return request.page(await self._list(**request.params, account_id=account_id))

    @validated
    async def exists(self, *, account_id: Id, user_id: Id) -> bool:
        """Whether the account has a live user with this id.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return bool(await self._exists(account_id=account_id, id=user_id))

    @validated
    async def count(self, *, account_id: Id) -> int:
        """How many live users the account has.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._count(account_id=account_id) or 0

    @validated
    async def search(self, *, account_id: Id, term: Text, limit: Limit = 50) -> builtins.list[User]:
        """Live users whose email or display name contains ``term`` (wildcards literal).

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._search(account_id=account_id, term=escape_like(term), limit=limit)

    @validated
    async def update(
        self,
        *,
        account_id: Id,
        user_id: Id,
        display_name: DisplayName | None = None,
        role: UserRole | None = None,
        email: Email | None = None,
    ) -> User:
        """Change the given profile fields of a live user (``None`` leaves one unchanged).

        Raises ``NotFound`` when there is no such live user in the account,
        ``AlreadyExists`` (``users_email_key``) for an email another live user
        has, ``InvalidInput`` when no field is given or a value is bad.
        """
        fields = {"display_name": display_name, "role": role, "email": email}
        params = update_params(fields, ("display_name", "role", "email"))
        if email is None:
            user = await self._update(account_id=account_id, id=user_id, **params)
        else:
            async with self._atomic() as tx:
                current = await tx._lock(account_id=account_id, id=user_id)
                if current is None or current.deleted_at is not None:
                    raise NotFound(f"user {user_id} not found in account {account_id}")
                await tx._reserve(email=email, account_id=account_id, current_email=current.email)
                user = await tx._update(account_id=account_id, id=user_id, **params)
                await tx._release(email=current.email, account_id=account_id, new_email=email)
        if user is None:
            raise NotFound(f"user {user_id} not found in account {account_id}")
        return user

    @validated
    async def rename(self, *, account_id: Id, user_id: Id, display_name: DisplayName) -> User:
        """Set a live user's display name: ``update`` with one field; raises as ``update``."""
        return await self.update(account_id=account_id, user_id=user_id, display_name=display_name)

    @validated
    async def delete(self, *, account_id: Id, user_id: Id) -> User:
        """Soft-delete a live user, freeing the email; ``NotFound`` if missing or deleted.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        async with self._atomic() as tx:
            user = await tx._delete(account_id=account_id, id=user_id)
            if user is None:
                raise NotFound(f"live user {user_id} not found in account {account_id}")
            await tx._release(email=user.email, account_id=account_id, new_email=None)
        return user

    @validated
    async def restore(self, *, account_id: Id, user_id: Id) -> User:
        """Undo a soft delete.

        Raises ``NotFound`` if the user is missing or not deleted, and
        ``AlreadyExists`` (``users_email_key``) if a live user took the email
        in the meantime.
        """
        async with self._atomic() as tx:
            current = await tx._lock(account_id=account_id, id=user_id)
            if current is None or current.deleted_at is None:
                raise NotFound(f"deleted user {user_id} not found in account {account_id}")
            await tx._reserve(email=current.email, account_id=account_id, current_email=None)
            user = await tx._restore(account_id=account_id, id=user_id)
        if user is None:  # cannot happen while the lock is held; never assume silently
            raise NotFound(f"deleted user {user_id} not found in account {account_id}")
        return user
