"""Billing: invoices and their lines, payments, and the double-entry ledger."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict

InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]
InvoiceLineKind = Literal["subscription", "usage", "proration", "credit", "adjustment"]
PaymentStatus = Literal["pending", "succeeded", "failed", "refunded"]
LedgerAccount = Literal[
    "receivable", "revenue", "cash", "customer_credit", "tax", "bad_debt", "refunds_payable"
]
LedgerKind = Literal[
    "invoice_finalized",
    "payment",
    "invoice_voided",
    "credit",
    "refund",
    "write_off",
    "adjustment",
    "credit_note",
]
RefundStatus = Literal["pending", "succeeded"]
CreditSource = Literal["overpayment", "credit_note", "carryover", "void", "migrated"]


class InvoiceLine(BaseModel):
    """One line of an invoice, in minor units of the invoice's currency.

    Kinds: ``subscription`` (the base fee of the period's plan, without the
    time of a trial), ``usage`` (one meter of the period: ``metered_quantity``
    is the accepted quantity it counts, ``quantity`` what lies above the
    included quantity, billed at ``unit_amount_minor`` and rounded half-up
    once), ``proration`` (a pending item of a mid-period plan change:
    ``pending_item_id``), ``adjustment`` (a change of an earlier period's
    accepted usage after it was billed, naming that period and meter, with
    the quantity and amount of the change; or, without a meter, credit
    beyond the invoice's charges carried to the account's credit balance so
    the total is never negative). ``billing_period_id`` names the period a
    line bills.
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
    billing_period_id: int | None
    metered_quantity: Decimal | None
    pending_item_id: int | None


class Invoice(BaseModel):
    """One row of ``invoices``: ``draft → open → paid | void | uncollectible``.

    An invoice bills one period of a subscription chain (``billing_period_id``)
    or, standalone (``None``), late adjustments of a chain that has ended.
    ``number`` (``YYYY-NNNNNN``, gap-free per year) and ``finalized_at`` are
    set when the draft is finalised. ``total_minor = subtotal_minor +
    tax_minor`` (the charges) and is never negative. What the customer owes:
    ``amount_due_minor = total_minor - credit_applied_minor`` (customer credit
    applied at finalisation, oldest first) ``-`` the part of credit notes
    that reduced it ``- amount_paid_minor`` (what payments settled).
    ``credited_minor`` sums its credit notes, never above the total.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    subscription_id: int | None
    chain_id: int | None
    billing_period_id: int | None
    number: str | None
    status: InvoiceStatus
    currency: str
    period_start: datetime
    period_end: datetime
    subtotal_minor: int
    tax_minor: int
    total_minor: int
    credit_applied_minor: int
    credited_minor: int
    amount_paid_minor: int
    amount_due_minor: int
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
    """One row of ``payments``: money a provider collected, unique per provider payment id.

    ``applied_minor`` is what it settled of its invoice (the rest of
    ``amount_minor`` became customer credit); ``refunded_minor`` what credit
    notes gave back of it. Refunded in full, its status is ``refunded``.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    invoice_id: int | None
    provider: str
    provider_payment_id: str
    amount_minor: int
    currency: str
    status: PaymentStatus
    applied_minor: int
    refunded_minor: int
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
    ``written_off_minor``: receivables written off as uncollectible.
    ``refunds_pending_minor``: refunds given by credit notes that the
    provider has not reported paid out yet. Always ``receivable + collected +
    written_off = revenue + credit + refunds_pending``.
    """

    model_config = ConfigDict(frozen=True)

    currency: str
    receivable_minor: int
    credit_minor: int
    collected_minor: int
    revenue_minor: int
    written_off_minor: int
    refunds_pending_minor: int


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


class BillingPeriod(BaseModel):
    """One period of a subscription chain and what bills it.

    The base fee of ``base_plan_id`` (the plan the period opened with) is
    billed for ``[period_start, period_end)``, less the time before
    ``trial_end``; usage accepted in ``[period_start, closes_at)`` is priced by
    ``pricing_plan_id`` (the plan in force when it closed). ``closes_at`` is
    ``period_end``, or the instant the chain was canceled inside the period.
    ``invoice_id`` is the period's invoice once made; ``checked_at`` when an
    issued invoice last billed its usage; ``settled`` once that was long
    enough after its close that its usage cannot change (late usage and
    cancellations are adjusted until then). ``legacy`` periods were invoiced
    before billing periods existed; they are settled.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    chain_id: int
    subscription_id: int
    base_plan_id: int
    pricing_plan_id: int
    period_start: datetime
    period_end: datetime
    closes_at: datetime
    trial_end: datetime | None
    invoice_id: int | None
    legacy: bool
    checked_at: datetime | None
    settled: bool


class PendingItem(BaseModel):
    """Money of a mid-period change, waiting for the next invoice of its chain.

    Written in the change's transaction (an upgrade writes the old plan's
    unused time as a negative item and the new plan's remaining time as a
    positive one), with amounts computed in the database from stored prices.
    ``invoice_id`` is set when an invoice bills it; each item is billed once.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    chain_id: int
    subscription_id: int
    kind: Literal["proration"]
    description: str
    amount_minor: int
    currency: str
    service_start: datetime
    service_end: datetime
    invoice_id: int | None
    created_at: datetime


class CreditGrant(BaseModel):
    """Credit owed to the customer; applied to invoices at finalisation, oldest first."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    currency: str
    amount_minor: int
    remaining_minor: int
    source: CreditSource
    invoice_id: int | None
    payment_id: int | None
    credit_note_id: int | None
    created_at: datetime


class CreditNote(BaseModel):
    """Money given back on an invoice: ``pre_minor`` less to pay, ``post_minor`` of what was paid.

    ``post_minor`` is refunded (``refund``: pending refunds until the
    provider reports them) or becomes customer credit.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    invoice_id: int
    amount_minor: int
    pre_minor: int
    post_minor: int
    refund: bool
    reason: str
    idempotency_key: str
    created_at: datetime


class Refund(BaseModel):
    """Money to pay back to the customer through the provider of ``payment_id``.

    ``pending`` until the application reports the provider's refund id
    (``BillingRepository.record_refund``), then ``succeeded``.
    """

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    invoice_id: int
    credit_note_id: int
    payment_id: int
    amount_minor: int
    currency: str
    status: RefundStatus
    provider: str
    provider_refund_id: str | None
    created_at: datetime
    succeeded_at: datetime | None


class RecordedRefund(BaseModel):
    """The result of ``BillingRepository.record_refund``: ``duplicate`` when reported before."""

    model_config = ConfigDict(frozen=True)

    refund: Refund
    duplicate: bool


class IssuedCreditNote(BaseModel):
    """The result of ``BillingRepository.issue_credit_note``.

    ``duplicate`` is true when the idempotency key was used before: the
    first credit note is returned and nothing new is written.
    """

    model_config = ConfigDict(frozen=True)

    credit_note: CreditNote
    invoice: Invoice
    refunds: list[Refund]
    duplicate: bool


class BillingRunResult(BaseModel):
    """What one ``BillingRepository.run`` did, by action.

    ``renewed``: subscriptions renewed, canceled or switched at their period
    end. ``generated``: invoices made for closed periods. ``refreshed``: drafts
    made again in their grace period. ``finalized``: drafts issued.
    ``adjustment_invoices``: standalone invoices of late usage of ended
    chains. ``credit_applied_minor``: customer credit applied, summed over
    currencies. ``failed``: work items that raised (logged; retried by the
    next run). ``stopped``: the run ended early because ``stop`` asked it to
    (after a whole batch; the next run does the rest).
    """

    model_config = ConfigDict(frozen=True)

    renewed: int
    generated: int
    refreshed: int
    finalized: int
    adjustment_invoices: int
    credit_applied_minor: int
    failed: int
    stopped: bool = False
