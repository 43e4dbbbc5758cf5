"""Accounts repository (``sql/accounts.sql``)."""

from __future__ import annotations

from collections.abc import Sequence

from .._repository import Repository, many, one
from .._validation import Id, Name, validated
from ..errors import NotFound
from ..models import Account


class AccountRepository(Repository):
    """Accounts: the tenants."""

    aggregate = "accounts"

    _create = one("create_account", Account)
    _get = one("get_account", Account)
    _get_many = many("get_accounts_by_ids", Account)

    @validated
    def create(self, *, name: Name) -> Account:
        """Insert an account named ``name`` and return it.

        Raises ``InvalidInput`` for an empty or over-long name.
        """
        account = self._create(name=name)
        assert account is not None  # INSERT … RETURNING yields one row
        return account

    @validated
    def get(self, *, account_id: Id) -> Account | None:
        """The account with this id (deleted ones included), or ``None``."""
        return self._get(id=account_id)

    def require(self, *, account_id: int) -> Account:
        """The account with this id; raises ``NotFound`` when there is none."""
        account = self.get(account_id=account_id)
        if account is None:
            raise NotFound(f"account {account_id} not found")
        return account

    @validated
    def get_many(self, *, account_ids: Sequence[Id]) -> list[Account]:
        """The accounts whose ids are listed, in id order; unknown ids are skipped."""
        return self._get_many(ids=list(account_ids))
