"""Account: the tenant and billing entity."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .users import User

AccountStatus = Literal["active", "suspended", "closed"]


class Account(BaseModel):
    """One row of ``accounts``."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    status: AccountStatus
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class AccountWithOwner(BaseModel):
    """A new account and the owner user created with it."""

    model_config = ConfigDict(frozen=True)

    account: Account
    owner: User
