"""Billing: invoices and their lines, payments, and the double-entry ledger."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict

InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]
InvoiceLineKind = Literal["subscription", "usage", "proration", "credit", "adjustment"]
PaymentStatus = Literal["pending", "succeeded", "failed", "refunded"]
LedgerAccount = Literal["receivable", "revenue", "cash", "customer_credit", "tax", "bad_debt"]
LedgerKind = Literal[
    "invoice_finalized", "payment", "invoice_voided", "credit", "refund", "write_off", "adjustment"
]


class InvoiceLine(BaseModel):
    """One line of an invoice, in minor units of the invoice's currency.

    ``amount_minor`` is ``quantity * unit_amount_minor`` rounded half-up once,
    for this line. Kinds: ``subscription`` (the plan's base fee), ``usage``
    (overage of one meter above its included quantity), ``proration`` (a
    mid-period plan change: a negative credit line and a charge line),
    ``adjustment`` (credit beyond the invoice's charges, carried to the
    account's credit balance so the total is never negative).
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    invoice_id: int
    kind: InvoiceLineKind
    description: str
    meter_code: str | None
    quantity: Decimal
    unit_amount_minor: Decimal
    amount_minor: int
    period_start: datetime | None
    period_end: datetime | None


class Invoice(BaseModel):
    """One row of ``invoices``: ``draft → open → paid | void | uncollectible``.

    ``number`` (``YYYY-NNNNNN``, gap-free per year) and ``finalized_at`` are
    set when the draft is finalised. ``total_minor = subtotal_minor +
    tax_minor`` and is never negative; ``amount_paid_minor`` sums the payments
    recorded against it.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    subscription_id: int | None
    number: str | None
    status: InvoiceStatus
    currency: str
    period_start: datetime
    period_end: datetime
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    amount_paid_minor: int
    finalized_at: datetime | None
    due_at: datetime | None
    paid_at: datetime | None
    voided_at: datetime | None
    created_at: datetime
    updated_at: datetime


class InvoiceWithLines(Invoice):
    """An invoice and its lines, in the order they were written."""

    lines: list[InvoiceLine]


class Payment(BaseModel):
    """One row of ``payments``: money a provider collected, unique per provider payment id."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    invoice_id: int | None
    provider: str
    provider_payment_id: str
    amount_minor: int
    currency: str
    status: PaymentStatus
    created_at: datetime
    succeeded_at: datetime | None


class RecordedPayment(BaseModel):
    """The result of ``BillingRepository.record_payment``.

    ``duplicate`` is true when the provider's payment was already recorded:
    ``payment`` is then the first record, and nothing new was written.
    ``invoice`` is the invoice as it stands after the payment.
    """

    model_config = ConfigDict(frozen=True)

    payment: Payment
    invoice: Invoice
    duplicate: bool


class LedgerEntry(BaseModel):
    """A debit (positive) or credit (negative) of one ledger account, in minor units."""

    model_config = ConfigDict(frozen=True)

    id: int
    ledger_account: LedgerAccount
    amount_minor: int
    currency: str


class LedgerTransaction(BaseModel):
    """A financial event and its entries, which sum to zero per currency (checked at commit).

    ``idempotency_key`` is deterministic per event (``invoice:42:finalized``,
    ``payment:7``), so an event is never booked twice. A transaction whose
    amounts are all zero (a zero-total invoice) has no entries.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    kind: LedgerKind
    idempotency_key: str
    invoice_id: int | None
    payment_id: int | None
    description: str
    occurred_at: datetime
    entries: list[LedgerEntry]


class Balance(BaseModel):
    """An account's ledger in one currency, in minor units.

    ``receivable_minor``: what the customer owes on open invoices (positive =
    the customer owes). ``credit_minor``: what the account holds as credit
    (positive = owed to the customer: credit beyond an invoice's charges,
    overpayments, payments of a voided invoice). ``collected_minor``: cash
    received. ``revenue_minor``: revenue recognised, net of voids.
    ``written_off_minor``: receivables written off as uncollectible. Always
    ``receivable + collected + written_off = revenue + credit``.
    """

    model_config = ConfigDict(frozen=True)

    currency: str
    receivable_minor: int
    credit_minor: int
    collected_minor: int
    revenue_minor: int
    written_off_minor: int


class MonthlyRevenue(BaseModel):
    """One month (UTC) and currency of the revenue report, across every account.

    ``invoices_finalized`` and ``invoiced_minor`` count invoices by the month
    they were finalised (a later void does not remove them);
    ``revenue_minor`` is revenue recognised in the ledger that month (a void
    is negative revenue in its own month); ``payments`` and
    ``payments_received_minor`` are payments booked that month.
    """

    model_config = ConfigDict(frozen=True)

    month: date
    currency: str
    invoices_finalized: int
    invoiced_minor: int
    revenue_minor: int
    payments: int
    payments_received_minor: int
