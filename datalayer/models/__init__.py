"""Typed rows: one pydantic model per entity, grouped by aggregate."""

from .accounts import Account, AccountStatus, AccountWithOwner
from .users import User, UserRole

__all__ = ["Account", "AccountStatus", "AccountWithOwner", "User", "UserRole"]
