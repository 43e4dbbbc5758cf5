"""Billing repository (``sql/billing.sql``): invoices, payments, credit, refunds and the ledger.

How invoices are made is in ``invoicing.py``; the billing run that drives the
cycle is in ``billing_run.py``. This module is the public face.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, NoReturn

from pydantic import AfterValidator, Field

from .._billing import (
    allocate_refund,
    carried_credit,
    credit_note_postings,
    payment_postings,
    refund_postings,
    split_credit_note,
    voided_postings,
    write_off_postings,
)
from .._paging import Page, PageRequest
from .._repository_async import many, one
from .._validation import Id, Instant, Limit, RunInstant, no_nul, validated
from ..errors import AlreadyExists, ConcurrencyConflict, InvalidInput, InvalidTransition, NotFound
from ..models.billing import (
    Balance,
    BillingRunResult,
    CreditGrant,
    CreditNote,
    Invoice,
    InvoiceWithLines,
    IssuedCreditNote,
    LedgerTransaction,
    MonthlyRevenue,
    Payment,
    PendingItem,
    RecordedPayment,
    RecordedRefund,
    Refund,
)
from .billing_run_async import DEFAULT_GRACE, AsyncBillingRun, _never
from .subscriptions_async import AsyncSubscriptionRepository

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Provider = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ProviderId = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(no_nul)]
PositiveMinor = Annotated[int, Field(ge=1, le=2**63 - 1)]
DueIn = Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=365))]
Grace = Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=30))]
RunBatch = Annotated[int, Field(ge=1, le=1000)]
Month = Annotated[date, Field(ge=date(2000, 1, 1), le=date(8999, 12, 31))]
Reason = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(no_nul)]
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(no_nul)]


class AsyncBillingRepository(AsyncBillingRun):
    """Billing: invoices, payments, credit, refunds and the ledger; scoped by account.

    A subscription chain is billed period by period (README: the billing
    model). Money is integer minor units of the invoice's currency;
    fractional quantities and unit prices are ``Decimal`` and each line is
    rounded half-up once. Times default to the database's clock (the
    transaction's start); pass ``now`` (timezone-aware) for another clock,
    as a test clock does. An invoice of another account is treated as
    missing. Every financial event books one ledger transaction in the same
    transaction as the change it records.
    """

    aggregate = "billing"

    _list = many("list_invoices", Invoice)
    _void = one("void_invoice", Invoice)
    _uncollectible = one("mark_invoice_uncollectible", Invoice)
    _payment_by_key = one("get_payment_by_provider_id", Payment)
    _insert_payment = one("insert_payment", Payment)
    _apply_payment = one("apply_payment", Invoice)
    _payments = many("list_invoice_payments", Payment)
    _transactions = many("list_ledger_transactions", LedgerTransaction)
    _balances = many("get_balances", Balance)
    _monthly = many("get_monthly_revenue", MonthlyRevenue)
    _pending = many("list_pending_items", PendingItem)
    _grants = many("list_credit_grants", CreditGrant)
    _note_by_key = one("get_credit_note_by_key", CreditNote)
    _insert_note = one("insert_credit_note", CreditNote)
    _apply_note = one("apply_credit_note", Invoice)
    _notes = many("list_credit_notes", CreditNote)
    _refundable = many("lock_refundable_payments", Payment)
    _insert_refunds = many("insert_refunds", Refund)
    _note_refunds = many("list_credit_note_refunds", Refund)
    _get_refund = one("get_refund", Refund)
    _refund_paid = one("mark_refund_succeeded", Refund)

    # --- invoices ----------------------------------------------------------------------------

    @validated
    async def generate_invoice(
        self,
        *,
        account_id: Id,
        subscription_id: Id,
        period_start: Instant,
        period_end: Instant,
        now: Instant | None = None,
    ) -> InvoiceWithLines:
        """The invoice of a period of the subscription's chain: made once, remade while a draft.

        The period is the chain's billing period starting at
        ``period_start`` (and ending at ``period_end``). Its lines: the base
        fee of the plan the period opened with, less trial time
        (``subscription``); per meter of the plan in force at the period's
        close, the usage accepted in the period and what it costs above the
        included quantity (``usage``, rounded once); adjustments of earlier
        periods of the chain whose accepted usage changed after they were
        billed (``adjustment``); the chain's pending items due by the
        period's end (``proration``); and, when credits exceed charges, a
        carry-over line so the total is never negative. Nothing is taken
        from the caller: amounts come from stored prices and accepted usage.

        Idempotent: a period has one invoice; calling again (also from another
        process at the same moment) makes a draft again from what is
        accepted now (``now``, default the clock, bounds which earlier
        periods may still change) and returns an issued invoice as it is.
        A period may be invoiced before it closes; what arrives later is
        billed when the draft is remade or, once issued, as adjustments.

        Raises ``NotFound`` (no such subscription in the account, or no
        billing period of its chain starting at ``period_start``),
        ``InvalidInput`` (a bad argument, or ``period_end`` not the period's
        end), ``InvalidTransition`` (entity ``invoice``: the chain has a draft
        for another period, to finalise first). Nothing is written when it
        raises.
        """
        if period_end <= period_start:
            raise InvalidInput("must be after period_start", field="period_end")
        moment = now or datetime.now(UTC)
        async with self._atomic() as repo:
            subscription = await repo._peer(AsyncSubscriptionRepository).require(
                account_id=account_id, subscription_id=subscription_id
            )
            found = await repo._find_period(
                account_id=account_id, chain_id=subscription.chain_id, period_start=period_start
            )
            if found is None:
                raise NotFound(
                    f"subscription {subscription_id} (chain {subscription.chain_id}) has no "
                    f"billing period starting {period_start.isoformat()}"
                )
            if found.period_end != period_end:
                raise InvalidInput(
                    f"the period starting {period_start.isoformat()} ends "
                    f"{found.period_end.isoformat()}",
                    field="period_end",
                )
            period = await repo._lock_period(account_id=account_id, id=found.id)
            assert period is not None  # found just above; periods are never deleted
            invoice, _ = await repo._invoice_period(period, moment)
        return invoice

    @validated
    async def get_invoice(self, *, account_id: Id, invoice_id: Id) -> InvoiceWithLines | None:
        """The account's invoice with this id and its lines, in any status, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        invoice = await self._get(account_id=account_id, id=invoice_id)
        return None if invoice is None else await self._with_lines(invoice)

    @validated
    async def invoices(
        self, *, account_id: Id, cursor: str | None = None, limit: Limit = 50
    ) -> Page[Invoice]:
        """A page of the account's invoices (without lines) in every status, newest first.

        Pass ``next_cursor`` back for the next page. Raises ``InvalidInput``
        (field ``cursor``) for a cursor this listing did not make.
        """
        request = PageRequest.of(cursor, limit, "desc")
        return request.page(await self._list(**request.params, account_id=account_id))

    @validated
    async def pending_items(self, *, account_id: Id, subscription_id: Id) -> list[PendingItem]:
        """The pending invoice items of the subscription's chain, oldest first, billed or not.

        Raises ``NotFound`` (no such subscription in the account),
        ``InvalidInput`` for a bad argument, before any SQL.
        """
        subscription = await self._peer(AsyncSubscriptionRepository).require(
            account_id=account_id, subscription_id=subscription_id
        )
        return await self._pending(account_id=account_id, chain_id=subscription.chain_id)

    @validated
    async def finalize(
        self,
        *,
        account_id: Id,
        invoice_id: Id,
        due_in: DueIn = timedelta(days=30),
        now: Instant | None = None,
    ) -> Invoice:
        """Issue a draft: made one last time, then open, numbered ``YYYY-NNNNNN``, due later.

        The lines are made again from what is accepted at ``now`` (as
        ``generate_invoice``). The number comes from the counter of ``now``'s
        year (UTC), bumped in this transaction: numbers are unique and
        gap-free, and concurrent finalisations wait for each other on the
        counter row until they commit. The customer's credit in the invoice's
        currency pays it first, oldest grant first (``credit_applied_minor``;
        ledger ``credit``); ``amount_due_minor`` is what is left, due
        ``due_in`` after ``now``. The ledger transaction ``invoice_finalized``
        (key ``invoice:<id>:finalized``) debits ``receivable`` and credits
        ``revenue`` with the total; credit carried beyond the charges becomes
        customer credit. An invoice with nothing left to pay is ``paid`` at
        once. The billing run (``run``) finalises drafts when their grace
        period has passed; this is for doing it by hand.

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not a draft),
        ``InvalidInput`` for a bad argument. Nothing changes when it raises.
        """
        async with self._atomic() as repo:
            invoice = await repo._lock(account_id=account_id, id=invoice_id)
            if invoice is None or invoice.status != "draft":
                await repo._refuse(account_id, invoice_id, expected=("draft",), action="finalised")
            return await repo._issue(invoice, now, due_in)

    @validated
    async def void(self, *, account_id: Id, invoice_id: Id, now: Instant | None = None) -> Invoice:
        """Cancel an open invoice (open → void, ``voided_at = now``) and reverse it in the ledger.

        The ledger transaction ``invoice_voided`` (key ``invoice:<id>:voided``)
        reverses what the invoice still counts as revenue and receivable;
        what the customer gave for it (credit applied, payments) less what
        credit notes gave back becomes customer credit again. The period
        keeps this one invoice: what it billed is not billed again. A paid
        invoice is not voided (issue a credit note, ``issue_credit_note``),
        nor a draft (it has no number yet).

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not open; for a paid one
        the message points to credit notes), ``InvalidInput`` for a bad
        argument. Nothing changes when it raises.
        """
        async with self._atomic() as repo:
            invoice = await repo._void(account_id=account_id, id=invoice_id, now=now)
            if invoice is None:
                await repo._refuse(account_id, invoice_id, expected=("open",), action="voided")
            lines = await repo._lines(account_id=account_id, invoice_id=invoice_id)
            post = sum(
                n.post_minor
                for n in await repo._notes(account_id=account_id, invoice_id=invoice_id)
            )
            carried = carried_credit(lines)
            postings = voided_postings(invoice, post, carried)
            await repo._post(
                invoice,
                kind="invoice_voided",
                key=f"invoice:{invoice.id}:voided",
                description=f"Invoice {invoice.number} voided",
                at=invoice.voided_at,
                postings=postings,
            )
            given = -sum(a for account, a in postings if account == "customer_credit")
            if given > 0:
                await repo._grant(invoice, given, source="void", invoice_id=invoice.id)
        return invoice

    @validated
    async def mark_uncollectible(
        self, *, account_id: Id, invoice_id: Id, now: Instant | None = None
    ) -> Invoice:
        """Give up on an open invoice (open → uncollectible) and write off what is still due.

        The ledger transaction ``write_off`` (key ``invoice:<id>:written_off``,
        at ``now``) moves ``amount_due_minor`` from ``receivable`` to
        ``bad_debt``. Payments are not recorded against an uncollectible
        invoice.

        Raises ``NotFound`` (no such invoice in the account),
        ``InvalidTransition`` (entity ``invoice``: not open), ``InvalidInput``
        for a bad argument. Nothing changes when it raises.
        """
        async with self._atomic() as repo:
            invoice = await repo._uncollectible(account_id=account_id, id=invoice_id)
            if invoice is None:
                await repo._refuse(account_id, invoice_id, expected=("open",), action="written off")
            await repo._post(
                invoice,
                kind="write_off",
                key=f"invoice:{invoice.id}:written_off",
                description=f"Invoice {invoice.number} written off as uncollectible",
                at=now,
                postings=write_off_postings(invoice),
            )
        return invoice

    # --- the billing run ---------------------------------------------------------------------

    @validated
    async def run(
        self,
        *,
        now: RunInstant | None = None,
        grace: Grace = DEFAULT_GRACE,
        batch: RunBatch = 50,
        stop: threading.Event | None = None,
    ) -> BillingRunResult:
        """Run the billing cycle once, for every account, at ``now`` (default: the clock).

        In order: renew due subscriptions (``subscriptions.renew_due`` until
        none is left); finalise drafts whose grace period has passed (their
        period's close plus ``grace``, default 1 hour as Stripe's), applying
        customer credit, and make the others again; make the invoice of every
        closed period (a chain's oldest first, finalised at once when its
        grace has passed); and give each ended chain whose billed usage
        changed (late events, cancellations) a standalone adjustment invoice.

        Works in transactions of up to ``batch`` items that lock what they
        take with ``SKIP LOCKED``: two runners at once skip each other's work
        and make every invoice once, and a crash at any point loses nothing
        (a rerun does what is left). An item that raises is rolled back
        alone, logged and counted as ``failed``. Idempotent: a second run at
        the same instant only remakes drafts still in their grace period.
        ``stop`` (the maintenance worker's shutdown) is looked at between
        batches: once it is set the run ends after the batch in hand, with
        ``stopped`` set. Returns the counts by action. Raises ``InvalidInput``
        for a bad argument, before any SQL (``now`` more than five years past
        the clock included: a mistyped year would renew every subscription
        through every period in between), and ``Unavailable`` if the
        database is lost.
        """
        return await self._run(
            now or datetime.now(UTC), grace, batch, stop.is_set if stop else _never
        )

    # --- payments ----------------------------------------------------------------------------

    @validated
    async def record_payment(
        self,
        *,
        account_id: Id,
        invoice_id: Id,
        provider: Provider,
        provider_payment_id: ProviderId,
        amount_minor: PositiveMinor,
        currency: Currency,
        now: Instant | None = None,
    ) -> RecordedPayment:
        """Record a provider's succeeded payment of an open invoice, exactly once.

        In one transaction: the payment (succeeded at ``now``), of which up
        to ``amount_due_minor`` settles the invoice (``applied_minor``) and
        the rest becomes customer credit; the ledger transaction ``payment``
        (key ``payment:<id>``: debit ``cash``, credit ``receivable`` what was
        settled and ``customer_credit`` the rest); and the invoice's
        ``amount_paid_minor``. The invoice becomes ``paid`` (``paid_at =
        now``) when nothing is left to pay. The invoice is locked first, so
        concurrent payments of one invoice apply one after the other.

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
        async with self._atomic() as repo:
            invoice = await repo._lock(account_id=account_id, id=invoice_id)
            if invoice is None:
                raise _not_found(account_id, invoice_id)
            key = {
                "account_id": account_id,
                "provider": provider,
                "provider_payment_id": provider_payment_id,
            }
            first = await repo._payment_by_key(**key)
            if first is None:
                if invoice.status != "open":
                    raise _refused(invoice, expected=("open",), action="paid")
                if currency != invoice.currency:
                    raise InvalidInput(
                        f"the invoice is in {invoice.currency}, not {currency}", field="currency"
                    )
                applied = min(amount_minor, invoice.amount_due_minor)
                payment = await repo._insert_payment(
                    **key, invoice_id=invoice_id, amount_minor=amount_minor, currency=currency,
                    now=now, applied_minor=applied,
                )  # fmt: skip
                if payment is not None:
                    await repo._post(
                        invoice,
                        kind="payment",
                        key=f"payment:{payment.id}",
                        description=f"Payment {provider} {provider_payment_id} "
                        f"of invoice {invoice.number}",
                        at=payment.succeeded_at,
                        postings=payment_postings(amount_minor, applied),
                        payment_id=payment.id,
                    )
                    if amount_minor > applied:
                        await repo._grant(
                            invoice,
                            amount_minor - applied,
                            source="overpayment",
                            payment_id=payment.id,
                        )
                    paid = await repo._apply_payment(
                        account_id=account_id,
                        id=invoice_id,
                        applied_minor=applied,
                        paid_at=payment.succeeded_at,
                    )
                    assert paid is not None  # locked above, and open
                    return RecordedPayment(payment=payment, invoice=paid, duplicate=False)
                # Recorded meanwhile for another invoice (this one is locked).
                first = await repo._payment_by_key(**key)
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
    async def payments(self, *, account_id: Id, invoice_id: Id) -> list[Payment]:
        """The payments recorded against the account's invoice, oldest first.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._payments(account_id=account_id, invoice_id=invoice_id)

    # --- credit notes and refunds -----------------------------------------------------------

    @validated
    async def issue_credit_note(
        self,
        *,
        account_id: Id,
        invoice_id: Id,
        amount_minor: PositiveMinor,
        reason: Reason,
        idempotency_key: IdempotencyKey,
        refund: bool = False,
        now: Instant | None = None,
    ) -> IssuedCreditNote:
        """Give money back on an open or paid invoice, once per ``idempotency_key``.

        As Stripe's credit notes: first it takes what it can off what is
        still due (``pre_minor``; an open invoice with nothing left to pay
        becomes ``paid``), then the rest (``post_minor``) gives back what was
        paid or credited: with ``refund``, as pending refunds of the invoice's
        payments (newest first), which the application pays out through the
        provider and reports with ``record_refund``; without, as customer
        credit applied to the next invoices. Ledger ``credit_note`` (key
        ``credit_note:<id>``): debit ``revenue``, credit ``receivable`` (pre)
        and ``refunds_payable`` or ``customer_credit`` (post). The database
        refuses credit notes summing above the invoice's total.

        The same key again returns the first credit note with
        ``duplicate=True`` and writes nothing. Raises ``NotFound`` (no such
        invoice in the account), ``InvalidTransition`` (entity ``invoice``:
        not open or paid), ``InvalidInput`` (field ``amount_minor``: above
        what the invoice can still be credited, or a refund above what its
        payments can refund), ``AlreadyExists`` (constraint
        ``credit_notes_idempotency_key``) when the key was used for another
        credit note. Nothing is written when it raises.
        """
        async with self._atomic() as repo:
            invoice = await repo._lock(account_id=account_id, id=invoice_id)
            if invoice is None:
                raise _not_found(account_id, invoice_id)
            first = await repo._note_by_key(account_id=account_id, idempotency_key=idempotency_key)
            if first is not None:
                return await repo._same_note(first, invoice, amount_minor, refund, reason)
            if invoice.status not in ("open", "paid"):
                raise _refused(invoice, expected=("open", "paid"), action="credited")
            left = invoice.total_minor - invoice.credited_minor
            if amount_minor > left:
                raise InvalidInput(
                    f"invoice {invoice.id} can be credited at most {left} more "
                    f"(total {invoice.total_minor}, credited {invoice.credited_minor})",
                    field="amount_minor",
                )
            due = invoice.amount_due_minor if invoice.status == "open" else 0
            pre, post = split_credit_note(amount_minor, due)
            payments: list[Payment] = []
            if post and refund:
                payments = await repo._refundable(account_id=account_id, invoice_id=invoice_id)
                refundable = sum(p.applied_minor - p.refunded_minor for p in payments)
                if post > refundable:
                    raise InvalidInput(
                        f"only {refundable} of what was paid on invoice {invoice.id} can be "
                        f"refunded; give the rest as credit (refund=False)",
                        field="amount_minor",
                    )
            note = await repo._insert_note(
                account_id=account_id, invoice_id=invoice_id, pre_minor=pre, post_minor=post,
                refund=refund, reason=reason, idempotency_key=idempotency_key,
            )  # fmt: skip
            if note is None:  # the same key, committed meanwhile
                raise ConcurrencyConflict(
                    f"credit note {idempotency_key!r} was issued concurrently; retry",
                    constraint="credit_notes_idempotency_key",
                    table="credit_notes",
                )
            updated = await repo._apply_note(
                account_id=account_id, id=invoice_id, pre_minor=pre, post_minor=post, now=now
            )
            assert updated is not None  # locked above, open or paid
            await repo._post(
                invoice,
                kind="credit_note",
                key=f"credit_note:{note.id}",
                description=f"Credit note on invoice {invoice.number}: {reason}"[:500],
                at=now,
                postings=credit_note_postings(pre, post, refund=refund),
            )
            refunds: list[Refund] = []
            if post and refund:
                parts = allocate_refund(
                    post, ((p.id, p.applied_minor - p.refunded_minor) for p in payments)
                )
                refunds = await repo._insert_refunds(
                    account_id=account_id,
                    invoice_id=invoice_id,
                    credit_note_id=note.id,
                    payment_ids=[p for p, _ in parts],
                    amounts_minor=[a for _, a in parts],
                )
            elif post:
                await repo._grant(invoice, post, source="credit_note", credit_note_id=note.id)
        return IssuedCreditNote(credit_note=note, invoice=updated, refunds=refunds, duplicate=False)

    async def _same_note(
        self, first: CreditNote, invoice: Invoice, amount: int, refund: bool, reason: str
    ) -> IssuedCreditNote:
        if (first.invoice_id, first.amount_minor, first.refund, first.reason) != (
            invoice.id,
            amount,
            refund,
            reason,
        ):
            raise AlreadyExists(
                f"credit note key {first.idempotency_key!r} was used for credit note "
                f"{first.id} ({first.amount_minor} on invoice {first.invoice_id}) "
                "(constraint credit_notes_idempotency_key)",
                sqlstate="23505",
                constraint="credit_notes_idempotency_key",
                table="credit_notes",
            )
        refunds = await self._note_refunds(account_id=first.account_id, credit_note_id=first.id)
        return IssuedCreditNote(credit_note=first, invoice=invoice, refunds=refunds, duplicate=True)

    @validated
    async def credit_notes(self, *, account_id: Id, invoice_id: Id) -> list[CreditNote]:
        """The credit notes of the account's invoice, oldest first.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._notes(account_id=account_id, invoice_id=invoice_id)

    @validated
    async def record_refund(
        self,
        *,
        account_id: Id,
        refund_id: Id,
        provider_refund_id: ProviderId,
        now: Instant | None = None,
    ) -> RecordedRefund:
        """Record that the provider paid a pending refund out, under its refund id, once.

        The refund becomes ``succeeded`` at ``now``; ledger ``refund`` (key
        ``refund:<id>``): debit ``refunds_payable``, credit ``cash``. Reporting
        it again with the same provider id returns it with ``duplicate=True``
        and writes nothing.

        Raises ``NotFound`` (no such refund in the account), ``AlreadyExists``
        (constraint ``refunds_provider_refund_key``) when it was reported with
        another provider id or that provider id is another refund's,
        ``InvalidInput`` for a bad argument. Nothing is written when it
        raises.
        """
        async with self._atomic() as repo:
            found = await repo._get_refund(account_id=account_id, id=refund_id)
            if found is None:
                raise NotFound(f"refund {refund_id} not found in account {account_id}")
            paid = await repo._refund_paid(
                account_id=account_id,
                id=refund_id,
                provider_refund_id=provider_refund_id,
                now=now,
            )
            if paid is None:  # succeeded before
                current = await repo._get_refund(account_id=account_id, id=refund_id)
                if current is not None and current.provider_refund_id == provider_refund_id:
                    return RecordedRefund(refund=current, duplicate=True)
                raise AlreadyExists(
                    f"refund {refund_id} was reported paid out as "
                    f"{current.provider_refund_id if current else '?'} "
                    "(constraint refunds_provider_refund_key)",
                    sqlstate="23505",
                    constraint="refunds_provider_refund_key",
                    table="refunds",
                )
            invoice = await repo._get(account_id=account_id, id=paid.invoice_id)
            assert invoice is not None  # a credit note's invoice (foreign keys)
            await repo._post(
                invoice,
                kind="refund",
                key=f"refund:{paid.id}",
                description=f"Refund {paid.provider} {provider_refund_id}",
                at=paid.succeeded_at,
                postings=refund_postings(paid.amount_minor),
                payment_id=paid.payment_id,
            )
        return RecordedRefund(refund=paid, duplicate=False)

    # --- credit and the ledger ---------------------------------------------------------------

    @validated
    async def credits(self, *, account_id: Id) -> list[CreditGrant]:
        """The account's customer credit, newest first: each grant and what is left of it.

        Credit is applied at finalisation, oldest grant first. Raises
        ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._grants(account_id=account_id)

    @validated
    async def balance(self, *, account_id: Id) -> list[Balance]:
        """The account's ledger per currency (in currency order): receivable, credit and more.

        ``receivable_minor`` is positive when the customer owes;
        ``credit_minor`` positive when the account holds credit (it equals
        what is left of its credit grants). Currencies without any ledger
        entry are absent. Raises ``InvalidInput`` for a bad argument, before
        any SQL.
        """
        return await self._balances(account_id=account_id)

    @validated
    async def transactions(
        self, *, account_id: Id, cursor: str | None = None, limit: Limit = 50
    ) -> Page[LedgerTransaction]:
        """A page of the account's ledger transactions with their entries, newest first.

        Newest means most recently booked (highest id). Pass
        ``next_cursor`` back for the next page. Raises ``InvalidInput``
        (field ``cursor``) for a cursor this listing did not make.
        """
        request = PageRequest.of(cursor, limit, "desc")
        return request.page(await self._transactions(**request.params, account_id=account_id))

    @validated
    async def monthly_revenue(
        self, *, start_month: Month, end_month: Month
    ) -> list[MonthlyRevenue]:
        """Per UTC month from ``start_month`` through ``end_month`` and currency, all accounts.

        Only the year and month of each date count. Each row: invoices
        finalised that month (count and total), revenue recognised in the
        ledger (net of voids and credit notes, which count in their own
        month) and payments booked. Months and currencies without activity
        are absent. Raises ``InvalidInput`` for a bad argument or
        ``end_month`` before ``start_month``, before any SQL.
        """
        if (end_month.year, end_month.month) < (start_month.year, start_month.month):
            raise InvalidInput("must not be before start_month", field="end_month")
        lo = datetime(start_month.year, start_month.month, 1, tzinfo=UTC)
        hi_year, hi_month = divmod(end_month.year * 12 + end_month.month, 12)
        hi = datetime(hi_year, hi_month + 1, 1, tzinfo=UTC)
        return await self._monthly(lo=lo, hi=hi)

    # --- helpers -----------------------------------------------------------------------------

    async def _refuse(
        self, account_id: int, invoice_id: int, *, expected: tuple[str, ...], action: str
    ) -> NoReturn:
        """Why a guarded change matched no row: raise ``NotFound`` or ``InvalidTransition``."""
        invoice = await self._get(account_id=account_id, id=invoice_id)
        if invoice is None:
            raise _not_found(account_id, invoice_id)
        raise _refused(invoice, expected=expected, action=action)


def _not_found(account_id: int, invoice_id: int) -> NotFound:
    return NotFound(f"invoice {invoice_id} not found in account {account_id}")


def _refused(invoice: Invoice, *, expected: tuple[str, ...], action: str) -> InvalidTransition:
    hint = ""
    if action == "voided" and invoice.status == "paid":
        hint = "; to give money back on a paid invoice, issue a credit note (issue_credit_note)"
    return InvalidTransition(
        f"invoice {invoice.id} is {invoice.status}; only a {' or '.join(expected)} invoice "
        f"can be {action}{hint}",
        entity="invoice",
        entity_id=invoice.id,
        expected=expected,
        actual=invoice.status,
    )
