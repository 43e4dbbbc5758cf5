"""API keys: a stored key (never its secret), a newly issued key, what a secret proves."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr

ApiKeyEnvironment = Literal["live", "test"]


class ApiKey(BaseModel):
    """One row of ``api_keys`` without its secret hash: what an account may see of a key."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    name: str
    display_prefix: str
    environment: ApiKeyEnvironment
    scopes: tuple[str, ...]
    created_by: int | None
    rotated_from_id: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class IssuedKey(BaseModel):
    """A key just issued or rotated, with its secret: the only time the secret exists.

    ``secret`` is a ``SecretStr`` so that it never shows in ``repr()`` or logs;
    read it with ``secret.get_secret_value()``, hand it to its owner, and drop it.
    """

    model_config = ConfigDict(frozen=True)

    key: ApiKey
    secret: SecretStr


class AuthContext(BaseModel):
    """What a valid secret proves: the key, its account, scopes, environment and expiry."""

    model_config = ConfigDict(frozen=True)

    key_id: int
    account_id: int
    environment: ApiKeyEnvironment
    scopes: tuple[str, ...]
    expires_at: datetime | None
