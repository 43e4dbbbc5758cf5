"""Billing arithmetic, free of I/O: rounding, overage, invoice lines and ledger postings.

Money is integer minor units; fractional unit prices are exact ``Decimal``
products rounded once per line, half-up. Every posting list sums to zero (the
database checks it again at commit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Context, Decimal

from .errors import InvalidInput
from .models.billing import Invoice, InvoiceLine, InvoiceLineKind, LedgerAccount
from .models.plans import PlanWithMeters
from .models.subscriptions import Proration
from .models.usage_reports import MeterTotal

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
    above = max(Decimal(0), EXACT.subtract(quantity, included))
    return round_half_up(EXACT.multiply(above, unit_price))


@dataclass(frozen=True, slots=True)
class Line:
    kind: InvoiceLineKind
    description: str
    amount_minor: int
    quantity: Decimal = Decimal(1)
    unit_amount_minor: Decimal | None = None
    meter_code: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None


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


def carried_credit(lines: Sequence[InvoiceLine]) -> int:
    return sum(line.amount_minor for line in lines if line.kind == "adjustment")


def finalized_postings(invoice: Invoice, lines: Sequence[InvoiceLine]) -> Postings:
    """Finalising: debit receivable the total, credit revenue what the lines charge.

    Credit carried beyond the charges (the ``adjustment`` line) is credited
    to ``customer_credit`` rather than taken from revenue.
    """
    carried = carried_credit(lines)
    return postings(
        ("receivable", invoice.total_minor),
        ("revenue", -(invoice.total_minor - carried)),
        ("customer_credit", -carried),
    )


def voided_postings(invoice: Invoice, lines: Sequence[InvoiceLine]) -> Postings:
    """Voiding: the finalisation reversed; what was already paid becomes account credit."""
    reversed_ = [(account, -amount) for account, amount in finalized_postings(invoice, lines)]
    paid = invoice.amount_paid_minor
    return postings(*reversed_, ("receivable", paid), ("customer_credit", -paid))


def payment_postings(amount_minor: int, due_minor: int) -> Postings:
    """A payment: debit cash; credit receivable up to the amount due, the rest to credit."""
    to_receivable = min(amount_minor, max(due_minor, 0))
    return postings(
        ("cash", amount_minor),
        ("receivable", -to_receivable),
        ("customer_credit", -(amount_minor - to_receivable)),
    )


def write_off_postings(invoice: Invoice) -> Postings:
    """Uncollectible: the amount still due moves from receivable to bad debt."""
    due = invoice.total_minor - invoice.amount_paid_minor
    return postings(("bad_debt", due), ("receivable", -due))


def check_prorations(
    prorations: Sequence[Proration], *, account_id: int, subscription_id: int
) -> None:
    """Refuse prorations that do not belong on this subscription's invoice (``InvalidInput``)."""
    seen: set[int] = set()
    for proration in prorations:
        if (proration.account_id, proration.subscription_id) != (account_id, subscription_id):
            raise InvalidInput(
                f"the proration of subscription {proration.subscription_id} (account "
                f"{proration.account_id}) does not belong to subscription {subscription_id}",
                field="prorations",
            )
        if proration.replaced_id in seen:
            raise InvalidInput(
                f"the proration of replacing subscription {proration.replaced_id} is given twice",
                field="prorations",
            )
        if not proration.effective_at < proration.period_end:
            raise InvalidInput(
                "a proration must take effect before its period ends", field="prorations"
            )
        seen.add(proration.replaced_id)


def quantity_text(value: Decimal) -> str:
    """A quantity for a description: ``1209``, ``100.25`` (no exponent, no trailing zeros)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def invoice_lines(
    plan: PlanWithMeters,
    usage: Sequence[MeterTotal],
    prorations: Sequence[Proration],
    plan_names: dict[int, str],
    period_start: datetime,
    period_end: datetime,
) -> list[Line]:
    """The lines of a new invoice, and the carry-over line when credits exceed charges."""
    span = f"{period_start.astimezone(UTC):%Y-%m-%d} to {period_end.astimezone(UTC):%Y-%m-%d}"
    lines = [
        Line(
            kind="subscription",
            description=f"{plan.name}, {span}",
            amount_minor=plan.base_price_minor,
            unit_amount_minor=Decimal(plan.base_price_minor),
            period_start=period_start,
            period_end=period_end,
        )
    ]
    used = {total.meter_code: total.quantity_sum for total in usage}
    for meter in plan.meters:
        quantity = used.get(meter.meter_code, Decimal(0))
        above = quantity - meter.included_quantity
        if above <= 0:
            continue
        lines.append(
            Line(
                kind="usage",
                description=f"{meter.meter_code}: {quantity_text(above)} above the "
                f"{quantity_text(meter.included_quantity)} included",
                meter_code=meter.meter_code,
                quantity=above,
                unit_amount_minor=meter.overage_unit_price_minor,
                amount_minor=overage_amount(
                    quantity, meter.included_quantity, meter.overage_unit_price_minor
                ),
                period_start=period_start,
                period_end=period_end,
            )
        )
    for p in prorations:
        since = f"{p.effective_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        for description, amount in (
            (f"Unused time on {plan_names[p.old_plan_id]} from {since}", -p.credit_minor),
            (f"Remaining time on {plan_names[p.new_plan_id]} from {since}", p.charge_minor),
        ):
            lines.append(
                Line(
                    kind="proration",
                    description=description,
                    amount_minor=amount,
                    period_start=p.effective_at,
                    period_end=p.period_end,
                )
            )
    raw = sum(line.amount_minor for line in lines)
    if raw < 0:
        lines.append(Line(kind="adjustment", description=CARRIED, amount_minor=-raw))
    return lines
