"""Billing arithmetic, free of I/O: rounding, a period's lines, credit, and ledger postings.

Money is integer minor units; fractional unit prices are exact ``Decimal``
products rounded once per line, half-up. What a period's usage costs is always
computed from scratch (the price rule applied to the accepted quantity, rounded
once) and what is billed now is that minus what was billed before, so late
usage and cancellations converge to the exact amount with no rounding drift.
Every posting list sums to zero (the database checks it again at commit).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal

from .models.billing import Invoice, InvoiceLine, InvoiceLineKind, LedgerAccount, PendingItem

# Wide enough for numeric(20, 6) * numeric(20, 6) without rounding the product.
EXACT = Context(prec=80, rounding=ROUND_HALF_UP)
CARRIED = "Credit beyond this invoice's charges, carried to the account's credit balance"


def round_half_up(value: Decimal) -> int:
    """``value`` rounded to a whole number of minor units, halves away from zero."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP, context=EXACT))


def overage_amount(quantity: Decimal, included: Decimal, unit_price: Decimal) -> int:
    """What usage above the included quantity costs: ``max(0, quantity - included) * price``.

    Computed exactly, then rounded half-up once to whole minor units.
    """
    return round_half_up(EXACT.multiply(above(quantity, included), unit_price))


def above(quantity: Decimal, included: Decimal) -> Decimal:
    """The part of ``quantity`` above ``included`` (never negative)."""
    return max(Decimal(0), EXACT.subtract(quantity, included))


def _microseconds(start: datetime, end: datetime) -> int:
    delta = end - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def base_fee(price: int, start: datetime, end: datetime, trial_end: datetime | None) -> int:
    """The base fee of ``[start, end)`` without the time before ``trial_end``.

    ``price * paid / total`` in microseconds, rounded half-up once (the rule
    the proration of an upgrade uses in SQL).
    """
    total = _microseconds(start, end)
    paid_from = start if trial_end is None else min(max(trial_end, start), end)
    paid = _microseconds(paid_from, end)
    return (2 * price * paid + total) // (2 * total)


@dataclass(frozen=True, slots=True)
class Line:
    """A line to write on an invoice."""

    kind: InvoiceLineKind
    description: str
    amount_minor: int
    quantity: Decimal = Decimal(1)
    unit_amount_minor: Decimal | None = None
    meter_code: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    billing_period_id: int | None = None
    metered_quantity: Decimal | None = None
    pending_item_id: int | None = None


@dataclass(frozen=True, slots=True)
class Period:
    """A billing period as the line rules need it."""

    id: int
    start: datetime
    end: datetime
    closes_at: datetime

    @property
    def span(self) -> str:
        return f"{self.start.astimezone(UTC):%Y-%m-%d} to {self.closes_at.astimezone(UTC):%Y-%m-%d}"


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One meter of a period: its price rule, what is accepted now and what was billed before."""

    meter_code: str
    included: Decimal
    unit_price: Decimal
    accepted: Decimal
    billed_quantity: Decimal = Decimal(0)
    billed_amount: int = 0


def quantity_text(value: Decimal) -> str:
    """A quantity for a description: ``1209``, ``100.25`` (no exponent, no trailing zeros)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _signed(value: Decimal) -> str:
    return ("+" if value > 0 else "") + quantity_text(value)


def usage_lines(period: Period, meters: Iterable[MeterUsage], *, own: bool) -> list[Line]:
    """The lines that bring each meter of ``period`` to what its accepted usage costs now.

    For each meter: the target amount is the price rule applied to the
    accepted quantity, rounded once; the line bills ``target - billed before``
    and counts ``accepted - counted before``. ``own``: the lines go on the
    period's own invoice (kind ``usage`` while nothing was billed before or the
    change is upward); otherwise, or for a downward change, ``adjustment``
    lines naming the period. A meter whose quantity and amount are both
    settled gets no line.
    """
    lines: list[Line] = []
    for m in meters:
        target = overage_amount(m.accepted, m.included, m.unit_price)
        counted = EXACT.subtract(m.accepted, m.billed_quantity)
        amount = target - m.billed_amount
        if counted == 0 and amount == 0:
            continue
        extra = EXACT.subtract(above(m.accepted, m.included), above(m.billed_quantity, m.included))
        first = own and m.billed_quantity == 0 and m.billed_amount == 0
        if first:
            kind: InvoiceLineKind = "usage"
            description = (
                f"{m.meter_code}: {quantity_text(m.accepted)} used, "
                f"{quantity_text(m.included)} included"
            )
        else:
            kind = "adjustment"
            description = (
                f"{m.meter_code}: usage of {period.span} changed by {_signed(counted)} "
                "after it was billed"
            )
        lines.append(
            Line(
                kind=kind,
                description=description,
                amount_minor=amount,
                quantity=abs(extra),
                unit_amount_minor=m.unit_price,
                meter_code=m.meter_code,
                period_start=period.start,
                period_end=period.closes_at,
                billing_period_id=period.id,
                metered_quantity=counted,
            )
        )
    return lines


def base_line(plan_name: str, price: int, period: Period, trial_end: datetime | None) -> Line:
    """The base fee line of a period: the price of the plan it opened with, without trial time."""
    amount = base_fee(price, period.start, period.end, trial_end)
    description = f"{plan_name}, {period.start.astimezone(UTC):%Y-%m-%d} to " + (
        f"{period.end.astimezone(UTC):%Y-%m-%d}"
    )
    if trial_end is not None and trial_end > period.start:
        description += f" (trial until {min(trial_end, period.end).astimezone(UTC):%Y-%m-%d})"
    return Line(
        kind="subscription",
        description=description,
        amount_minor=amount,
        unit_amount_minor=Decimal(amount),
        period_start=period.start,
        period_end=period.end,
        billing_period_id=period.id,
    )


def pending_lines(items: Iterable[PendingItem]) -> list[Line]:
    """One line per pending item billed by the invoice."""
    return [
        Line(
            kind=item.kind,
            description=item.description,
            amount_minor=item.amount_minor,
            unit_amount_minor=Decimal(item.amount_minor),
            period_start=item.service_start,
            period_end=item.service_end,
            pending_item_id=item.id,
        )
        for item in items
    ]


def with_carry(lines: list[Line]) -> list[Line]:
    """The lines, plus a carry-over line when credits exceed the charges (the total is never
    negative: the carried amount becomes customer credit at finalisation)."""
    raw = sum(line.amount_minor for line in lines)
    if raw < 0:
        return [*lines, Line(kind="adjustment", description=CARRIED, amount_minor=-raw)]
    return lines


def carried_credit(lines: Sequence[InvoiceLine]) -> int:
    """The carry-over of an invoice: credit beyond its charges (its meterless adjustment)."""
    return sum(
        line.amount_minor for line in lines if line.kind == "adjustment" and line.meter_code is None
    )


# -- credit ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreditPlan:
    """Which grants pay how much of an invoice, oldest first."""

    uses: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(amount for _, amount in self.uses)


def plan_credit(open_grants: Iterable[tuple[int, int]], due: int) -> CreditPlan:
    """Use ``(grant_id, remaining)`` pairs, in the order given (oldest first), up to ``due``."""
    uses: list[tuple[int, int]] = []
    left = max(due, 0)
    for grant_id, remaining in open_grants:
        if left == 0:
            break
        amount = min(remaining, left)
        if amount > 0:
            uses.append((grant_id, amount))
            left -= amount
    return CreditPlan(uses)


def split_credit_note(amount: int, due: int) -> tuple[int, int]:
    """A credit note's ``(pre, post)``: what it takes off the amount due, then off what was paid."""
    pre = min(amount, max(due, 0))
    return pre, amount - pre


def allocate_refund(amount: int, refundable: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spread a refund over ``(payment_id, refundable)`` pairs in the order given.

    Raises ``ValueError`` when they cannot cover ``amount`` (a bug in the
    caller's check, never bad input).
    """
    parts: list[tuple[int, int]] = []
    left = amount
    for payment_id, available in refundable:
        if left == 0:
            break
        part = min(available, left)
        if part > 0:
            parts.append((payment_id, part))
            left -= part
    if left:
        raise ValueError(f"payments cannot cover a refund of {amount}")
    return parts


# -- ledger postings ------------------------------------------------------------------------

Postings = list[tuple[LedgerAccount, int]]


def postings(*pairs: tuple[LedgerAccount, int]) -> Postings:
    """Entries merged per ledger account, zeros dropped; they must sum to zero."""
    merged: dict[LedgerAccount, int] = {}
    for account, amount in pairs:
        merged[account] = merged.get(account, 0) + amount
    result = [(account, amount) for account, amount in merged.items() if amount != 0]
    if sum(amount for _, amount in result) != 0:  # a bug here, never bad input
        raise AssertionError(f"unbalanced postings: {result}")
    return result


def finalized_postings(invoice: Invoice, lines: Sequence[InvoiceLine]) -> Postings:
    """Finalising: debit receivable the total, credit revenue what the lines charge.

    Credit carried beyond the charges (the carry-over line) is credited to
    ``customer_credit`` rather than taken from revenue.
    """
    carried = carried_credit(lines)
    return postings(
        ("receivable", invoice.total_minor),
        ("revenue", -(invoice.total_minor - carried)),
        ("customer_credit", -carried),
    )


def credit_applied_postings(amount: int) -> Postings:
    """Customer credit paying part of an invoice: it leaves the credit, and the receivable."""
    return postings(("customer_credit", amount), ("receivable", -amount))


def payment_postings(amount_minor: int, applied_minor: int) -> Postings:
    """A payment: debit cash; credit receivable what it settled, the rest to customer credit."""
    return postings(
        ("cash", amount_minor),
        ("receivable", -applied_minor),
        ("customer_credit", -(amount_minor - applied_minor)),
    )


def credit_note_postings(pre: int, post: int, *, refund: bool) -> Postings:
    """A credit note: revenue given back; less receivable (pre), then a refund owed or credit."""
    return postings(
        ("revenue", pre + post),
        ("receivable", -pre),
        ("refunds_payable" if refund else "customer_credit", -post),
    )


def refund_postings(amount: int) -> Postings:
    """A refund paid out by the provider: the refund owed is settled in cash."""
    return postings(("refunds_payable", amount), ("cash", -amount))


def voided_postings(invoice: Invoice, credited_post: int, carried: int) -> Postings:
    """Voiding an open invoice: its remaining revenue and receivable are reversed, and what
    the customer gave for it (credit applied, payments) less what credit notes already gave
    back becomes customer credit."""
    revenue = invoice.total_minor - carried - invoice.credited_minor
    given = invoice.credit_applied_minor + invoice.amount_paid_minor - credited_post
    return postings(
        ("receivable", -invoice.amount_due_minor),
        ("revenue", revenue),
        ("customer_credit", carried - given),
    )


def write_off_postings(invoice: Invoice) -> Postings:
    """Uncollectible: the amount still due moves from receivable to bad debt."""
    due = invoice.amount_due_minor
    return postings(("bad_debt", due), ("receivable", -due))
