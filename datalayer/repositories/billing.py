"""Billing repository (``sql/billing.sql``): invoices, payments and the double-entry ledger."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, NoReturn

from pydantic import AfterValidator, Field

from .._billing import (
    Postings,
    check_prorations,
    finalized_postings,
    invoice_lines,
    payment_postings,
    voided_postings,
    write_off_postings,
)
from .._paging import Page, PageRequest
from .._repository import Repository, many, one
from .._validation import Id, Instant, Limit, no_nul, validated
from ..errors import AlreadyExists, ConcurrencyConflict, InvalidInput, InvalidTransition, NotFound
from ..models.billing import (
    Balance,
    Invoice,
    InvoiceLine,
    InvoiceWithLines,
    LedgerKind,
    LedgerTransaction,
    MonthlyRevenue,
    Payment,
    RecordedPayment,
)
from ..models.subscriptions import Proration
from .plans import PlanRepository
from .subscriptions import SubscriptionRepository
from .usage_reports import UsageReportRepository

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Provider = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ProviderPaymentId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(no_nul)]
PositiveMinor = Annotated[int, Field(ge=1, le=2**63 - 1)]
DueIn = Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=365))]
Month = Annotated[date, Field(ge=date(2000, 1, 1), le=date(9998, 12, 31))]


class BillingRepository(Repository):
    """Billing: invoices, payments and the double-entry ledger; every method is scoped by account.

    Money is integer minor units of the invoice's currency; fractional
    quantities and unit prices are ``Decimal`` and each line is rounded
    half-up once. Times default to the database's clock (the transaction's
    start); pass ``now`` (timezone-aware) for another clock, as a test clock
    does. An invoice of another account is treated as missing. Every
    financial event books one ledger transaction in the same transaction as
    the change it records.
    """

    aggregate = "billing"

    _insert_invoice = one("insert_invoice", Invoice)
    _by_period = one("get_invoice_by_period", Invoice)
    _insert_lines = many("insert_invoice_lines", InvoiceLine)
    _get = one("get_invoice", Invoice)
    _lock = one("lock_invoice", Invoice)
    _lines = many("list_invoice_lines", InvoiceLine)
    _list = many("list_invoices", Invoice)
    _finalize = one("finalize_invoice", Invoice)
    _void = one("void_invoice", Invoice)
    _uncollectible = one("mark_invoice_uncollectible", Invoice)
    _payment_by_key = one("get_payment_by_provider_id", Payment)
    _insert_payment = one("insert_payment", Payment)
    _apply_payment = one("apply_payment", Invoice)
    _payments = many("list_invoice_payments", Payment)
    _book = one("insert_ledger_transaction", LedgerTransaction)
    _transactions = many("list_ledger_transactions", LedgerTransaction)
    _balances = many("get_balances", Balance)
    _monthly = many("get_monthly_revenue", MonthlyRevenue)

    # --- invoices ----------------------------------------------------------------------------

    @validated
    def generate_invoice(
        self,
        *,
        account_id: Id,
        subscription_id: Id,
        period_start: Instant,
        period_end: Instant,
        prorations: list[Proration] | None = None,
    ) -> InvoiceWithLines:
        """The draft invoice of a subscription for ``[period_start, period_end)``, made once.

        Lines, in this order: the base fee of the subscription's plan
        (``subscription``); for each plan meter used above its included
        quantity, ``(used - included) * overage_unit_price_minor`` rounded
        half-up (``usage``; usage from ``usage_reports.period_totals``, so
        generate after the period has ended; meters outside the plan are not
        billed); for each given ``Proration`` (from ``upgrade_now``, which
        stores nothing) a credit line for the old plan's unused time
        (negative) and a charge line for the new plan's (``proration``).
        Totals are the sum of the lines, tax 0. When credits exceed the
        charges, an ``adjustment`` line brings the total to zero and
        finalisation credits that amount to the account's credit balance
        (``balance().credit_minor``); nothing is lost and the total is
        never negative.

        Idempotent: the subscription's invoice for a period start is made
        once (``invoices_subscription_period_key``). Calling again — also
        from another process at the same moment — returns the invoice the
        first call made, in whatever status it now is; the lines are
        written only by the call that created it, so ``prorations`` given
        to a later call are ignored.

        Raises ``NotFound`` (no such subscription in the account),
        ``InvalidInput`` (naive datetimes, an empty period, a proration of
        another account, subscription or currency, or given twice),
        ``AlreadyExists`` (constraint ``invoices_subscription_period_key``)
        when the period's invoice exists with another ``period_end``.
        Nothing is written when it raises.
        """
        if period_end <= period_start:
            raise InvalidInput("must be after period_start", field="period_end")
        given = prorations or []
        check_prorations(given, account_id=account_id, subscription_id=subscription_id)
        with self._atomic() as repo:
            subscription = repo._peer(SubscriptionRepository).require(
                account_id=account_id, subscription_id=subscription_id
            )
            plans = repo._peer(PlanRepository)
            plan = plans.require(plan_id=subscription.plan_id)
            for proration in given:
                if proration.currency != plan.currency:
                    raise InvalidInput(
                        f"a proration in {proration.currency} cannot go on an invoice in "
                        f"{plan.currency}",
                        field="prorations",
                    )
            usage = repo._peer(UsageReportRepository).period_totals(
                account_id=account_id, period_start=period_start, period_end=period_end
            )
            names = {
                plan_id: plans.require(plan_id=plan_id).name
                for p in given
                for plan_id in (p.old_plan_id, p.new_plan_id)
            }
            lines = invoice_lines(plan, usage, given, names, period_start, period_end)
            subtotal = sum(line.amount_minor for line in lines)
            invoice = repo._insert_invoice(
                account_id=account_id,
                subscription_id=subscription_id,
                currency=plan.currency,
                period_start=period_start,
                period_end=period_end,
                subtotal_minor=subtotal,
                total_minor=subtotal,
            )
            if invoice is None:
                return repo._existing(account_id, subscription_id, period_start, period_end)
            rows = repo._insert_lines(
                account_id=account_id,
                invoice_id=invoice.id,
                kinds=[line.kind for line in lines],
                descriptions=[line.description for line in lines],
                meter_codes=[line.meter_code for line in lines],
                quantities=[line.quantity for line in lines],
                unit_amounts_minor=[
                    Decimal(line.amount_minor)
                    if line.unit_amount_minor is None
                    else line.unit_amount_minor
                    for line in lines
                ],
                amounts_minor=[line.amount_minor for line in lines],
                period_starts=[line.period_start for line in lines],
                period_ends=[line.period_end for line in lines],
            )
        return InvoiceWithLines(**invoice.model_dump(), lines=rows)

    @validated
    def get_invoice(self, *, account_id: Id, invoice_id: Id) -> InvoiceWithLines | None:
        """The account's invoice with this id and its lines, in any status, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        invoice = self._get(account_id=account_id, id=invoice_id)
        if invoice is None:
            return None
        lines = self._lines(account_id=account_id, invoice_id=invoice_id)
        return InvoiceWithLines(**invoice.model_dump(), lines=lines)

    @validated
    def invoices(
        self, *, account_id: Id, cursor: str | None = None, limit: Limit = 50
    ) -> Page[Invoice]:
        """A page of the account's invoices (without lines) in every status, newest first.

        Pass ``next_cursor`` back for the next page. Raises ``InvalidInput``
        (field ``cursor``) for a cursor this listing did not make.
        """
        request = PageRequest.of(cursor, limit, "desc")
        return request.page(self._list(**request.params, account_id=account_id))

    @validated
    def finalize(
        self,
        *,
        account_id: Id,
        invoice_id: Id,
        due_in: DueIn = timedelta(days=30),
        now: Instant | None = None,
    ) -> Invoice:
        """Issue a draft: open, numbered ``YYYY-NNNNNN``, due ``due_in`` after ``now``.

        The number comes from the counter of ``now``'s year (UTC), bumped in
        this transaction: numbers are unique and gap-free — a finalisation
        rolled back (also by an enclosing unit of work) gives its number
        back, and concurrent finalisations wait for each other on the
        counter row until they commit. The ledger transaction
        ``invoice_finalized`` (key ``invoice:<id>:finalized``) debits
        ``receivable`` and credits ``revenue`` with the total (credit carried
        beyond the charges goes to ``customer_credit``). An invoice whose
        total is zero is ``paid`` at once, as nothing is due.

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not a draft),
        ``InvalidInput`` for a bad argument. Nothing changes when it raises.
        """
        with self._atomic() as repo:
            invoice = repo._finalize(account_id=account_id, id=invoice_id, due_in=due_in, now=now)
            if invoice is None:
                repo._refuse(account_id, invoice_id, expected=("draft",), action="finalised")
            lines = repo._lines(account_id=account_id, invoice_id=invoice_id)
            repo._post(
                invoice,
                kind="invoice_finalized",
                key=f"invoice:{invoice.id}:finalized",
                description=f"Invoice {invoice.number} finalised",
                at=invoice.finalized_at,
                postings=finalized_postings(invoice, lines),
            )
        return invoice

    @validated
    def void(self, *, account_id: Id, invoice_id: Id, now: Instant | None = None) -> Invoice:
        """Cancel an open invoice (open → void, ``voided_at = now``) and reverse it in the ledger.

        The ledger transaction ``invoice_voided`` (key ``invoice:<id>:voided``)
        reverses the finalisation, so the invoice no longer counts as
        receivable nor as revenue; what was already paid on it becomes the
        account's credit (``balance().credit_minor``). A paid invoice is not
        voided (refund it instead), nor is a draft (it has no number yet).

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not open), ``InvalidInput``
        for a bad argument. Nothing changes when it raises.
        """
        with self._atomic() as repo:
            invoice = repo._void(account_id=account_id, id=invoice_id, now=now)
            if invoice is None:
                repo._refuse(account_id, invoice_id, expected=("open",), action="voided")
            lines = repo._lines(account_id=account_id, invoice_id=invoice_id)
            repo._post(
                invoice,
                kind="invoice_voided",
                key=f"invoice:{invoice.id}:voided",
                description=f"Invoice {invoice.number} voided",
                at=invoice.voided_at,
                postings=voided_postings(invoice, lines),
            )
        return invoice

    @validated
    def mark_uncollectible(
        self, *, account_id: Id, invoice_id: Id, now: Instant | None = None
    ) -> Invoice:
        """Give up on an open invoice (open → uncollectible) and write off what is still due.

        The ledger transaction ``write_off`` (key ``invoice:<id>:written_off``,
        at ``now``) moves the amount due from ``receivable`` to ``bad_debt``.
        Payments are not recorded against an uncollectible invoice.

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not open), ``InvalidInput``
        for a bad argument. Nothing changes when it raises.
        """
        with self._atomic() as repo:
            invoice = repo._uncollectible(account_id=account_id, id=invoice_id)
            if invoice is None:
                repo._refuse(account_id, invoice_id, expected=("open",), action="written off")
            repo._post(
                invoice,
                kind="write_off",
                key=f"invoice:{invoice.id}:written_off",
                description=f"Invoice {invoice.number} written off as uncollectible",
                at=now,
                postings=write_off_postings(invoice),
            )
        return invoice

    # --- payments ----------------------------------------------------------------------------

    @validated
    def record_payment(
        self,
        *,
        account_id: Id,
        invoice_id: Id,
        provider: Provider,
        provider_payment_id: ProviderPaymentId,
        amount_minor: PositiveMinor,
        currency: Currency,
        now: Instant | None = None,
    ) -> RecordedPayment:
        """Record a provider's succeeded payment of an open invoice, exactly once.

        In one transaction: the payment (succeeded at ``now``), the ledger
        transaction ``payment`` (key ``payment:<id>``: debit ``cash``, credit
        ``receivable`` up to the amount due and ``customer_credit`` with any
        overpayment), and the invoice's ``amount_paid_minor``; the invoice
        becomes ``paid`` (``paid_at = now``) when its payments cover the
        total. The invoice is locked first, so concurrent payments of one
        invoice apply one after the other.

        Idempotent by ``(account, provider, provider_payment_id)``: recording
        the same payment again — also concurrently — returns the first
        record with ``duplicate=True`` and writes nothing, whatever the
        invoice's status is by then.

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not open),
        ``InvalidInput`` (a bad argument; field ``currency`` when it is not
        the invoice's), ``AlreadyExists`` (constraint
        ``payments_provider_payment_key``) when the provider's payment id is
        already recorded with another invoice, amount or currency. Nothing
        is written when it raises.
        """
        with self._atomic() as repo:
            invoice = repo._lock(account_id=account_id, id=invoice_id)
            if invoice is None:
                raise _not_found(account_id, invoice_id)
            key = {
                "account_id": account_id,
                "provider": provider,
                "provider_payment_id": provider_payment_id,
            }
            first = repo._payment_by_key(**key)
            if first is None:
                if invoice.status != "open":
                    raise _refused(invoice, expected=("open",), action="paid")
                if currency != invoice.currency:
                    raise InvalidInput(
                        f"the invoice is in {invoice.currency}, not {currency}", field="currency"
                    )
                payment = repo._insert_payment(
                    **key, invoice_id=invoice_id, amount_minor=amount_minor, currency=currency,
                    now=now,
                )  # fmt: skip
                if payment is not None:
                    repo._post(
                        invoice,
                        kind="payment",
                        key=f"payment:{payment.id}",
                        description=f"Payment {provider} {provider_payment_id} "
                        f"of invoice {invoice.number}",
                        at=payment.succeeded_at,
                        postings=payment_postings(
                            amount_minor, invoice.total_minor - invoice.amount_paid_minor
                        ),
                        payment_id=payment.id,
                    )
                    paid = repo._apply_payment(
                        account_id=account_id,
                        id=invoice_id,
                        amount_minor=amount_minor,
                        paid_at=payment.succeeded_at,
                    )
                    assert paid is not None  # locked above, and open
                    return RecordedPayment(payment=payment, invoice=paid, duplicate=False)
                # Recorded meanwhile for another invoice (this one is locked).
                first = repo._payment_by_key(**key)
                if first is None:
                    raise ConcurrencyConflict(
                        f"payment {provider} {provider_payment_id} was recorded concurrently "
                        "but is not visible in this transaction; retry",
                        constraint="payments_provider_payment_key",
                        table="payments",
                    )
            if (first.invoice_id, first.amount_minor, first.currency) != (
                invoice_id,
                amount_minor,
                currency,
            ):
                raise AlreadyExists(
                    f"payment {provider} {provider_payment_id} is already recorded as "
                    f"{first.amount_minor} {first.currency} for invoice {first.invoice_id} "
                    f"(constraint payments_provider_payment_key)",
                    sqlstate="23505",
                    constraint="payments_provider_payment_key",
                    table="payments",
                )
        return RecordedPayment(payment=first, invoice=invoice, duplicate=True)

    @validated
    def payments(self, *, account_id: Id, invoice_id: Id) -> list[Payment]:
        """The payments recorded against the account's invoice, oldest first.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return self._payments(account_id=account_id, invoice_id=invoice_id)

    # --- ledger ------------------------------------------------------------------------------

    @validated
    def balance(self, *, account_id: Id) -> list[Balance]:
        """The account's ledger per currency (in currency order): receivable, credit and more.

        ``receivable_minor`` is positive when the customer owes;
        ``credit_minor`` positive when the account holds credit. Currencies
        without any ledger entry are absent. Raises ``InvalidInput`` for a
        bad argument, before any SQL.
        """
        return self._balances(account_id=account_id)

    @validated
    def transactions(
        self, *, account_id: Id, cursor: str | None = None, limit: Limit = 50
    ) -> Page[LedgerTransaction]:
        """A page of the account's ledger transactions with their entries, newest first.

        Newest means most recently booked (highest id). Pass
        ``next_cursor`` back for the next page. Raises ``InvalidInput``
        (field ``cursor``) for a cursor this listing did not make.
        """
        request = PageRequest.of(cursor, limit, "desc")
        return request.page(self._transactions(**request.params, account_id=account_id))

    @validated
    def monthly_revenue(self, *, start_month: Month, end_month: Month) -> list[MonthlyRevenue]:
        """Per UTC month from ``start_month`` through ``end_month`` and currency, all accounts.

        Only the year and month of each date count. Each row: invoices
        finalised that month (count and total), revenue recognised in the
        ledger (net of voids, which count in their own month) and payments
        booked. Months and currencies without activity are absent. Raises
        ``InvalidInput`` for a bad argument or ``end_month`` before
        ``start_month``, before any SQL.
        """
        if (end_month.year, end_month.month) < (start_month.year, start_month.month):
            raise InvalidInput("must not be before start_month", field="end_month")
        lo = datetime(start_month.year, start_month.month, 1, tzinfo=UTC)
        hi_year, hi_month = divmod(end_month.year * 12 + end_month.month, 12)
        hi = datetime(hi_year, hi_month + 1, 1, tzinfo=UTC)
        return self._monthly(lo=lo, hi=hi)

    # --- helpers -----------------------------------------------------------------------------

    def _existing(
        self, account_id: int, subscription_id: int, period_start: datetime, period_end: datetime
    ) -> InvoiceWithLines:
        """The invoice another call made for this period (``insert_invoice`` found it)."""
        invoice = self._by_period(
            account_id=account_id, subscription_id=subscription_id, period_start=period_start
        )
        if invoice is None:  # committed, but not visible to this transaction's snapshot
            raise ConcurrencyConflict(
                f"the invoice of subscription {subscription_id} for {period_start.isoformat()} "
                "was made concurrently but is not visible in this transaction; retry",
                constraint="invoices_subscription_period_key",
                table="invoices",
            )
        if invoice.period_end != period_end:
            raise AlreadyExists(
                f"subscription {subscription_id} already has invoice {invoice.id} for the period "
                f"starting {period_start.isoformat()}, ending {invoice.period_end.isoformat()} "
                "(constraint invoices_subscription_period_key)",
                sqlstate="23505",
                constraint="invoices_subscription_period_key",
                table="invoices",
            )
        lines = self._lines(account_id=account_id, invoice_id=invoice.id)
        return InvoiceWithLines(**invoice.model_dump(), lines=lines)

    def _post(
        self,
        invoice: Invoice,
        *,
        kind: LedgerKind,
        key: str,
        description: str,
        at: datetime | None,
        postings: Postings,
        payment_id: int | None = None,
    ) -> LedgerTransaction:
        """Book one ledger transaction about ``invoice``, in its currency."""
        booked = self._book(
            account_id=invoice.account_id,
            kind=kind,
            idempotency_key=key,
            invoice_id=invoice.id,
            payment_id=payment_id,
            description=description,
            occurred_at=at,
            currency=invoice.currency,
            ledger_accounts=[account for account, _ in postings],
            amounts_minor=[amount for _, amount in postings],
        )
        assert booked is not None  # INSERT … VALUES returns its row
        return booked

    def _refuse(
        self, account_id: int, invoice_id: int, *, expected: tuple[str, ...], action: str
    ) -> NoReturn:
        """Why a guarded change matched no row: raise ``NotFound`` or ``InvalidTransition``."""
        invoice = self._get(account_id=account_id, id=invoice_id)
        if invoice is None:
            raise _not_found(account_id, invoice_id)
        raise _refused(invoice, expected=expected, action=action)


def _not_found(account_id: int, invoice_id: int) -> NotFound:
    return NotFound(f"invoice {invoice_id} not found in account {account_id}")


def _refused(invoice: Invoice, *, expected: tuple[str, ...], action: str) -> InvalidTransition:
    return InvalidTransition(
        f"invoice {invoice.id} is {invoice.status}; only a {' or '.join(expected)} invoice "
        f"can be {action}",
        entity="invoice",
        entity_id=invoice.id,
        expected=expected,
        actual=invoice.status,
    )
