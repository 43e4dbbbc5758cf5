"""The billing cycle by hand-computed examples: late usage, cancellations, credit, credit
notes and refunds, standalone adjustments, and the billing run.

The plan of every example: a base fee of 1000 a month, 100 API calls included,
2 per call above. Clocks are explicit and near today, so that events fall in
partitions that exist.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from datalayer import (
    AlreadyExists,
    Database,
    InvalidInput,
    InvalidTransition,
    NotFound,
    PlanMeterSpec,
)
from datalayer._ops.partitions import add_months, month_start
from datalayer._window import ACCEPTED_AGE
from datalayer.errors import map_error
from datalayer.models.billing import Invoice, InvoiceWithLines
from datalayer.models.subscriptions import Subscription

pytestmark = pytest.mark.both_apis

T0 = month_start(datetime.now(UTC) - ACCEPTED_AGE)  # the first period's start
T1, T2, T3 = (add_months(T0, n) for n in (1, 2, 3))  # period ends
HOUR = timedelta(hours=1)


@pytest.fixture
def plan_id(db: Database) -> int:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum') ON CONFLICT DO NOTHING"
        )
    draft = db.plans.create_draft(
        code="metered",
        name="Metered",
        billing_interval="month",
        base_price_minor=1000,
        currency="USD",
        meters=[
            PlanMeterSpec(
                meter_code="api_calls",
                included_quantity=Decimal(100),
                limit_kind="soft",
                overage_unit_price_minor=Decimal(2),
            )
        ],
    )
    return db.plans.publish(plan_id=draft.id).id


@pytest.fixture
def sub(db: Database, plan_id: int) -> Subscription:
    account = db.accounts.create(name="Metered Co")
    return db.subscriptions.start(account_id=account.id, plan_id=plan_id, now=T0)


def use(
    db: Database, sub: Subscription, key: str, quantity: int, at: datetime, now: datetime
) -> None:
    """Record ``quantity`` API calls that happened ``at``, as received ``now``."""
    result = db.usage.record_batch(
        events=[
            {
                "account_id": sub.account_id,
                "meter_code": "api_calls",
                "quantity": Decimal(quantity),
                "occurred_at": at,
                "idempotency_key": key,
            }
        ],
        now=now,
    )
    assert (result.inserted, result.rejected) == (1, [])


def invoices(db: Database, sub: Subscription) -> list[InvoiceWithLines]:
    """The account's invoices with their lines, oldest first."""
    listed = db.billing.invoices(account_id=sub.account_id, limit=100).items
    found = [db.billing.get_invoice(account_id=sub.account_id, invoice_id=i.id) for i in listed]
    return sorted((i for i in found if i is not None), key=lambda i: i.id)


def lines(invoice: InvoiceWithLines) -> list[tuple[Any, ...]]:
    return [
        (line.kind, line.meter_code, line.metered_quantity, line.amount_minor)
        for line in invoice.lines
    ]


def billed(db: Database, sub: Subscription) -> dict[datetime, tuple[Decimal, int]]:
    """Per period start: the quantity and money billed for API calls, summed over every line."""
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT p.period_start, sum(l.metered_quantity), sum(l.amount_minor)"
            " FROM invoice_lines l JOIN billing_periods p"
            " ON p.account_id = l.account_id AND p.id = l.billing_period_id"
            " WHERE l.account_id = %s AND l.meter_code = 'api_calls' GROUP BY 1",
            [sub.account_id],
        ).fetchall()
    return {start: (Decimal(q), int(a)) for start, q, a in rows}


# -- late usage ------------------------------------------------------------------------------


def test_a_late_event_after_finalisation_is_billed_on_the_next_invoice_exactly(
    db: Database, sub: Subscription
) -> None:
    use(db, sub, "a", 150, T0 + HOUR, T0 + 2 * HOUR)
    first = db.billing.run(now=T1 + 2 * HOUR)
    assert (first.renewed, first.generated, first.finalized, first.failed) == (1, 1, 1, 0)
    (jan,) = invoices(db, sub)
    assert jan.status == "open"
    assert lines(jan) == [
        ("subscription", None, None, 1000),
        ("usage", "api_calls", Decimal(150), 100),  # 50 above the 100 included, at 2
    ]
    # 30 more calls of the first period arrive after its invoice was issued.
    use(db, sub, "late", 30, T1 - HOUR, T1 + 3 * HOUR)
    db.billing.run(now=T2 + 2 * HOUR)
    _, feb = invoices(db, sub)
    assert lines(feb) == [
        ("subscription", None, None, 1000),
        ("adjustment", "api_calls", Decimal(30), 60),  # overage(180) - billed 100 = 160 - 100
    ]
    assert feb.lines[1].period_start == T0
    assert feb.lines[1].description.startswith(f"api_calls: usage of {T0:%Y-%m-%d}")
    assert billed(db, sub)[T0] == (Decimal(180), 160)  # as if the 180 were billed at once


def test_usage_arriving_in_the_grace_hour_lands_on_the_invoice_itself(
    db: Database, sub: Subscription
) -> None:
    use(db, sub, "a", 150, T0 + HOUR, T0 + 2 * HOUR)
    early = db.billing.run(now=T1 + timedelta(minutes=10))  # within the grace hour
    assert (early.generated, early.finalized) == (1, 0)
    use(db, sub, "b", 20, T1 - HOUR, T1 + timedelta(minutes=20))
    again = db.billing.run(now=T1 + timedelta(minutes=30))
    assert (again.generated, again.refreshed, again.finalized) == (0, 1, 0)
    last = db.billing.run(now=T1 + 2 * HOUR)
    assert (last.refreshed, last.finalized) == (0, 1)
    (jan,) = invoices(db, sub)
    assert jan.status == "open"
    assert lines(jan)[1] == ("usage", "api_calls", Decimal(170), 140)


def test_a_cancelled_event_that_was_billed_comes_back_as_a_negative_adjustment(
    db: Database, sub: Subscription
) -> None:
    use(db, sub, "a", 150, T0 + HOUR, T0 + 2 * HOUR)
    # Cancellations follow the real clock's window: this event is recent enough.
    use(db, sub, "b", 30, T1 - timedelta(minutes=1), T1)
    db.billing.run(now=T1 + 2 * HOUR)
    assert billed(db, sub)[T0] == (Decimal(180), 160)
    db.usage.cancel(account_id=sub.account_id, idempotency_key="b", reason="test traffic")
    db.billing.run(now=T2 + 2 * HOUR)
    _, feb = invoices(db, sub)
    assert lines(feb)[1] == ("adjustment", "api_calls", Decimal(-30), -60)
    assert billed(db, sub)[T0] == (Decimal(150), 100)


def test_late_usage_of_an_ended_chain_gets_a_standalone_adjustment_invoice(
    db: Database, sub: Subscription
) -> None:
    use(db, sub, "a", 150, T0 + HOUR, T0 + 2 * HOUR)
    ended = T0 + timedelta(days=10)
    db.subscriptions.cancel_now(account_id=sub.account_id, subscription_id=sub.id, now=ended)
    first = db.billing.run(now=ended + 2 * HOUR)
    assert (first.generated, first.finalized) == (1, 1)  # the period closed at the cancel
    use(db, sub, "late", 10, ended - HOUR, ended + 3 * HOUR)
    second = db.billing.run(now=ended + 4 * HOUR)
    assert second.adjustment_invoices == 1
    third = db.billing.run(now=ended + 6 * HOUR)  # its grace (an hour from its creation) is over
    assert third.finalized == 1
    _, standalone = invoices(db, sub)
    assert standalone.billing_period_id is None
    assert standalone.chain_id == sub.chain_id
    assert lines(standalone) == [("adjustment", "api_calls", Decimal(10), 20)]
    assert standalone.status == "open"
    assert billed(db, sub)[T0] == (Decimal(160), 120)
    fourth = db.billing.run(now=ended + 8 * HOUR)
    assert (fourth.generated, fourth.adjustment_invoices, fourth.finalized) == (0, 0, 0)


# -- upgrades and trials ---------------------------------------------------------------------


def test_a_trial_is_not_billed_and_the_rest_of_its_period_is(db: Database) -> None:
    draft = db.plans.create_draft(
        code="trialled",
        name="Trialled",
        billing_interval="day",
        interval_count=10,
        base_price_minor=1000,
        currency="USD",
        trial_days=4,
    )
    plan = db.plans.publish(plan_id=draft.id)
    account = db.accounts.create(name="Trying")
    sub = db.subscriptions.start(account_id=account.id, plan_id=plan.id, trial=True, now=T0)
    db.billing.run(now=T0 + timedelta(days=10, hours=2))
    (first,) = invoices(db, sub)
    assert lines(first) == [("subscription", None, None, 600)]  # 6 of the 10 days
    assert first.lines[0].description.endswith(f"(trial until {T0 + timedelta(days=4):%Y-%m-%d})")


# -- credit --------------------------------------------------------------------------------------


def test_an_overpayment_is_applied_to_the_next_invoice_oldest_credit_first(
    db: Database, sub: Subscription
) -> None:
    db.billing.run(now=T1 + 2 * HOUR)
    (jan,) = invoices(db, sub)
    paid = db.billing.record_payment(
        account_id=sub.account_id, invoice_id=jan.id, provider="stripe",
        provider_payment_id="pi_1", amount_minor=1500, currency="USD", now=T1 + 3 * HOUR,
    )  # fmt: skip
    assert (paid.invoice.status, paid.invoice.amount_paid_minor) == ("paid", 1000)
    (grant,) = db.billing.credits(account_id=sub.account_id)
    assert (grant.amount_minor, grant.remaining_minor, grant.source) == (500, 500, "overpayment")
    db.billing.run(now=T2 + 2 * HOUR)
    _, feb = invoices(db, sub)
    assert (feb.total_minor, feb.credit_applied_minor, feb.amount_due_minor) == (1000, 500, 500)
    (used,) = db.billing.credits(account_id=sub.account_id)
    assert used.remaining_minor == 0
    (balance,) = db.billing.balance(account_id=sub.account_id)
    assert (balance.receivable_minor, balance.credit_minor) == (500, 0)
    kinds = [t.kind for t in db.billing.transactions(account_id=sub.account_id).items]
    assert kinds[:2] == ["credit", "invoice_finalized"]


def test_credit_that_covers_an_invoice_pays_it_at_finalisation(
    db: Database, sub: Subscription
) -> None:
    db.billing.run(now=T1 + 2 * HOUR)
    (jan,) = invoices(db, sub)
    db.billing.record_payment(
        account_id=sub.account_id, invoice_id=jan.id, provider="stripe",
        provider_payment_id="pi_1", amount_minor=2500, currency="USD", now=T1 + 3 * HOUR,
    )  # fmt: skip
    db.billing.run(now=T2 + 2 * HOUR)
    _, feb = invoices(db, sub)
    assert (feb.status, feb.credit_applied_minor, feb.amount_due_minor) == ("paid", 1000, 0)
    (balance,) = db.billing.balance(account_id=sub.account_id)
    assert (balance.receivable_minor, balance.credit_minor) == (0, 500)


# -- credit notes and refunds --------------------------------------------------------------------


def issued(db: Database, sub: Subscription) -> Invoice:
    db.billing.run(now=T1 + 2 * HOUR)
    (jan,) = invoices(db, sub)
    return jan


def test_a_credit_note_on_an_open_invoice_reduces_what_is_due(
    db: Database, sub: Subscription
) -> None:
    jan = issued(db, sub)
    note = db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=300,
        reason="service outage", idempotency_key="cn-1",
    )  # fmt: skip
    assert (note.credit_note.pre_minor, note.credit_note.post_minor, note.duplicate) == (
        300,
        0,
        False,
    )
    assert (note.invoice.status, note.invoice.amount_due_minor) == ("open", 700)
    assert (note.invoice.credited_minor, note.refunds) == (300, [])
    (balance,) = db.billing.balance(account_id=sub.account_id)
    assert (balance.receivable_minor, balance.revenue_minor) == (700, 700)
    again = db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=300,
        reason="service outage", idempotency_key="cn-1",
    )  # fmt: skip
    assert again.duplicate
    assert again.credit_note == note.credit_note
    with pytest.raises(AlreadyExists) as other:
        db.billing.issue_credit_note(
            account_id=sub.account_id, invoice_id=jan.id, amount_minor=200,
            reason="service outage", idempotency_key="cn-1",
        )  # fmt: skip
    assert other.value.constraint == "credit_notes_idempotency_key"
    rest = db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=700,
        reason="waived", idempotency_key="cn-2",
    )  # fmt: skip
    assert (rest.invoice.status, rest.invoice.amount_due_minor) == ("paid", 0)


def test_credit_notes_never_sum_above_the_invoice_total(db: Database, sub: Subscription) -> None:
    jan = issued(db, sub)
    db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=600, reason="a",
        idempotency_key="cn-1",
    )  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        db.billing.issue_credit_note(
            account_id=sub.account_id, invoice_id=jan.id, amount_minor=401, reason="b",
            idempotency_key="cn-2",
        )  # fmt: skip
    assert info.value.field == "amount_minor"
    # The database refuses it too, whoever writes.
    with db.connection() as conn, pytest.raises(psycopg.errors.CheckViolation) as check:
        conn.execute(
            "UPDATE invoices SET credited_pre_minor = credited_pre_minor + 401"
            " WHERE account_id = %s AND id = %s",
            [jan.account_id, jan.id],
        )
    assert map_error(check.value).constraint in {  # named from the message on Citus
        "invoices_credited_check",
        "invoices_amount_due_check",
    }


def test_a_partial_refund_of_a_paid_invoice_is_pending_until_the_provider_reports_it(
    db: Database, sub: Subscription
) -> None:
    jan = issued(db, sub)
    payment = db.billing.record_payment(
        account_id=sub.account_id, invoice_id=jan.id, provider="stripe",
        provider_payment_id="pi_1", amount_minor=1000, currency="USD", now=T1 + 3 * HOUR,
    )  # fmt: skip
    note = db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=250, reason="refund part",
        idempotency_key="cn-1", refund=True,
    )  # fmt: skip
    assert (note.credit_note.pre_minor, note.credit_note.post_minor) == (0, 250)
    (refund,) = note.refunds
    assert (refund.status, refund.amount_minor, refund.payment_id) == (
        "pending",
        250,
        payment.payment.id,
    )
    (balance,) = db.billing.balance(account_id=sub.account_id)
    assert (balance.refunds_pending_minor, balance.collected_minor, balance.revenue_minor) == (
        250,
        1000,
        750,
    )
    done = db.billing.record_refund(
        account_id=sub.account_id, refund_id=refund.id, provider_refund_id="re_1"
    )
    assert (done.refund.status, done.duplicate) == ("succeeded", False)
    again = db.billing.record_refund(
        account_id=sub.account_id, refund_id=refund.id, provider_refund_id="re_1"
    )
    assert again.duplicate
    with pytest.raises(AlreadyExists):
        db.billing.record_refund(
            account_id=sub.account_id, refund_id=refund.id, provider_refund_id="re_2"
        )
    (balance,) = db.billing.balance(account_id=sub.account_id)
    assert (balance.refunds_pending_minor, balance.collected_minor) == (0, 750)
    (paid,) = db.billing.payments(account_id=sub.account_id, invoice_id=jan.id)
    assert (paid.status, paid.refunded_minor) == ("succeeded", 250)
    full = db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=750, reason="the rest",
        idempotency_key="cn-2", refund=True,
    )  # fmt: skip
    (paid,) = db.billing.payments(account_id=sub.account_id, invoice_id=jan.id)
    assert (paid.status, paid.refunded_minor) == ("refunded", 1000)
    assert full.invoice.credited_minor == 1000


def test_a_refund_above_what_was_paid_is_refused_and_credit_is_offered_instead(
    db: Database, sub: Subscription
) -> None:
    jan = issued(db, sub)
    with pytest.raises(InvalidInput) as info:  # nothing paid: it all reduces what is due
        db.billing.issue_credit_note(
            account_id=sub.account_id, invoice_id=jan.id, amount_minor=1001, reason="x",
            idempotency_key="cn-1", refund=True,
        )  # fmt: skip
    assert info.value.field == "amount_minor"
    db.billing.record_payment(
        account_id=sub.account_id, invoice_id=jan.id, provider="stripe",
        provider_payment_id="pi_1", amount_minor=1000, currency="USD", now=T1 + 3 * HOUR,
    )  # fmt: skip
    note = db.billing.issue_credit_note(
        account_id=sub.account_id, invoice_id=jan.id, amount_minor=400, reason="goodwill",
        idempotency_key="cn-2", refund=False,
    )  # fmt: skip
    assert note.refunds == []
    (grant,) = db.billing.credits(account_id=sub.account_id)
    assert (grant.amount_minor, grant.source, grant.credit_note_id) == (
        400,
        "credit_note",
        note.credit_note.id,
    )


def test_a_paid_invoice_is_not_voided_and_the_refusal_points_to_credit_notes(
    db: Database, sub: Subscription
) -> None:
    jan = issued(db, sub)
    db.billing.record_payment(
        account_id=sub.account_id, invoice_id=jan.id, provider="stripe",
        provider_payment_id="pi_1", amount_minor=1000, currency="USD", now=T1 + 3 * HOUR,
    )  # fmt: skip
    with pytest.raises(InvalidTransition, match="issue_credit_note"):
        db.billing.void(account_id=sub.account_id, invoice_id=jan.id)


def test_credit_notes_and_refunds_of_another_account_are_not_found(
    db: Database, sub: Subscription
) -> None:
    jan = issued(db, sub)
    other = db.accounts.create(name="Other").id
    with pytest.raises(NotFound):
        db.billing.issue_credit_note(
            account_id=other, invoice_id=jan.id, amount_minor=1, reason="x",
            idempotency_key="cn-1",
        )  # fmt: skip
    with pytest.raises(NotFound):
        db.billing.record_refund(account_id=other, refund_id=1, provider_refund_id="re_1")


# -- ordering and the run --------------------------------------------------------------------------


def test_a_chains_next_period_waits_for_its_draft_to_be_finalised(
    db: Database, sub: Subscription
) -> None:
    db.billing.generate_invoice(
        account_id=sub.account_id, subscription_id=sub.id,
        period_start=T0, period_end=T1, now=T1,
    )  # fmt: skip
    db.subscriptions.renew_due(now=T1 + HOUR)
    with pytest.raises(InvalidTransition) as info:
        db.billing.generate_invoice(
            account_id=sub.account_id, subscription_id=sub.id,
            period_start=T1, period_end=T2, now=T2,
        )  # fmt: skip
    assert (info.value.entity, info.value.actual) == ("invoice", "draft")
    (draft,) = db.billing.invoices(account_id=sub.account_id).items
    assert draft.status == "draft"


def test_the_billing_run_is_idempotent_and_counts_nothing_the_second_time(
    db: Database, sub: Subscription
) -> None:
    first = db.billing.run(now=T2 + 2 * HOUR)
    assert (first.renewed, first.generated, first.finalized) == (2, 2, 2)
    second = db.billing.run(now=T2 + 2 * HOUR)
    assert second.model_dump() == {
        "renewed": 0,
        "generated": 0,
        "refreshed": 0,
        "finalized": 0,
        "adjustment_invoices": 0,
        "credit_applied_minor": 0,
        "failed": 0,
        "stopped": False,
    }
    numbers = [i.number for i in invoices(db, sub)]
    assert len(numbers) == len(set(numbers)) == 2


def test_two_billing_runs_at_once_make_every_invoice_once(db: Database, plan_id: int) -> None:
    subs = [
        db.subscriptions.start(
            account_id=db.accounts.create(name=f"A{i}").id, plan_id=plan_id, now=T0
        )
        for i in range(12)
    ]
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(db.billing.run(now=T2 + 2 * HOUR, batch=3))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(r.generated for r in results) == 24
    assert sum(r.finalized for r in results) == 24
    assert sum(r.failed for r in results) == 0
    for sub in subs:
        assert [i.period_start for i in invoices(db, sub)] == [T0, T1]
    with db.connection() as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT number) FROM invoices WHERE status <> 'draft'"
        ).fetchone()
    assert row == (24, 24)


def test_a_run_that_dies_mid_batch_loses_nothing_and_the_next_run_finishes(
    db: Database, plan_id: int
) -> None:
    for i in range(5):
        db.subscriptions.start(
            account_id=db.accounts.create(name=f"A{i}").id, plan_id=plan_id, now=T0
        )
    with pytest.raises(RuntimeError), db.unit_of_work() as uow:
        uow.billing.run(now=T1 + 2 * HOUR)  # every invoice made, in one transaction …
        raise RuntimeError("the process dies before it commits")
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM invoices").fetchone()
    assert row == (0,)
    resumed = db.billing.run(now=T1 + 2 * HOUR)
    assert (resumed.generated, resumed.finalized) == (5, 5)


def test_a_period_whose_invoice_is_not_linked_back_is_healed_and_the_run_ends(
    db: Database, sub: Subscription
) -> None:
    db.billing.run(now=T1 + 2 * HOUR)
    with db.connection() as conn:  # as an older seed left it: the invoice names the period only
        conn.execute(
            "UPDATE billing_periods SET invoice_id = NULL WHERE account_id = %s", [sub.account_id]
        )
    healed = db.billing.run(now=T1 + 2 * HOUR)
    assert (healed.generated, healed.failed) == (0, 0)
    with db.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM billing_periods WHERE account_id = %s AND invoice_id IS NULL"
            " AND period_start = %s",
            [sub.account_id, T0],
        ).fetchone()
    assert row == (0,)
