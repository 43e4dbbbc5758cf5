"""Accounts repository (``sql/accounts.sql``)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from .._paging import Page, PageRequest, update_params
from .._repository_async import AsyncRepository, many, one, scalar
from .._validation import Email, Id, Limit, Name, validated
from ..errors import NotFound
from ..models import Account, AccountStatus, AccountWithOwner
from .api_keys_async import AsyncApiKeyRepository
from .users_async import AsyncUserRepository, DisplayName


class AsyncAccountRepository(AsyncRepository):
    """Accounts: the tenants."""

    aggregate = "accounts"

    _create = one("create_account", Account)
    _get = one("get_account", Account)
    _get_many = many("get_accounts_by_ids", Account)
    _exists = scalar("account_exists", bool)
    _list = many("list_accounts", Account)
    _update = one("update_account", Account)
    _delete = one("delete_account", Account)
    _restore = one("restore_account", Account)

    @validated
    async def create(self, *, name: Name) -> Account:
        """Insert an account named ``name`` and return it.

        Raises ``InvalidInput`` for an empty or over-long name.
        """
        account = await self._create(name=name)
        assert account is not None  # INSERT … RETURNING yields one row
        return account

    @validated
    async def create_with_owner(
        self, *, name: Name, owner_email: Email, owner_display_name: DisplayName = ""
    ) -> AccountWithOwner:
        """Create an account and its owner user together: both or neither.

        Raises ``AlreadyExists`` (constraint ``users_email_key``) when the
        email is taken — then no account is created either — and
        ``InvalidInput`` for a bad argument.
        """
        async with self._atomic() as tx:
            account = await tx.create(name=name)
            owner = await tx._peer(AsyncUserRepository).create(
                account_id=account.id,
                email=owner_email,
                display_name=owner_display_name,
                role="owner",
            )
        return AccountWithOwner(account=account, owner=owner)

    @validated
    async def get(self, *, account_id: Id) -> Account | None:
        """The account with this id (deleted ones included), or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get(id=account_id)

    @validated
    async def require(self, *, account_id: Id) -> Account:
        """The account with this id; raises ``NotFound`` when there is none, ``InvalidInput``
        for a bad id."""
        account = await self.get(account_id=account_id)
        if account is None:
            raise NotFound(f"account {account_id} not found")
        return account

    @validated
    async def exists(self, *, account_id: Id) -> bool:
        """Whether a live (not deleted) account has this id.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return bool(await self._exists(id=account_id))

    @validated
    async def get_many(self, *, account_ids: Sequence[Id]) -> builtins.list[Account]:
        """The accounts whose ids are listed, in id order; unknown ids are skipped.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get_many(ids=list(account_ids))

    @validated
    async def list(self, *, cursor: str | None = None, limit: Limit = 50) -> Page[Account]:
        """A page of live accounts in id order; pass ``next_cursor`` back for the next.

        Raises ``InvalidInput`` (field ``cursor``) for a cursor not from this listing.
        """
        request = PageRequest.of(cursor, limit)
        return request.page(await self._list(**request.params))

    @validated
    async def update(
        self, *, account_id: Id, name: Name | None = None, status: AccountStatus | None = None
    ) -> Account:
        """Change the given fields of a live account (``None`` leaves one unchanged).

        Raises ``NotFound`` for a missing or deleted account, ``InvalidInput``
        when no field is given or a value is bad.
        """
        params = update_params({"name": name, "status": status}, ("name", "status"))
        async with self._changing() as tx:
            account = await tx._update(id=account_id, **params)
            if account is None:
                raise NotFound(f"account {account_id} not found")
            await tx._account_changed(account_id)
        return account

    @validated
    async def delete(self, *, account_id: Id) -> Account:
        """Soft-delete a live account; raises ``NotFound`` if missing or already deleted."""
        async with self._changing() as tx:
            account = await tx._delete(id=account_id)
            if account is None:
                raise NotFound(f"live account {account_id} not found")
            await tx._account_changed(account_id)
        return account

    @validated
    async def restore(self, *, account_id: Id) -> Account:
        """Undo a soft delete; raises ``NotFound`` if the account is missing or not deleted."""
        async with self._changing() as tx:
            account = await tx._restore(id=account_id)
            if account is None:
                raise NotFound(f"deleted account {account_id} not found")
            await tx._account_changed(account_id)
        return account

    async def _account_changed(self, account_id: int) -> None:
        """After commit, drop cached auth contexts: a key authenticates only for a live account."""
        await self._peer(AsyncApiKeyRepository)._invalidate_account(account_id)
