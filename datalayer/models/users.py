"""User: a person who signs in, belonging to one account."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

UserRole = Literal["owner", "admin", "member"]


class User(BaseModel):
    """One row of ``users``."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    email: str
    display_name: str
    role: UserRole
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
