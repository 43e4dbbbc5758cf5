"""Billing: invoices from plans and usage, gap-free numbers, payments, voids and the ledger."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from datalayer import (
    AlreadyExists,
    Database,
    InvalidInput,
    InvalidTransition,
    NotFound,
    UnitOfWork,
)
from datalayer._billing import overage_amount, round_half_up
from datalayer.models.billing import Invoice, InvoiceWithLines, RecordedPayment
from datalayer.models.plans import Plan, PlanMeterSpec

pytestmark = pytest.mark.both_apis

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)
MID = datetime(2026, 1, 16, tzinfo=UTC)  # 16 of January's 31 days remain


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


Repos = UnitOfWork | Database


def publish(
    repos: Repos,
    code: str,
    *,
    price: int,
    currency: str = "USD",
    meters: list[PlanMeterSpec] | None = None,
) -> Plan:
    plan = repos.plans.create_draft(
        code=code,
        name=code.title(),
        billing_interval="month",
        base_price_minor=price,
        currency=currency,
        meters=meters,
    )
    return repos.plans.publish(plan_id=plan.id)


def draft(repos: Repos, account_id: int, plan: Plan, start: datetime = T0) -> InvoiceWithLines:
    """A subscription started at ``start`` and the draft of its first period."""
    sub = repos.subscriptions.start(account_id=account_id, plan_id=plan.id, now=start)
    return repos.billing.generate_invoice(
        account_id=account_id,
        subscription_id=sub.id,
        period_start=sub.current_period_start,
        period_end=sub.current_period_end,
    )


def issue(repos: Repos, account_id: int, plan: Plan, start: datetime = T0) -> Invoice:
    """An open invoice of ``plan``'s base price, finalised at the end of its period."""
    invoice = draft(repos, account_id, plan, start)
    return repos.billing.finalize(
        account_id=account_id, invoice_id=invoice.id, now=invoice.period_end
    )


def count(conn: psycopg.Connection[Any], table: str, account_id: int) -> int:
    row = conn.execute(
        psycopg.sql.SQL("SELECT count(*) FROM {} WHERE account_id = %s").format(
            psycopg.sql.Identifier(table)
        ),
        (account_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def same(a: InvoiceWithLines, b: InvoiceWithLines) -> bool:
    """The same invoice and lines, but for line ids and the time of the last change."""
    strip = {"updated_at": True, "lines": {"__all__": {"id"}}}
    return a.model_dump(exclude=strip) == b.model_dump(exclude=strip)


def unbalanced(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Every ledger transaction (all accounts) whose entries do not sum to zero per currency."""
    return conn.execute(
        "SELECT account_id, transaction_id, currency, sum(amount_minor) FROM ledger_entries"
        " GROUP BY 1, 2, 3 HAVING sum(amount_minor) <> 0"
    ).fetchall()


def ledger(repos: Repos, account_id: int) -> dict[str, int]:
    (balance,) = repos.billing.balance(account_id=account_id)
    return balance.model_dump(exclude={"currency"})


@pytest.fixture
def billing_conn(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """The rolled-back test transaction, with the ledger balance trigger checked per statement.

    The trigger is deferred to COMMIT, which a rolled-back test never reaches. On Citus
    it does not exist (the distribution step drops it): book_ledger_transaction's own
    check is what holds there, and it runs per statement anyway.
    """
    trigger = conn.execute(
        "SELECT 1 FROM pg_trigger WHERE tgname = 'ledger_entries_balanced'"
    ).fetchone()
    if trigger is not None:
        conn.execute("SET CONSTRAINTS ledger_entries_balanced IMMEDIATE")
    return conn


@pytest.fixture
def account_id(uow: UnitOfWork, billing_conn: psycopg.Connection[Any]) -> int:
    return uow.accounts.create(name="Acme").id


@pytest.fixture
def pro(uow: UnitOfWork) -> Plan:
    return publish(uow, "pro", price=2500)


# --- money arithmetic (no database) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("quantity", "included", "price", "amount"),
    [
        ("1209", "1000", "0.05", 10),  # 10.45
        ("23", "10", "2.5", 33),  # 32.5: half-up, where half-even would give 32
        ("100.75", "0.5", "0.333333", 33),  # 33.4166...
        ("10.5", "10", "1", 1),  # 0.5
        ("50", "100", "1.25", 0),  # within the included quantity
        ("99999999999999.999999", "0", "99999999999999.999999", 10**28 - 2 * 10**8),
    ],
)
def test_overage_is_the_exact_product_above_the_included_quantity_rounded_half_up_once(
    quantity: str, included: str, price: str, amount: int
) -> None:
    assert overage_amount(Decimal(quantity), Decimal(included), Decimal(price)) == amount


numeric_20_6 = st.decimals(
    min_value=0, max_value=Decimal("99999999999999.999999"), places=6, allow_nan=False
)


@given(quantity=numeric_20_6, included=numeric_20_6, price=numeric_20_6)
def test_overage_equals_exact_rational_arithmetic_rounded_half_up(
    quantity: Decimal, included: Decimal, price: Decimal
) -> None:
    exact = max(Fraction(0), Fraction(quantity) - Fraction(included)) * Fraction(price)
    assert overage_amount(quantity, included, price) == int(exact + Fraction(1, 2))


def test_rounding_takes_halves_away_from_zero() -> None:
    assert [round_half_up(Decimal(v)) for v in ("0.5", "1.5", "2.5", "-0.5", "2.4999")] == [
        1,
        2,
        3,
        -1,
        2,
    ]


# --- generating invoices ---------------------------------------------------------------------


def test_an_invoice_for_known_usage_equals_the_hand_computed_total(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any]
) -> None:
    billing_conn.execute(
        "INSERT INTO meters (code, name, unit, aggregation) VALUES"
        " ('api_calls', 'API calls', 'call', 'sum'), ('uploads', 'Uploads', 'file', 'sum'),"
        " ('seconds', 'Processing', 'second', 'sum'), ('storage', 'Storage', 'GB', 'sum'),"
        " ('exports', 'Exports', 'export', 'sum')"
    )
    spec = [
        ("api_calls", "1000", "0.05"),
        ("uploads", "10", "2.5"),
        ("seconds", "0.5", "0.333333"),
        ("storage", "100", "1.25"),
    ]
    plan = publish(
        uow,
        "metered",
        price=2900,
        meters=[
            PlanMeterSpec(
                meter_code=code,
                included_quantity=Decimal(included),
                overage_unit_price_minor=Decimal(price),
            )
            for code, included, price in spec
        ],
    )
    account_id = uow.accounts.create(name="Metered").id
    other_id = uow.accounts.create(name="Other").id
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plan.id, now=start)
    used = [
        ("api_calls", "1000"), ("api_calls", "200"), ("api_calls", "9"),  # 1209
        *[("uploads", "1")] * 23,
        ("seconds", "50.5"), ("seconds", "50.25"),  # 100.75
        ("storage", "50"),  # within the included 100
        ("exports", "7"),  # not in the plan: not billed
    ]  # fmt: skip
    events = [
        {"account_id": account_id, "meter_code": meter, "quantity": Decimal(q),
         "occurred_at": start + timedelta(minutes=i), "idempotency_key": f"e{i}"}
        for i, (meter, q) in enumerate(used)
    ] + [
        {"account_id": account_id, "meter_code": "api_calls", "quantity": Decimal(500),
         "occurred_at": start - timedelta(hours=1), "idempotency_key": "before the period"},
        {"account_id": other_id, "meter_code": "api_calls", "quantity": Decimal(10_000),
         "occurred_at": start + timedelta(hours=1), "idempotency_key": "another account"},
    ]  # fmt: skip
    assert uow.usage.record_batch(events=events).inserted == len(events)

    invoice = uow.billing.generate_invoice(
        account_id=account_id,
        subscription_id=sub.id,
        period_start=sub.current_period_start,
        period_end=sub.current_period_end,
    )

    lines = [
        (line.kind, line.meter_code, line.metered_quantity, line.quantity, line.amount_minor)
        for line in invoice.lines
    ]
    # Every meter of the plan that was used gets a line saying what it counts
    # (metered_quantity): what it bills is what lies above the included quantity.
    assert lines == [
        ("subscription", None, None, Decimal(1), 2900),
        ("usage", "api_calls", Decimal(1209), Decimal(209), 10),  # 209 * 0.05 = 10.45
        ("usage", "seconds", Decimal("100.75"), Decimal("100.25"), 33),  # * 0.333333 = 33.41
        ("usage", "storage", Decimal(50), Decimal(0), 0),  # within the included 100
        ("usage", "uploads", Decimal(23), Decimal(13), 33),  # 13 * 2.5 = 32.5
    ]  # fmt: skip
    assert invoice.lines[1].unit_amount_minor == Decimal("0.05")
    assert invoice.lines[1].description == "api_calls: 1209 used, 1000 included"
    assert (invoice.subtotal_minor, invoice.tax_minor, invoice.total_minor) == (2976, 0, 2976)
    assert (invoice.status, invoice.number, invoice.currency) == ("draft", None, "USD")
    assert (invoice.period_start, invoice.period_end) == (
        sub.current_period_start,
        sub.current_period_end,
    )
    assert uow.billing.get_invoice(account_id=account_id, invoice_id=invoice.id) == invoice


def test_generating_the_same_invoice_again_returns_it_and_writes_nothing_new(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    first = draft(uow, account_id, pro)
    assert first.subscription_id is not None
    args: dict[str, Any] = {
        "account_id": account_id,
        "subscription_id": first.subscription_id,
        "period_start": first.period_start,
        "period_end": first.period_end,
    }
    # A draft is made again from what is accepted now: the same content, lines written afresh.
    assert same(uow.billing.generate_invoice(**args), first)
    finalized = uow.billing.finalize(account_id=account_id, invoice_id=first.id)
    again = uow.billing.generate_invoice(**args)
    assert (again.id, again.status, again.number) == (first.id, "open", finalized.number)
    # Finalising made the draft once more: the same lines, written afresh.
    assert [line.model_dump(exclude={"id"}) for line in again.lines] == [
        line.model_dump(exclude={"id"}) for line in first.lines
    ]
    assert count(billing_conn, "invoices", account_id) == 1
    assert count(billing_conn, "invoice_lines", account_id) == 1
    with pytest.raises(InvalidInput) as info:
        uow.billing.generate_invoice(**{**args, "period_end": first.period_end + timedelta(days=1)})
    assert info.value.field == "period_end"


def test_an_upgrade_bills_the_old_plan_for_the_period_less_its_unused_time_plus_the_new(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    basic = publish(uow, "basic", price=1000)
    sub = uow.subscriptions.start(account_id=account_id, plan_id=basic.id, now=T0)
    upgrade = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=sub.id, plan_id=pro.id, now=MID
    )
    invoice = uow.billing.generate_invoice(
        account_id=account_id,
        subscription_id=upgrade.subscription.id,
        period_start=T0,
        period_end=FEB,
    )
    assert [(line.kind, line.amount_minor, line.period_start) for line in invoice.lines] == [
        ("subscription", 1000, T0),  # the plan the period opened with
        ("proration", -516, MID),  # 1000 * 16/31 = 516.13: Basic's unused time
        ("proration", 1290, MID),  # 2500 * 16/31 = 1290.32: Pro's remaining time
    ]
    assert invoice.lines[1].description == "Unused time on Basic from 2026-01-16 00:00 UTC"
    assert invoice.lines[2].description == "Remaining time on Pro from 2026-01-16 00:00 UTC"
    assert invoice.total_minor == 1000 - 516 + 1290  # Basic for 15 days, Pro for 16
    items = uow.billing.pending_items(account_id=account_id, subscription_id=sub.id)
    assert [(i.amount_minor, i.invoice_id) for i in items] == [
        (-516, invoice.id),
        (1290, invoice.id),
    ]


def test_the_proration_comes_from_stored_prices_and_is_not_accepted_from_the_caller(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    basic = publish(uow, "basic", price=1000)
    sub = uow.subscriptions.start(account_id=account_id, plan_id=basic.id, now=T0)
    upgrade = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=sub.id, plan_id=pro.id, now=MID
    )
    with pytest.raises(InvalidInput) as info:
        uow.billing.generate_invoice(  # type: ignore[call-arg]
            account_id=account_id,
            subscription_id=upgrade.subscription.id,
            period_start=T0,
            period_end=FEB,
            prorations=[upgrade.proration],
        )
    assert info.value.field == "prorations"
    assert count(billing_conn, "invoices", account_id) == 0
    # Written with the upgrade, in its transaction.
    assert count(billing_conn, "pending_invoice_items", account_id) == 2


# --- finalising ------------------------------------------------------------------------------


def test_finalising_numbers_and_opens_the_invoice_and_books_receivable_against_revenue(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    invoice = draft(uow, account_id, pro)
    when = at(2031, 3, 5)
    issued = uow.billing.finalize(
        account_id=account_id, invoice_id=invoice.id, now=when, due_in=timedelta(days=14)
    )
    assert issued.status == "open"
    assert issued.number is not None
    assert issued.number.startswith("2031-")
    assert len(issued.number) == len("2031-000001")
    assert (issued.finalized_at, issued.due_at) == (when, when + timedelta(days=14))
    (tx,) = uow.billing.transactions(account_id=account_id).items
    assert (tx.kind, tx.idempotency_key, tx.invoice_id, tx.occurred_at) == (
        "invoice_finalized",
        f"invoice:{invoice.id}:finalized",
        invoice.id,
        when,
    )
    assert [(e.ledger_account, e.amount_minor, e.currency) for e in tx.entries] == [
        ("receivable", 2500, "USD"),
        ("revenue", -2500, "USD"),
    ]
    assert ledger(uow, account_id)["receivable_minor"] == 2500


def test_finalising_twice_or_an_unknown_invoice_is_refused(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    issued = issue(uow, account_id, pro)
    with pytest.raises(InvalidTransition) as twice:
        uow.billing.finalize(account_id=account_id, invoice_id=issued.id)
    assert (twice.value.entity, twice.value.entity_id) == ("invoice", issued.id)
    assert (twice.value.expected, twice.value.actual) == (("draft",), "open")
    other = uow.accounts.create(name="Other").id
    for account, invoice_id in [(account_id, 2**62), (other, issued.id)]:
        with pytest.raises(NotFound):
            uow.billing.finalize(account_id=account, invoice_id=invoice_id)
    assert uow.billing.get_invoice(account_id=other, invoice_id=issued.id) is None
    assert count(billing_conn, "ledger_transactions", account_id) == 1
    row = billing_conn.execute(
        "SELECT last_number FROM invoice_number_counters WHERE year = 2026"
    ).fetchone()
    assert row is not None
    assert issued.number == f"2026-{row[0]:06d}"


# --- payments --------------------------------------------------------------------------------


def pay(repos: Repos, invoice: Invoice, provider_id: str, amount: int) -> RecordedPayment:
    return repos.billing.record_payment(
        account_id=invoice.account_id,
        invoice_id=invoice.id,
        provider="stripe",
        provider_payment_id=provider_id,
        amount_minor=amount,
        currency=invoice.currency,
        now=FEB + timedelta(days=1),
    )


def test_partial_payments_keep_the_invoice_open_until_the_total_is_covered(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    invoice = issue(uow, account_id, pro)
    first = pay(uow, invoice, "pi_1", 1000)
    assert (first.invoice.status, first.invoice.amount_paid_minor, first.duplicate) == (
        "open",
        1000,
        False,
    )
    assert ledger(uow, account_id)["receivable_minor"] == 1500
    second = pay(uow, invoice, "pi_2", 1500)
    assert (second.invoice.status, second.invoice.amount_paid_minor) == ("paid", 2500)
    assert second.invoice.paid_at == second.payment.succeeded_at == FEB + timedelta(days=1)
    assert ledger(uow, account_id) == {
        "receivable_minor": 0,
        "credit_minor": 0,
        "collected_minor": 2500,
        "revenue_minor": 2500,
        "written_off_minor": 0,
        "refunds_pending_minor": 0,
    }
    payments = uow.billing.payments(account_id=account_id, invoice_id=invoice.id)
    assert payments == [first.payment, second.payment]
    assert payments[0].status == "succeeded"
    with pytest.raises(InvalidTransition) as paid:
        pay(uow, invoice, "pi_3", 1)
    assert (paid.value.expected, paid.value.actual) == (("open",), "paid")


def test_recording_the_same_provider_payment_twice_stores_one_payment_and_one_transaction(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    invoice = issue(uow, account_id, pro)
    first = pay(uow, invoice, "pi_1", 2500)
    again = pay(uow, invoice, "pi_1", 2500)  # the invoice is paid by now: still no error
    assert again.duplicate
    assert not first.duplicate
    assert again.payment == first.payment
    assert again.invoice == first.invoice
    assert count(billing_conn, "payments", account_id) == 1
    kinds = [t.kind for t in uow.billing.transactions(account_id=account_id).items]
    assert kinds == ["payment", "invoice_finalized"]
    with pytest.raises(AlreadyExists) as info:
        pay(uow, invoice, "pi_1", 2400)  # the same provider id for another amount
    assert info.value.constraint == "payments_provider_payment_key"


def test_an_overpayment_pays_the_invoice_and_credits_the_excess_to_the_account(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    invoice = issue(uow, account_id, pro)
    paid = pay(uow, invoice, "pi_1", 3000)
    # What the payment settled of the invoice; the rest is customer credit.
    assert (paid.invoice.status, paid.invoice.amount_paid_minor) == ("paid", 2500)
    assert (paid.payment.amount_minor, paid.payment.applied_minor) == (3000, 2500)
    (tx, _) = uow.billing.transactions(account_id=account_id).items
    assert [(e.ledger_account, e.amount_minor) for e in tx.entries] == [
        ("cash", 3000),
        ("receivable", -2500),
        ("customer_credit", -500),
    ]
    assert (tx.kind, tx.payment_id) == ("payment", paid.payment.id)
    assert ledger(uow, account_id)["credit_minor"] == 500


# --- voiding and writing off -----------------------------------------------------------------


def test_voiding_an_open_invoice_reverses_the_receivable_and_credits_what_was_paid(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    invoice = issue(uow, account_id, pro)
    pay(uow, invoice, "pi_1", 1000)
    voided = uow.billing.void(account_id=account_id, invoice_id=invoice.id, now=at(2026, 2, 3))
    assert (voided.status, voided.voided_at, voided.number) == (
        "void",
        at(2026, 2, 3),
        invoice.number,
    )
    tx = uow.billing.transactions(account_id=account_id).items[0]
    assert (tx.kind, tx.idempotency_key) == ("invoice_voided", f"invoice:{invoice.id}:voided")
    assert [(e.ledger_account, e.amount_minor) for e in tx.entries] == [
        ("receivable", -1500),
        ("revenue", 2500),
        ("customer_credit", -1000),
    ]
    assert ledger(uow, account_id) == {
        "receivable_minor": 0,
        "credit_minor": 1000,
        "collected_minor": 1000,
        "revenue_minor": 0,
        "written_off_minor": 0,
        "refunds_pending_minor": 0,
    }
    with pytest.raises(InvalidTransition):
        pay(uow, invoice, "pi_2", 1500)


def test_paid_draft_and_void_invoices_cannot_be_voided(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    paid = issue(uow, account_id, pro)
    pay(uow, paid, "pi_1", 2500)
    voided = issue(uow, uow.accounts.create(name="B").id, pro)
    uow.billing.void(account_id=voided.account_id, invoice_id=voided.id)
    other = uow.accounts.create(name="C").id
    sketch = draft(uow, other, pro)
    before = count(billing_conn, "ledger_transactions", account_id)
    for invoice, actual in [(paid, "paid"), (voided, "void"), (sketch, "draft")]:
        with pytest.raises(InvalidTransition) as info:
            uow.billing.void(account_id=invoice.account_id, invoice_id=invoice.id)
        assert (info.value.expected, info.value.actual) == (("open",), actual)
    assert count(billing_conn, "ledger_transactions", account_id) == before


def test_a_draft_cannot_be_paid_and_a_payment_in_another_currency_is_refused(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    sketch = draft(uow, account_id, pro)
    with pytest.raises(InvalidTransition) as info:
        pay(uow, sketch, "pi_1", 2500)
    assert (info.value.entity, info.value.expected, info.value.actual) == (
        "invoice",
        ("open",),
        "draft",
    )
    issued = uow.billing.finalize(account_id=account_id, invoice_id=sketch.id)
    with pytest.raises(InvalidInput) as currency:
        uow.billing.record_payment(**pay_args(issued, currency="EUR"))
    assert currency.value.field == "currency"
    assert count(billing_conn, "payments", account_id) == 0
    assert uow.billing.get_invoice(account_id=account_id, invoice_id=issued.id) == (
        uow.billing.get_invoice(account_id=account_id, invoice_id=sketch.id)
    )
    assert pay(uow, issued, "pi_1", 2500).invoice.status == "paid"  # the id was not used up


def test_marking_an_invoice_uncollectible_writes_off_what_is_still_due(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    invoice = issue(uow, account_id, pro)
    pay(uow, invoice, "pi_1", 600)
    written_off = uow.billing.mark_uncollectible(account_id=account_id, invoice_id=invoice.id)
    assert written_off.status == "uncollectible"
    assert ledger(uow, account_id) == {
        "receivable_minor": 0,
        "credit_minor": 0,
        "collected_minor": 600,
        "revenue_minor": 2500,
        "written_off_minor": 1900,
        "refunds_pending_minor": 0,
    }
    with pytest.raises(InvalidTransition):
        uow.billing.mark_uncollectible(account_id=account_id, invoice_id=invoice.id)


# --- bad input -------------------------------------------------------------------------------

NAIVE = datetime(2026, 1, 1)
PAYMENT_ID = "provider_payment_id"


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda b, i: b.record_payment(**pay_args(i, amount_minor=-5)), "amount_minor"),
        (lambda b, i: b.record_payment(**pay_args(i, amount_minor=0)), "amount_minor"),
        (lambda b, i: b.record_payment(**pay_args(i, amount_minor=10.0)), "amount_minor"),
        (lambda b, i: b.record_payment(**pay_args(i, currency="EUR")), "currency"),
        (lambda b, i: b.record_payment(**pay_args(i, currency="usd")), "currency"),
        (lambda b, i: b.record_payment(**pay_args(i, provider="Stripe!")), "provider"),
        (lambda b, i: b.record_payment(**pay_args(i, provider_payment_id="")), PAYMENT_ID),
        (lambda b, i: b.record_payment(**pay_args(i, provider_payment_id="a\x00")), PAYMENT_ID),
        (lambda b, i: b.record_payment(**pay_args(i, now=NAIVE)), "now"),
        (lambda b, i: b.generate_invoice(account_id=i.account_id, subscription_id=i.subscription_id,
                                         period_start=NAIVE, period_end=FEB), "period_start"),
        (lambda b, i: b.generate_invoice(account_id=i.account_id, subscription_id=i.subscription_id,
                                         period_start=FEB, period_end=FEB), "period_end"),
        (lambda b, i: b.finalize(account_id=i.account_id, invoice_id=i.id,
                                 due_in=timedelta(days=-1)), "due_in"),
        (lambda b, i: b.void(account_id=i.account_id, invoice_id=0), "invoice_id"),
        (lambda b, i: b.void(account_id=i.account_id, invoice_id=i.id, now=NAIVE), "now"),
        (lambda b, i: b.transactions(account_id=i.account_id, cursor="nope"), "cursor"),
        (lambda b, i: b.transactions(account_id=i.account_id, limit=0), "limit"),
        (lambda b, i: b.monthly_revenue(start_month=date(2026, 2, 1),
                                        end_month=date(2026, 1, 31)), "end_month"),
        (lambda b, i: b.monthly_revenue(start_month=T0, end_month=date(2026, 1, 1)), "start_month"),
    ],
)  # fmt: skip
def test_bad_input_raises_invalid_input_naming_the_field_and_writes_nothing(
    uow: UnitOfWork,
    billing_conn: psycopg.Connection[Any],
    account_id: int,
    pro: Plan,
    call: Callable[[Any, Invoice], object],
    field: str,
) -> None:
    invoice = issue(uow, account_id, pro)
    tables = ("invoices", "invoice_lines", "payments", "ledger_transactions", "ledger_entries")
    before = {t: count(billing_conn, t, account_id) for t in tables}
    with pytest.raises(InvalidInput) as info:
        call(uow.billing, invoice)
    assert info.value.field == field
    assert {t: count(billing_conn, t, account_id) for t in tables} == before
    assert uow.billing.get_invoice(account_id=account_id, invoice_id=invoice.id) is not None


def pay_args(invoice: Invoice, **changes: Any) -> dict[str, Any]:
    return {
        "account_id": invoice.account_id,
        "invoice_id": invoice.id,
        "provider": "stripe",
        "provider_payment_id": "pi_1",
        "amount_minor": 100,
        "currency": invoice.currency,
        **changes,
    }


def test_unknown_invoices_and_subscriptions_raise_not_found_and_write_nothing(
    uow: UnitOfWork, billing_conn: psycopg.Connection[Any], account_id: int, pro: Plan
) -> None:
    invoice = issue(uow, account_id, pro)
    assert invoice.subscription_id is not None
    subscription_id = invoice.subscription_id
    other = uow.accounts.create(name="Other").id
    calls: list[Callable[[], object]] = [
        lambda: uow.billing.record_payment(**pay_args(invoice, account_id=other)),
        lambda: uow.billing.record_payment(**pay_args(invoice, invoice_id=2**62)),
        lambda: uow.billing.void(account_id=other, invoice_id=invoice.id),
        lambda: uow.billing.mark_uncollectible(account_id=account_id, invoice_id=2**62),
        lambda: uow.billing.generate_invoice(
            account_id=other, subscription_id=subscription_id,
            period_start=T0, period_end=FEB,
        ),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(NotFound):
            call()
    for account in (account_id, other):
        assert count(billing_conn, "payments", account) == 0
        assert count(billing_conn, "ledger_transactions", account) == (
            1 if account == account_id else 0
        )
    assert count(billing_conn, "invoices", other) == 0


# --- balance, history, reports ---------------------------------------------------------------


def test_balance_is_per_currency_and_history_pages_newest_first(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    euro = publish(uow, "euro", price=900, currency="EUR")
    usd = issue(uow, account_id, pro)
    pay(uow, usd, "pi_1", 500)
    other = uow.accounts.create(name="Other").id
    issue(uow, other, pro)  # another account's rows never show
    assert usd.subscription_id is not None
    uow.subscriptions.cancel_now(account_id=account_id, subscription_id=usd.subscription_id)
    eur = issue(uow, account_id, euro)
    pay(uow, eur, "pi_2", 900)
    balances = uow.billing.balance(account_id=account_id)
    assert [(b.currency, b.receivable_minor, b.collected_minor) for b in balances] == [
        ("EUR", 0, 900),
        ("USD", 2000, 500),
    ]
    seen = []
    cursor = None
    while True:
        page = uow.billing.transactions(account_id=account_id, cursor=cursor, limit=3)
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [(t.kind, t.entries[0].currency) for t in seen] == [
        ("payment", "EUR"),
        ("invoice_finalized", "EUR"),
        ("payment", "USD"),
        ("invoice_finalized", "USD"),
    ]
    assert [t.id for t in seen] == sorted((t.id for t in seen), reverse=True)
    assert {t.account_id for t in seen} == {account_id}
    assert all(sum(e.amount_minor for e in t.entries) == 0 for t in seen)
    listed = uow.billing.invoices(account_id=account_id, limit=1)
    assert [i.id for i in listed.items] == [eur.id]
    assert listed.next_cursor is not None
    assert uow.billing.balance(account_id=uow.accounts.create(name="New").id) == []


def test_monthly_revenue_counts_invoices_revenue_and_payments_per_month_and_currency(
    uow: UnitOfWork, account_id: int, pro: Plan
) -> None:
    euro = publish(uow, "euro", price=900, currency="EUR")
    other = uow.accounts.create(name="Other").id
    jan = draft(uow, account_id, pro)
    uow.billing.finalize(account_id=account_id, invoice_id=jan.id, now=at(2031, 1, 31))
    feb = draft(uow, other, pro)
    uow.billing.finalize(account_id=other, invoice_id=feb.id, now=at(2031, 2, 1))
    eur = draft(uow, uow.accounts.create(name="Euro").id, euro)
    uow.billing.finalize(account_id=eur.account_id, invoice_id=eur.id, now=at(2031, 2, 10))
    uow.billing.record_payment(**pay_args(jan, amount_minor=2500, now=at(2031, 2, 2)))
    uow.billing.void(account_id=other, invoice_id=feb.id, now=at(2031, 3, 1))
    rows = uow.billing.monthly_revenue(start_month=date(2031, 1, 1), end_month=date(2031, 3, 31))
    assert [tuple(r.model_dump().values()) for r in rows] == [
        # month, currency, invoices, invoiced, revenue, payments, received
        (date(2031, 1, 1), "USD", 1, 2500, 2500, 0, 0),
        (date(2031, 2, 1), "EUR", 1, 900, 900, 0, 0),
        (date(2031, 2, 1), "USD", 1, 2500, 2500, 1, 2500),
        (date(2031, 3, 1), "USD", 0, 0, -2500, 0, 0),
    ]
    only_feb = uow.billing.monthly_revenue(
        start_month=date(2031, 2, 14), end_month=date(2031, 2, 1)
    )
    assert [(r.month, r.currency) for r in only_feb] == [
        (date(2031, 2, 1), "EUR"),
        (date(2031, 2, 1), "USD"),
    ]


# --- committed work and concurrency (fresh databases) ----------------------------------------


def test_committed_billing_passes_the_ledger_check_and_every_transaction_sums_to_zero(
    db: Database,
) -> None:
    pro = publish(db, "pro", price=2500)
    a, b, c = (db.accounts.create(name=n).id for n in "ABC")
    paid = issue(db, a, pro)
    pay(db, paid, "pi_1", 1000)
    pay(db, paid, "pi_2", 2000)  # overpaid by 500
    voided = issue(db, b, pro)
    pay(db, voided, "pi_3", 700)
    db.billing.void(account_id=b, invoice_id=voided.id)
    lost = issue(db, c, pro)
    db.billing.mark_uncollectible(account_id=c, invoice_id=lost.id)
    with db.connection() as conn:
        assert unbalanced(conn) == []
        row = conn.execute("SELECT count(*) FROM ledger_transactions").fetchone()
    assert row is not None
    assert row[0] == 8
    total = dict.fromkeys(ledger(db, a), 0)
    for account in (a, b, c):
        for key, value in ledger(db, account).items():
            total[key] += value
    assert total == {
        "receivable_minor": 0,
        "credit_minor": 500 + 700,
        "collected_minor": 3000 + 700,
        "revenue_minor": 2500 + 2500,
        "written_off_minor": 2500,
        "refunds_pending_minor": 0,
    }


def test_two_threads_generating_the_same_invoice_make_one_invoice_with_one_set_of_lines(
    db: Database,
) -> None:
    basic = publish(db, "basic", price=1000)
    pro = publish(db, "pro", price=2500)
    account_id = db.accounts.create(name="Racy").id
    sub = db.subscriptions.start(account_id=account_id, plan_id=basic.id, now=T0)
    upgrade = db.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=sub.id, plan_id=pro.id, now=MID
    )
    barrier = threading.Barrier(2)
    results: list[InvoiceWithLines] = []
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            with db.unit_of_work() as uow:
                barrier.wait(timeout=5)
                invoice = uow.billing.generate_invoice(
                    account_id=account_id,
                    subscription_id=upgrade.subscription.id,
                    period_start=T0,
                    period_end=FEB,
                )
                time.sleep(0.2)  # keep it uncommitted while the other one tries
            results.append(invoice)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=generate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert len(results) == 2
    assert same(results[0], results[1])
    assert len(results[0].lines) == 3
    with db.connection() as conn:
        assert count(conn, "invoices", account_id) == 1
        assert count(conn, "invoice_lines", account_id) == 3


def test_concurrent_finalisations_get_unique_gap_free_numbers(db: Database) -> None:
    pro = publish(db, "pro", price=2500)
    drafts = [draft(db, db.accounts.create(name=f"Busy {i}").id, pro) for i in range(8)]
    barrier = threading.Barrier(len(drafts))
    numbers: list[str] = []
    errors: list[BaseException] = []

    def finalize(account_id: int, invoice_id: int) -> None:
        try:
            barrier.wait(timeout=5)
            with db.unit_of_work() as uow:
                issued = uow.billing.finalize(
                    account_id=account_id, invoice_id=invoice_id, now=at(2032, 6, 1)
                )
                time.sleep(0.02)  # hold the counter row until commit
            assert issued.number is not None
            numbers.append(issued.number)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finalize, args=(d.account_id, d.id)) for d in drafts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert sorted(numbers) == [f"2032-{n:06d}" for n in range(1, 9)]


def test_a_finalisation_rolled_back_by_its_unit_of_work_leaves_no_gap(db: Database) -> None:
    pro = publish(db, "pro", price=2500)
    account_id = db.accounts.create(name="Careful").id
    first = issue(db, account_id, pro, start=at(2026, 1, 1))
    second = draft(db, db.accounts.create(name="Second").id, pro)
    with pytest.raises(RuntimeError), db.unit_of_work() as uow:
        rolled_back = uow.billing.finalize(
            account_id=second.account_id, invoice_id=second.id, now=first.finalized_at
        )
        assert rolled_back.number is not None
        raise RuntimeError("the caller gives up")
    again = db.billing.get_invoice(account_id=second.account_id, invoice_id=second.id)
    assert again is not None
    assert (again.status, again.number) == ("draft", None)
    assert db.billing.transactions(account_id=second.account_id).items == []
    reissued = db.billing.finalize(
        account_id=second.account_id, invoice_id=second.id, now=first.finalized_at
    )
    assert first.number == "2026-000001"
    assert rolled_back.number == reissued.number == "2026-000002"


def test_two_threads_recording_one_provider_payment_store_it_once(db: Database) -> None:
    pro = publish(db, "pro", price=2500)
    account_id = db.accounts.create(name="Webhooks").id
    invoice = issue(db, account_id, pro)
    barrier = threading.Barrier(2)
    results: list[RecordedPayment] = []
    errors: list[BaseException] = []

    def record() -> None:
        try:
            barrier.wait(timeout=5)
            with db.unit_of_work() as uow:
                results.append(pay(uow, invoice, "pi_same", 2500))
                time.sleep(0.1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=record) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert sorted(r.duplicate for r in results) == [False, True]
    assert results[0].payment == results[1].payment
    with db.connection() as conn:
        assert count(conn, "payments", account_id) == 1
    kinds = [t.kind for t in db.billing.transactions(account_id=account_id).items]
    assert kinds == ["payment", "invoice_finalized"]
    assert ledger(db, account_id)["collected_minor"] == 2500
