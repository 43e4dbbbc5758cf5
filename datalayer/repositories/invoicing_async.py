"""How an invoice is made (``sql/billing.sql``): a period's lines from what is accepted now.

``Invoicing`` is the part of the billing repository that writes drafts: the
base fee of a period, its usage, adjustments of earlier periods of the chain
whose accepted usage changed after they were billed, and the chain's pending
items. A draft is made again from scratch each time (generation, refresh,
finalisation), so what it bills is always what is accepted at that moment.
Every method here runs inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from .._billing import (
    Line,
    MeterUsage,
    Period,
    Postings,
    base_line,
    carried_credit,
    credit_applied_postings,
    finalized_postings,
    pending_lines,
    plan_credit,
    usage_lines,
    with_carry,
)
from .._repository_async import AsyncRepository, execrows, execute, many, one
from .._window import ACCEPTED_AGE
from ..errors import DataLayerError, InvalidTransition
from ..models.billing import (
    BillingPeriod,
    CreditGrant,
    CreditSource,
    Invoice,
    InvoiceLine,
    InvoiceWithLines,
    LedgerKind,
    LedgerTransaction,
    PendingItem,
)
from ..models.plans import PlanWithMeters
from .plans_async import AsyncPlanRepository
from .usage_reports_async import AsyncUsageReportRepository

# Usage of a period can change until no event of it is accepted any more:
# ACCEPTED_AGE after it closed (a day more for clocks that disagree).
ADJUSTMENT_HORIZON = ACCEPTED_AGE + timedelta(days=1)
# Items a standalone invoice bills: every one left (service periods end before this).
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class _Billed(BaseModel):
    """What a period was billed for one meter on other invoices."""

    model_config = ConfigDict(frozen=True)

    billing_period_id: int
    meter_code: str
    quantity: Decimal
    amount_minor: int


class AsyncInvoicing(AsyncRepository):
    """Making and remaking draft invoices; the base of ``BillingRepository``."""

    aggregate = "billing"

    _find_period = one("find_billing_period", BillingPeriod)
    _lock_period = one("lock_billing_period", BillingPeriod)
    _set_period_invoice = execute("set_period_invoice")
    _adjustable = many("list_adjustable_periods", BillingPeriod)
    _mark_checked = execrows("mark_periods_checked")
    _billed = many("list_billed_usage", _Billed)
    _attach = many("attach_pending_items", PendingItem)
    _detach = execrows("detach_pending_items")
    _insert_invoice = one("insert_invoice", Invoice)
    _by_period = one("get_invoice_by_period", Invoice)
    _chain_draft = one("get_chain_draft", Invoice)
    _get = one("get_invoice", Invoice)
    _lock = one("lock_invoice", Invoice)
    _delete_lines = execrows("delete_draft_lines")
    _insert_lines = many("insert_invoice_lines", InvoiceLine)
    _set_totals = one("set_invoice_totals", Invoice)
    _lines = many("list_invoice_lines", InvoiceLine)
    _finalize = one("finalize_invoice", Invoice)
    _open_grants = many("lock_open_credit_grants", CreditGrant)
    _apply_credit = execrows("apply_credit")
    _insert_grant = one("insert_credit_grant", CreditGrant)
    _book = one("insert_ledger_transaction", LedgerTransaction)

    # -- a period's invoice ----------------------------------------------------------------------

    async def _invoice_period(
        self, period: BillingPeriod, now: datetime
    ) -> tuple[InvoiceWithLines, bool]:
        """The period's invoice and whether this call made it: made when missing, made again
        when a draft, returned as issued otherwise. Lock the period first (``_lock_period``).

        Raises ``InvalidTransition`` (entity ``invoice``) when the chain has a
        draft for another period, which must be finalised first.
        """
        existing = await self._by_period(account_id=period.account_id, billing_period_id=period.id)
        if existing is None:
            base = await self._plans().require(plan_id=period.base_plan_id)
            made = await self._insert_invoice(
                account_id=period.account_id,
                subscription_id=period.subscription_id,
                chain_id=period.chain_id,
                billing_period_id=period.id,
                currency=base.currency,
                period_start=period.period_start,
                period_end=period.period_end,
                created_at=now,
            )
            if made is not None:
                await self._set_period_invoice(
                    account_id=period.account_id, id=period.id, invoice_id=made.id
                )
                return await self._make(made, period, now), True
            existing = await self._by_period(
                account_id=period.account_id, billing_period_id=period.id
            )
            if existing is None:
                raise await self._draft_in_the_way(period)
        if period.invoice_id is None:  # the invoice was linked to the period, not both ways
            await self._set_period_invoice(
                account_id=period.account_id, id=period.id, invoice_id=existing.id
            )
        if existing.status != "draft":
            return await self._with_lines(existing), False
        locked = await self._lock(account_id=existing.account_id, id=existing.id)
        if locked is None or locked.status != "draft":  # issued meanwhile
            return await self._with_lines(locked or existing), False
        return await self._make(locked, period, now), False

    async def _draft_in_the_way(self, period: BillingPeriod) -> InvalidTransition:
        draft = await self._chain_draft(account_id=period.account_id, chain_id=period.chain_id)
        where = f"draft invoice {draft.id}" if draft is not None else "a draft invoice"
        return InvalidTransition(
            f"subscription chain {period.chain_id} has {where} for another period; it must be "
            "finalised before the period starting "
            f"{period.period_start.isoformat()} is invoiced",
            entity="invoice",
            entity_id=draft.id if draft is not None else None,
            expected=("open", "paid", "void", "uncollectible"),
            actual="draft",
        )

    async def _remake(self, invoice: Invoice, now: datetime) -> InvoiceWithLines:
        """Make a locked draft again (its period's, or a standalone adjustment invoice)."""
        period = None
        if invoice.billing_period_id is not None:
            period = await self._lock_period(
                account_id=invoice.account_id, id=invoice.billing_period_id
            )
            if period is None:  # a foreign key: never
                raise DataLayerError(f"invoice {invoice.id} names a missing billing period")
        return await self._make(invoice, period, now)

    # -- issuing a draft --------------------------------------------------------------------------

    async def _issue(self, invoice: Invoice, now: datetime | None, due_in: timedelta) -> Invoice:
        """Make a locked draft one last time and finalise it: number, credit, ledger.

        The customer's credit in the invoice's currency pays it first, oldest
        grant first (``credit_applied_minor``); what is left is due. Books
        ``invoice_finalized`` and, with credit, ``credit``; credit carried
        beyond the charges becomes a new grant.
        """
        made = await self._remake(invoice, now or _now(invoice))
        grants = await self._open_grants(account_id=invoice.account_id, currency=invoice.currency)
        credit = plan_credit(((g.id, g.remaining_minor) for g in grants), made.total_minor)
        issued = await self._finalize(
            account_id=invoice.account_id,
            id=invoice.id,
            due_in=due_in,
            now=now,
            credit_applied=credit.total,
        )
        if issued is None:  # locked as a draft by the caller
            raise DataLayerError(f"invoice {invoice.id} stopped being a draft while locked")
        await self._post(
            issued,
            kind="invoice_finalized",
            key=f"invoice:{issued.id}:finalized",
            description=f"Invoice {issued.number} finalised",
            at=issued.finalized_at,
            postings=finalized_postings(issued, made.lines),
        )
        if credit.uses:
            await self._apply_credit(
                account_id=invoice.account_id,
                invoice_id=invoice.id,
                grant_ids=[g for g, _ in credit.uses],
                amounts_minor=[a for _, a in credit.uses],
            )
            await self._post(
                issued,
                kind="credit",
                key=f"invoice:{issued.id}:credit",
                description=f"Credit applied to invoice {issued.number}",
                at=issued.finalized_at,
                postings=credit_applied_postings(credit.total),
            )
        carried = carried_credit(made.lines)
        if carried:
            await self._grant(issued, carried, source="carryover", invoice_id=issued.id)
        await self._checked(invoice.account_id, self._considered, issued.finalized_at or now)
        return issued

    async def _checked(self, account_id: int, period_ids: list[int], at: datetime | None) -> None:
        """The usage of these periods is billed as accepted at ``at`` (issued, not a draft)."""
        if period_ids and at is not None:
            await self._mark_checked(
                account_id=account_id, ids=period_ids, now=at, horizon=ADJUSTMENT_HORIZON
            )

    async def _grant(
        self,
        invoice: Invoice,
        amount: int,
        *,
        source: CreditSource,
        invoice_id: int | None = None,
        payment_id: int | None = None,
        credit_note_id: int | None = None,
    ) -> CreditGrant:
        """Record credit owed to the customer (its ledger entry is the caller's)."""
        grant = await self._insert_grant(
            account_id=invoice.account_id,
            currency=invoice.currency,
            amount_minor=amount,
            source=source,
            invoice_id=invoice_id,
            payment_id=payment_id,
            credit_note_id=credit_note_id,
        )
        assert grant is not None  # INSERT … VALUES returns its row
        return grant

    async def _post(
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
        booked = await self._book(
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

    # -- making a draft ---------------------------------------------------------------------------

    async def _make(
        self, invoice: Invoice, period: BillingPeriod | None, now: datetime
    ) -> InvoiceWithLines:
        """Write the draft's lines from scratch and its totals.

        ``period``: the period it bills (``None``: a standalone adjustment
        invoice of an ended chain, which bills the chain's adjustments and any
        item left).
        """
        account_id, chain_id = invoice.account_id, invoice.chain_id
        if chain_id is None:  # invoices made before chains existed are never drafts
            raise DataLayerError(f"draft invoice {invoice.id} belongs to no subscription chain")
        await self._detach(account_id=account_id, invoice_id=invoice.id)
        await self._delete_lines(account_id=account_id, invoice_id=invoice.id)
        before = period.period_start if period is not None else None
        earlier = await self._adjustable(
            account_id=account_id, chain_id=chain_id, before=before or _FAR_FUTURE
        )
        self._considered = [p.id for p in earlier] + ([period.id] if period else [])
        usage = await self._usage(invoice, [*earlier, *([period] if period else [])])
        lines: list[Line] = []
        if period is not None:
            base = await self._plans().require(plan_id=period.base_plan_id)
            lines.append(
                base_line(base.name, base.base_price_minor, _period(period), period.trial_end)
            )
            lines += usage_lines(_period(period), usage.get(period.id, []), own=True)
        for p in earlier:
            lines += usage_lines(_period(p), usage.get(p.id, []), own=False)
        due_by = period.period_end if period is not None else _FAR_FUTURE
        items = await self._attach(
            account_id=account_id, chain_id=chain_id, invoice_id=invoice.id, period_end=due_by
        )
        lines += pending_lines(sorted(items, key=lambda i: i.id))
        lines = with_carry(lines)
        rows = await self._write_lines(invoice, lines)
        total = sum(line.amount_minor for line in lines)
        subscription_id = period.subscription_id if period is not None else invoice.subscription_id
        updated = await self._set_totals(
            account_id=account_id,
            id=invoice.id,
            total_minor=total,
            subscription_id=subscription_id,
        )
        if updated is None:  # locked as a draft by the caller
            raise DataLayerError(f"invoice {invoice.id} stopped being a draft while locked")
        return InvoiceWithLines(**updated.model_dump(), lines=rows)

    async def _usage(
        self, invoice: Invoice, periods: Iterable[BillingPeriod]
    ) -> dict[int, list[MeterUsage]]:
        """Per period: each priced meter with its accepted and billed quantity and amount."""
        periods = list(periods)
        if not periods:
            return {}
        billed: dict[tuple[int, str], _Billed] = {
            (b.billing_period_id, b.meter_code): b
            for b in await self._billed(
                account_id=invoice.account_id,
                period_ids=[p.id for p in periods],
                invoice_id=invoice.id,
            )
        }
        reports = self._peer(AsyncUsageReportRepository)
        result: dict[int, list[MeterUsage]] = {}
        for p in periods:
            accepted: dict[str, Decimal] = {}
            if p.closes_at > p.period_start:
                accepted = {
                    t.meter_code: t.quantity_sum
                    for t in await reports.period_totals(
                        account_id=p.account_id, period_start=p.period_start, period_end=p.closes_at
                    )
                }
            plan = await self._plans().require(plan_id=p.pricing_plan_id)
            priced = {m.meter_code: m for m in plan.meters}
            codes = sorted(set(priced) | {code for (pid, code) in billed if pid == p.id})
            meters: list[MeterUsage] = []
            for code in codes:
                meter = priced.get(code)
                before = billed.get((p.id, code))
                meters.append(
                    MeterUsage(
                        meter_code=code,
                        # A meter billed before but not in the plan that prices the
                        # period any more is worth nothing: its billing is reversed.
                        included=meter.included_quantity if meter else Decimal(0),
                        unit_price=meter.overage_unit_price_minor if meter else Decimal(0),
                        accepted=accepted.get(code, Decimal(0)) if meter else Decimal(0),
                        billed_quantity=before.quantity if before else Decimal(0),
                        billed_amount=before.amount_minor if before else 0,
                    )
                )
            result[p.id] = meters
        return result

    async def _write_lines(self, invoice: Invoice, lines: list[Line]) -> list[InvoiceLine]:
        if not lines:
            return []
        return await self._insert_lines(
            account_id=invoice.account_id,
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
            billing_period_ids=[line.billing_period_id for line in lines],
            metered_quantities=[line.metered_quantity for line in lines],
            pending_item_ids=[line.pending_item_id for line in lines],
        )

    async def _with_lines(self, invoice: Invoice) -> InvoiceWithLines:
        lines = await self._lines(account_id=invoice.account_id, invoice_id=invoice.id)
        return InvoiceWithLines(**invoice.model_dump(), lines=lines)

    def _plans(self) -> _PlanCache:
        cache: _PlanCache | None = getattr(self, "_plan_cache", None)
        if cache is None:
            cache = _PlanCache(self._peer(AsyncPlanRepository))
            self._plan_cache = cache
        return cache


class _PlanCache:
    """Plans by id for the duration of one repository object (plans never change once
    published, and a period's plans are published)."""

    def __init__(self, plans: AsyncPlanRepository):
        self._plans = plans
        self._seen: dict[int, PlanWithMeters] = {}

    async def require(self, *, plan_id: int) -> PlanWithMeters:
        plan = self._seen.get(plan_id)
        if plan is None:
            plan = self._seen[plan_id] = await self._plans.require(plan_id=plan_id)
        return plan


def _period(p: BillingPeriod) -> Period:
    return Period(id=p.id, start=p.period_start, end=p.period_end, closes_at=p.closes_at)


def _now(invoice: Invoice) -> datetime:
    """The instant a finalisation without a clock makes its draft at: the invoice's last
    change (the database's clock decides the finalisation itself)."""
    return max(invoice.updated_at, invoice.created_at)
