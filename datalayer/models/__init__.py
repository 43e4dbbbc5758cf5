"""Typed rows: one pydantic model per entity, grouped by aggregate."""

from .accounts import Account, AccountStatus, AccountWithOwner
from .api_keys import ApiKey, ApiKeyEnvironment, AuthContext, IssuedKey
from .files import File, FileStatus
from .plans import (
    BillingInterval,
    LimitKind,
    Plan,
    PlanMeter,
    PlanMeterSpec,
    PlanStatus,
    PlanWithMeters,
)
from .subscriptions import Proration, Subscription, SubscriptionStatus, Upgrade
from .usage import BatchResult, RecordResult, Rejection, UsageEvent, UsageEventIn
from .users import User, UserRole

__all__ = [
    "Account",
    "AccountStatus",
    "AccountWithOwner",
    "ApiKey",
    "ApiKeyEnvironment",
    "AuthContext",
    "BatchResult",
    "BillingInterval",
    "File",
    "FileStatus",
    "IssuedKey",
    "LimitKind",
    "Plan",
    "PlanMeter",
    "PlanMeterSpec",
    "PlanStatus",
    "PlanWithMeters",
    "Proration",
    "RecordResult",
    "Rejection",
    "Subscription",
    "SubscriptionStatus",
    "Upgrade",
    "UsageEvent",
    "UsageEventIn",
    "User",
    "UserRole",
]
