"""Typed rows: one pydantic model per entity, grouped by aggregate."""

from .accounts import Account, AccountStatus, AccountWithOwner
from .api_keys import ApiKey, ApiKeyEnvironment, AuthContext, IssuedKey
from .billing import (
    Balance,
    Invoice,
    InvoiceLine,
    InvoiceLineKind,
    InvoiceStatus,
    InvoiceWithLines,
    LedgerAccount,
    LedgerEntry,
    LedgerKind,
    LedgerTransaction,
    MonthlyRevenue,
    Payment,
    PaymentStatus,
    RecordedPayment,
)
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
from .quotas import QuotaCounter, QuotaDecision, QuotaStatus, Reservation
from .subscriptions import Proration, Subscription, SubscriptionStatus, Upgrade
from .usage import BatchResult, RecordResult, Rejection, UsageEvent, UsageEventIn
from .usage_reports import MeterTotal
from .users import User, UserRole

__all__ = [
    "Account",
    "AccountStatus",
    "AccountWithOwner",
    "ApiKey",
    "ApiKeyEnvironment",
    "AuthContext",
    "Balance",
    "BatchResult",
    "BillingInterval",
    "File",
    "FileStatus",
    "Invoice",
    "InvoiceLine",
    "InvoiceLineKind",
    "InvoiceStatus",
    "InvoiceWithLines",
    "IssuedKey",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerKind",
    "LedgerTransaction",
    "LimitKind",
    "MeterTotal",
    "MonthlyRevenue",
    "Payment",
    "PaymentStatus",
    "Plan",
    "PlanMeter",
    "PlanMeterSpec",
    "PlanStatus",
    "PlanWithMeters",
    "Proration",
    "QuotaCounter",
    "QuotaDecision",
    "QuotaStatus",
    "RecordResult",
    "RecordedPayment",
    "Rejection",
    "Reservation",
    "Subscription",
    "SubscriptionStatus",
    "Upgrade",
    "UsageEvent",
    "UsageEventIn",
    "User",
    "UserRole",
]
