"""Billing arithmetic without a database: boundaries of every rule in ``datalayer._billing``.

Expected amounts are worked out by hand in the comments, never with the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from datalayer._billing import (
    CARRIED,
    CreditPlan,
    Line,
    MeterUsage,
    Period,
    above,
    allocate_refund,
    base_fee,
    base_line,
    carried_credit,
    credit_applied_postings,
    credit_note_postings,
    finalized_postings,
    overage_amount,
    payment_postings,
    pending_lines,
    plan_credit,
    postings,
    quantity_text,
    refund_postings,
    round_half_up,
    split_credit_note,
    usage_lines,
    voided_postings,
    with_carry,
    write_off_postings,
)
from datalayer.models.billing import Invoice, InvoiceLine, PendingItem

JAN = datetime(2026, 1, 1, tzinfo=UTC)
FEB = datetime(2026, 2, 1, tzinfo=UTC)  # January has 31 days
PERIOD = Period(id=7, start=JAN, end=FEB, closes_at=FEB)
D = Decimal


def meter(accepted: str, *, included: str = "100", price: str = "5", **before: Any) -> MeterUsage:
    return MeterUsage("api_calls", D(included), D(price), D(accepted), **before)


def only(lines: list[Line]) -> Line:
    assert len(lines) == 1, lines
    return lines[0]


# -- rounding and overage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "rounded"),
    [("0.5", 1), ("1.5", 2), ("2.4999", 2), ("-0.5", -1), ("-1.5", -2), ("-0.4", 0), ("3", 3)],
)
def test_rounding_sends_halves_away_from_zero(value: str, rounded: int) -> None:
    assert round_half_up(D(value)) == rounded


def test_no_usage_costs_nothing_and_is_nothing_above_the_allowance() -> None:
    assert above(D(0), D(100)) == 0
    assert overage_amount(D(0), D(100), D(5)) == 0
    assert above(D(0), D(0)) == 0
    assert overage_amount(D(0), D(0), D(5)) == 0


def test_usage_exactly_at_the_allowance_costs_nothing() -> None:
    assert above(D(100), D(100)) == 0
    assert overage_amount(D(100), D(100), D(5)) == 0


def test_one_unit_over_the_allowance_costs_one_unit_price() -> None:
    assert above(D(101), D(100)) == 1
    assert overage_amount(D(101), D(100), D(5)) == 5


def test_a_fraction_over_the_allowance_is_billed_exactly_then_rounded_once() -> None:
    # 0.5 units at 3 = 1.5 minor units -> 2; 0.1 at 4 = 0.4 -> 0; 1209 - 1000 = 209 at 0.25 = 52.25
    assert above(D("100.5"), D(100)) == D("0.5")
    assert overage_amount(D("100.5"), D(100), D(3)) == 2
    assert overage_amount(D("100.1"), D(100), D(4)) == 0
    assert overage_amount(D(1209), D(1000), D("0.25")) == 52


def test_usage_below_the_allowance_is_never_a_negative_overage() -> None:
    assert above(D(40), D(100)) == 0
    assert overage_amount(D(40), D(100), D(5)) == 0


# -- base fee ---------------------------------------------------------------------------------


def test_a_free_plan_has_a_zero_base_fee_whatever_the_trial() -> None:
    assert base_fee(0, JAN, FEB, None) == 0
    assert base_fee(0, JAN, FEB, JAN + timedelta(days=10)) == 0


def test_the_base_fee_of_a_whole_period_is_the_price() -> None:
    assert base_fee(3100, JAN, FEB, None) == 3100


def test_a_trial_ending_exactly_at_the_period_end_leaves_nothing_to_bill() -> None:
    assert base_fee(3100, JAN, FEB, FEB) == 0
    assert base_fee(3100, JAN, FEB, FEB + timedelta(days=3)) == 0  # and beyond it


def test_a_trial_ending_at_or_before_the_period_start_bills_the_whole_period() -> None:
    assert base_fee(3100, JAN, FEB, JAN) == 3100
    assert base_fee(3100, JAN, FEB, JAN - timedelta(days=3)) == 3100


def test_a_trial_ending_mid_period_bills_the_rest_of_it_rounded_half_up_once() -> None:
    # 10 of 31 days trial: 21/31 of 3100 = 2100 exactly.
    assert base_fee(3100, JAN, FEB, JAN + timedelta(days=10)) == 2100
    # 1000 * 21/31 = 677.419... -> 677; 1000 * 15.5/31 = 500 exactly; 1 * 15.5/31 = 0.5 -> 1.
    assert base_fee(1000, JAN, FEB, JAN + timedelta(days=10)) == 677
    assert base_fee(1000, JAN, FEB, JAN + timedelta(days=15, hours=12)) == 500
    assert base_fee(1, JAN, FEB, JAN + timedelta(days=15, hours=12)) == 1
    # a microsecond of the period left: 3100 * 1 / 2_678_400_000_000 -> 0.
    assert base_fee(3100, JAN, FEB, FEB - timedelta(microseconds=1)) == 0


def test_the_base_fee_counts_seconds_and_microseconds_not_only_days() -> None:
    # [JAN, JAN + 1 s + 1 us): price 2_000_002 over 1_000_001 us; trial to JAN + 1 us leaves
    # 1_000_000 us: 2_000_000.
    end = JAN + timedelta(seconds=1, microseconds=1)
    assert base_fee(2_000_002, JAN, end, JAN + timedelta(microseconds=1)) == 2_000_000
    # Whole days of 86,400 s: 2 days, trial 1 day and 1 s -> 86,399 s of 172,800 s of 172,800.
    two_days = JAN + timedelta(days=2)
    assert base_fee(172_800, JAN, two_days, JAN + timedelta(days=1, seconds=1)) == 86_399
    # Half of one second of a one-second period: a half minor unit, rounded up.
    assert base_fee(1, JAN, JAN + timedelta(seconds=1), JAN + timedelta(microseconds=500_000)) == 1
    assert base_fee(1, JAN, JAN + timedelta(seconds=1), JAN + timedelta(microseconds=500_001)) == 0


def test_the_base_line_names_the_plan_and_period_and_the_trial_only_when_there_was_one() -> None:
    line = base_line("Pro", 3100, PERIOD, None)
    assert line == Line(
        kind="subscription",
        description="Pro, 2026-01-01 to 2026-02-01",
        amount_minor=3100,
        unit_amount_minor=D(3100),
        period_start=JAN,
        period_end=FEB,
        billing_period_id=7,
    )
    assert base_line("Pro", 3100, PERIOD, JAN).description == "Pro, 2026-01-01 to 2026-02-01"
    trial = base_line("Pro", 3100, PERIOD, JAN + timedelta(days=10))
    assert trial.description == "Pro, 2026-01-01 to 2026-02-01 (trial until 2026-01-11)"
    assert trial.amount_minor == trial.unit_amount_minor == 2100
    long_trial = base_line("Pro", 3100, PERIOD, FEB + timedelta(days=30))
    assert long_trial.description == "Pro, 2026-01-01 to 2026-02-01 (trial until 2026-02-01)"
    assert long_trial.amount_minor == 0


def test_a_free_plan_still_gets_its_zero_base_line() -> None:
    line = base_line("Free", 0, PERIOD, None)
    assert (line.kind, line.amount_minor, line.unit_amount_minor) == ("subscription", 0, 0)


def test_a_line_without_a_quantity_counts_one() -> None:
    assert base_line("Pro", 3100, PERIOD, None).quantity == 1
    assert with_carry(_lines(0, -1))[-1].quantity == 1


# -- usage lines ------------------------------------------------------------------------------


def test_a_meter_with_no_usage_gets_no_line() -> None:
    assert usage_lines(PERIOD, [meter("0")], own=True) == []
    assert usage_lines(PERIOD, [meter("0", included="0")], own=True) == []


def test_usage_exactly_at_the_allowance_gets_a_zero_usage_line_that_counts_it() -> None:
    line = only(usage_lines(PERIOD, [meter("100")], own=True))
    assert line == Line(
        kind="usage",
        description="api_calls: 100 used, 100 included",
        amount_minor=0,
        quantity=D(0),
        unit_amount_minor=D(5),
        meter_code="api_calls",
        period_start=JAN,
        period_end=FEB,
        billing_period_id=7,
        metered_quantity=D(100),
    )


def test_one_unit_over_the_allowance_bills_one_unit() -> None:
    line = only(usage_lines(PERIOD, [meter("101")], own=True))
    assert (line.kind, line.amount_minor, line.quantity, line.metered_quantity) == (
        "usage",
        5,
        D(1),
        D(101),
    )
    assert line.description == "api_calls: 101 used, 100 included"


def test_a_free_plans_usage_is_counted_at_no_charge() -> None:
    line = only(usage_lines(PERIOD, [meter("250", price="0")], own=True))
    assert (line.amount_minor, line.quantity, line.metered_quantity) == (0, D(150), D(250))


def test_each_meter_gets_its_own_line_in_the_order_given() -> None:
    lines = usage_lines(
        PERIOD,
        [MeterUsage("b", D(0), D(2), D(3)), MeterUsage("a", D(10), D(1), D(0))],
        own=True,
    )
    assert [(line.meter_code, line.amount_minor) for line in lines] == [("b", 6)]
    lines = usage_lines(
        PERIOD,
        [MeterUsage("b", D(0), D(2), D(3)), MeterUsage("a", D(1), D(1), D(4))],
        own=True,
    )
    assert [(line.meter_code, line.amount_minor) for line in lines] == [("b", 6), ("a", 3)]


def test_a_settled_meter_gets_no_line_again() -> None:
    assert (
        usage_lines(PERIOD, [meter("101", billed_quantity=D(101), billed_amount=5)], own=True) == []
    )
    # Settled at the allowance: nothing changed, nothing to say.
    assert usage_lines(PERIOD, [meter("100", billed_quantity=D(100))], own=False) == []


def test_late_usage_after_billing_is_an_adjustment_of_the_difference() -> None:
    # Billed 110 (10 over = 50); now 113 accepted: 13 over = 65, so +15 for +3 units.
    line = only(
        usage_lines(PERIOD, [meter("113", billed_quantity=D(110), billed_amount=50)], own=True)
    )
    assert line.kind == "adjustment"
    assert line.description == (
        "api_calls: usage of 2026-01-01 to 2026-02-01 changed by +3 after it was billed"
    )
    assert (line.amount_minor, line.quantity, line.metered_quantity) == (15, D(3), D(3))


def test_a_cancellation_after_billing_is_a_negative_adjustment() -> None:
    # Billed 110 (50); now 104: 4 over = 20, so -30 for -6 units.
    line = only(
        usage_lines(PERIOD, [meter("104", billed_quantity=D(110), billed_amount=50)], own=True)
    )
    assert line.kind == "adjustment"
    assert "changed by -6 after" in line.description
    assert (line.amount_minor, line.quantity, line.metered_quantity) == (-30, D(6), D(-6))


def test_a_change_inside_the_allowance_is_counted_at_no_charge() -> None:
    line = only(usage_lines(PERIOD, [meter("60", billed_quantity=D(50))], own=True))
    assert line.kind == "adjustment"
    assert (line.amount_minor, line.quantity, line.metered_quantity) == (0, D(0), D(10))


def test_an_amount_owed_with_the_quantity_settled_still_gets_a_line() -> None:
    # The price rule changed what 101 units cost (billed 4, now 5): the quantity is settled.
    line = only(
        usage_lines(PERIOD, [meter("101", billed_quantity=D(101), billed_amount=4)], own=True)
    )
    assert (line.kind, line.amount_minor, line.metered_quantity) == ("adjustment", 1, D(0))


def test_a_first_bill_of_another_periods_usage_is_an_adjustment_naming_that_period() -> None:
    line = only(usage_lines(PERIOD, [meter("101")], own=False))
    assert line.kind == "adjustment"
    assert line.description == (
        "api_calls: usage of 2026-01-01 to 2026-02-01 changed by +101 after it was billed"
    )
    assert (line.amount_minor, line.billing_period_id, line.period_end) == (5, 7, FEB)


def test_an_adjustment_names_the_period_until_it_closes_not_until_it_ends() -> None:
    closing_later = Period(id=8, start=JAN, end=FEB, closes_at=FEB + timedelta(days=3))
    line = only(usage_lines(closing_later, [meter("101", billed_quantity=D(1))], own=True))
    assert "usage of 2026-01-01 to 2026-02-04 changed" in line.description
    assert (line.period_start, line.period_end) == (JAN, FEB + timedelta(days=3))
    assert closing_later.span == "2026-01-01 to 2026-02-04"


def test_only_what_was_billed_before_makes_a_line_an_adjustment() -> None:
    # Billed an amount but no quantity (or the reverse): not the first bill of the meter.
    assert only(usage_lines(PERIOD, [meter("0", billed_amount=5)], own=True)).kind == "adjustment"
    assert (
        only(
            usage_lines(PERIOD, [meter("101", billed_quantity=D(1), billed_amount=0)], own=True)
        ).kind
        == "adjustment"
    )


# -- descriptions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [("1209", "1209"), ("100.250", "100.25"), ("100.000", "100"), ("1E+3", "1000"), ("0.5", "0.5"),
     ("10", "10"), ("0", "0")],
)  # fmt: skip
def test_quantities_read_without_exponent_or_trailing_zeros(value: str, text: str) -> None:
    assert quantity_text(D(value)) == text


# -- pending items and carry-over -------------------------------------------------------------


def test_each_pending_item_becomes_one_line_of_its_amount_and_service_period() -> None:
    item = PendingItem(
        account_id=1,
        id=41,
        chain_id=2,
        subscription_id=3,
        kind="proration",
        description="Unused time on Basic",
        amount_minor=-700,
        currency="USD",
        service_start=JAN + timedelta(days=10),
        service_end=FEB,
        invoice_id=None,
        created_at=JAN,
    )
    assert pending_lines([item]) == [
        Line(
            kind="proration",
            description="Unused time on Basic",
            amount_minor=-700,
            unit_amount_minor=D(-700),
            period_start=JAN + timedelta(days=10),
            period_end=FEB,
            pending_item_id=41,
        )
    ]
    assert pending_lines([]) == []


def _lines(*amounts: int) -> list[Line]:
    return [Line(kind="proration", description=f"l{a}", amount_minor=a) for a in amounts]


def test_a_zero_total_invoice_gets_no_carry_over_line() -> None:
    assert with_carry(_lines(500, -500)) == _lines(500, -500)
    assert with_carry([]) == []


def test_credit_one_minor_unit_beyond_the_charges_is_carried() -> None:
    assert with_carry(_lines(500, -501)) == [
        *_lines(500, -501),
        Line(kind="adjustment", description=CARRIED, amount_minor=1),
    ]


def test_charges_above_the_credit_get_no_carry_over_line() -> None:
    assert with_carry(_lines(501, -500)) == _lines(501, -500)


def _line(kind: str, amount: int, meter_code: str | None = None) -> InvoiceLine:
    return InvoiceLine(
        account_id=1, id=1, invoice_id=1, kind=kind, description="x",  # type: ignore[arg-type]
        meter_code=meter_code, quantity=D(1), unit_amount_minor=D(amount), amount_minor=amount,
        period_start=None, period_end=None, billing_period_id=None, metered_quantity=None,
        pending_item_id=None,
    )  # fmt: skip


def test_the_carried_credit_is_the_meterless_adjustments_only() -> None:
    lines = [
        _line("subscription", 1000),
        _line("adjustment", -30, "api_calls"),  # a late cancellation: not a carry-over
        _line("proration", -1200),
        _line("adjustment", 230),
    ]
    assert carried_credit(lines) == 230
    assert carried_credit(lines[:3]) == 0


# -- credit -----------------------------------------------------------------------------------


def test_credit_is_used_oldest_first_up_to_the_amount_due() -> None:
    plan = plan_credit([(1, 300), (2, 500), (3, 900)], 600)
    assert plan == CreditPlan([(1, 300), (2, 300)])
    assert plan.total == 600


def test_credit_exactly_covering_the_amount_due_stops_there() -> None:
    assert plan_credit([(1, 300), (2, 500)], 300) == CreditPlan([(1, 300)])


def test_credit_short_of_the_amount_due_is_used_whole() -> None:
    plan = plan_credit([(1, 300), (2, 0), (3, 1)], 1000)
    assert plan == CreditPlan([(1, 300), (3, 1)])  # an empty grant is not a use
    assert plan.total == 301


def test_credit_stops_when_the_last_minor_unit_is_covered() -> None:
    assert plan_credit([(1, 300), (2, 5), (3, 5)], 301) == CreditPlan([(1, 300), (2, 1)])
    assert plan_credit([(1, 1), (2, 5)], 1) == CreditPlan([(1, 1)])
    assert plan_credit([(1, 1), (2, 5)], 2) == CreditPlan([(1, 1), (2, 1)])


@pytest.mark.parametrize("due", [0, -5])
def test_nothing_due_uses_no_credit(due: int) -> None:
    plan = plan_credit([(1, 300)], due)
    assert plan.uses == []
    assert plan.total == 0


def test_a_credit_note_takes_off_the_amount_due_first_then_what_was_paid() -> None:
    assert split_credit_note(300, 1000) == (300, 0)
    assert split_credit_note(1000, 1000) == (1000, 0)
    assert split_credit_note(1000, 400) == (400, 600)
    assert split_credit_note(1000, 0) == (0, 1000)
    assert split_credit_note(1000, -1) == (0, 1000)


def test_a_refund_is_spread_over_payments_in_order() -> None:
    assert allocate_refund(700, [(1, 500), (2, 0), (3, 500)]) == [(1, 500), (3, 200)]
    assert allocate_refund(500, [(1, 500), (2, 500)]) == [(1, 500)]
    assert allocate_refund(0, [(1, 500)]) == []
    assert allocate_refund(501, [(1, 500), (2, 500)]) == [(1, 500), (2, 1)]
    assert allocate_refund(2, [(1, 1), (2, 0), (3, 1)]) == [(1, 1), (3, 1)]


def test_a_refund_the_payments_cannot_cover_is_a_bug_not_a_partial_refund() -> None:
    with pytest.raises(ValueError, match="cannot cover a refund of 1001"):
        allocate_refund(1001, [(1, 500), (2, 500)])


# -- postings ---------------------------------------------------------------------------------


def test_postings_merge_per_account_and_drop_zeros() -> None:
    assert postings(("cash", 5), ("receivable", -3), ("cash", 0), ("receivable", -2)) == [
        ("cash", 5),
        ("receivable", -5),
    ]
    assert postings(("cash", 5), ("cash", -5)) == []


def test_unbalanced_postings_are_refused() -> None:
    with pytest.raises(AssertionError, match="unbalanced"):
        postings(("cash", 5), ("receivable", -4))
    with pytest.raises(AssertionError, match="unbalanced"):
        postings(("cash", 1))


def _invoice(**amounts: int) -> Invoice:
    fields: dict[str, Any] = {
        "account_id": 1, "id": 1, "subscription_id": 1, "chain_id": 1, "billing_period_id": 1,
        "number": None, "status": "open", "currency": "USD", "period_start": JAN,
        "period_end": FEB, "subtotal_minor": 0, "tax_minor": 0, "total_minor": 0,
        "credit_applied_minor": 0, "credited_minor": 0, "amount_paid_minor": 0,
        "amount_due_minor": 0, "finalized_at": None, "due_at": None, "paid_at": None,
        "voided_at": None, "created_at": JAN, "updated_at": JAN,
    }  # fmt: skip
    return Invoice(**{**fields, **amounts})


def test_finalising_debits_receivable_and_credits_revenue_and_carried_credit() -> None:
    assert finalized_postings(_invoice(total_minor=1000), [_line("subscription", 1000)]) == [
        ("receivable", 1000),
        ("revenue", -1000),
    ]
    # Charges 1000, credits 1200: total 0 with 200 carried to customer credit.
    lines = [_line("subscription", 1000), _line("proration", -1200), _line("adjustment", 200)]
    assert finalized_postings(_invoice(total_minor=0), lines) == [
        ("revenue", 200),
        ("customer_credit", -200),
    ]


def test_credit_applied_payments_credit_notes_and_refunds_balance() -> None:
    assert credit_applied_postings(300) == [("customer_credit", 300), ("receivable", -300)]
    assert payment_postings(1000, 800) == [
        ("cash", 1000),
        ("receivable", -800),
        ("customer_credit", -200),
    ]
    assert payment_postings(500, 500) == [("cash", 500), ("receivable", -500)]
    assert credit_note_postings(300, 200, refund=True) == [
        ("revenue", 500),
        ("receivable", -300),
        ("refunds_payable", -200),
    ]
    assert credit_note_postings(300, 200, refund=False) == [
        ("revenue", 500),
        ("receivable", -300),
        ("customer_credit", -200),
    ]
    assert refund_postings(200) == [("refunds_payable", 200), ("cash", -200)]


def test_voiding_reverses_revenue_and_receivable_and_returns_what_was_given() -> None:
    # Total 1000 of which 100 carried; credit notes 150 (50 of it after payment); 200 credit
    # applied and 300 paid; due 1000 - 200 - 100 - 300 = 400.
    invoice = _invoice(
        total_minor=1000,
        credited_minor=150,
        credit_applied_minor=200,
        amount_paid_minor=300,
        amount_due_minor=400,
    )
    # revenue back: 1000 - 100 - 150 = 750; given back as credit: 200 + 300 - 50 = 450,
    # less the 100 carried that finalising had already made credit: 350.
    assert voided_postings(invoice, credited_post=50, carried=100) == [
        ("receivable", -400),
        ("revenue", 750),
        ("customer_credit", -350),
    ]


def test_writing_off_moves_what_is_still_due_to_bad_debt() -> None:
    assert write_off_postings(_invoice(total_minor=1000, amount_due_minor=400)) == [
        ("bad_debt", 400),
        ("receivable", -400),
    ]


def test_a_change_is_signed_and_no_change_is_not() -> None:
    def changed(accepted: str, billed: str, billed_amount: int) -> str:
        usage = meter(accepted, billed_quantity=D(billed), billed_amount=billed_amount)
        return only(usage_lines(PERIOD, [usage], own=True)).description

    # The price rule changed what 101 units cost (billed 4, now 5): quantity settled.
    assert "changed by 0 after" in changed("101", "101", 4)
    assert "changed by +1 after" in changed("111", "110", 50)
    assert "changed by -1 after" in changed("109", "110", 50)
    assert "changed by +0.5 after" in changed("0.5", "0", 1)
