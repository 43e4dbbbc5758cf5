"""Everything metered or charged is billed exactly once: one invariant, driven by a state machine.

A hypothesis state machine runs a few accounts on two plans through
subscriptions starting, upgrading and downgrading mid-period and ending; usage
on time, late, duplicated and cancelled; billing runs at random instants;
payments, overpayments and credit notes (credited or refunded). A clock only
moves forward. After every step:

* every ledger transaction sums to zero; each account's receivable is the sum
  of what its open invoices leave due; its credit balance is what its credit
  grants have left (granted minus applied);
* no period has two invoices and no pending item is billed twice.

After a final run past every window (the subscriptions ended, the accepted
window of usage closed, every draft's grace over):

* for every billing period and meter: the quantity billed is the accepted,
  non-cancelled quantity, and the money billed is the price rule applied to it
  from scratch (``overage_amount``, rounded once);
* every pending item is billed exactly once, by one line of its amount; every
  period has its one invoice, issued.

``make test`` runs a fixed seed and a random one, a few hundred steps (a third as many on
Citus); ``.ci/run`` runs the long form (``DATALAYER_BILLING_STEPS``, a few thousand),
on plain PostgreSQL and on Citus.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import citus_servers
import psycopg
import pytest
from conftest import _clone, pg_url
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from datalayer import Database, DataLayerError, PlanMeterSpec, Settings
from datalayer._billing import overage_amount
from datalayer._ops.partitions import month_start
from datalayer._window import ACCEPTED_AGE

pytestmark = pytest.mark.both_apis

FLOOR = month_start(datetime.now(UTC) - ACCEPTED_AGE)  # partitions exist from here
# The clock starts near the real one: cancelling usage follows the real clock's window.
START = (datetime.now(UTC) - timedelta(days=20)).replace(minute=0, second=0, microsecond=0)
LAST = START + timedelta(days=80)  # partitions exist past here: the clock stays before it
INCLUDED, OVERAGE = Decimal(100), Decimal("1.5")
STEPS = int(os.environ.get("DATALAYER_BILLING_STEPS", "0"))
# What the machines did, summed over a test's examples: the fixed seed must reach
# every path the invariant is about, or the test proves little.
SEEN = dict.fromkeys(
    ["late adjustments", "prorations", "standalone invoices", "credit applied",
     "cancellations", "invoices"], 0
)  # fmt: skip


class BillingMachine(RuleBasedStateMachine):
    template_dbname: str

    accounts = Bundle("accounts")

    def __init__(self) -> None:
        super().__init__()
        self._janitor = _clone(self.template_dbname)
        self._janitor.init()
        url = pg_url(self._janitor.dbname)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO meters (code, name, unit, aggregation)"
                " VALUES ('api_calls', 'API calls', 'call', 'sum')"
            )
        self.db = Database(Settings(database_url=url, pool_min_size=1, pool_max_size=4)).open()
        self.clock = START + timedelta(hours=1)
        self.keys: list[tuple[int, str]] = []
        self.plans = [self._plan("basic", 1000), self._plan("pro", 2500)]
        self.refused = 0

    def teardown(self) -> None:
        self.db.close()
        self._janitor.drop()

    def _plan(self, code: str, price: int) -> int:
        draft = self.db.plans.create_draft(
            code=code,
            name=code.title(),
            billing_interval="day",
            interval_count=3,
            base_price_minor=price,
            currency="USD",
            meters=[
                PlanMeterSpec(
                    meter_code="api_calls",
                    included_quantity=INCLUDED,
                    limit_kind="soft",
                    overage_unit_price_minor=OVERAGE,
                )
            ],
        )
        return self.db.plans.publish(plan_id=draft.id).id

    def attempt(self, call: Any) -> Any:
        """Run an operation that the state may refuse; a refusal is a ``DataLayerError``."""
        try:
            return call()
        except DataLayerError:
            self.refused += 1
            return None

    # -- the world ---------------------------------------------------------------------------

    @initialize(target=accounts, plan=st.integers(0, 1))
    def first_account(self, plan: int) -> int:
        return self._subscribed(plan)

    @initialize(target=accounts, plan=st.integers(0, 1))
    def second_account(self, plan: int) -> int:
        return self._subscribed(plan)

    def _subscribed(self, plan: int) -> int:
        account = self.db.accounts.create(name=f"acct {uuid.uuid4().hex[:6]}").id
        self.db.subscriptions.start(account_id=account, plan_id=self.plans[plan], now=self.clock)
        return account

    @rule(hours=st.integers(1, 48))
    def time_passes(self, hours: int) -> None:
        self.clock = min(self.clock + timedelta(hours=hours), LAST)

    # -- subscriptions --------------------------------------------------------------------------

    @rule(account=accounts, plan=st.integers(0, 1))
    def subscribe(self, account: int, plan: int) -> None:
        self.attempt(
            lambda: self.db.subscriptions.start(
                account_id=account, plan_id=self.plans[plan], now=self.clock
            )
        )

    def _live(self, account: int) -> Any:
        return self.db.subscriptions.current(account_id=account)

    @rule(account=accounts)
    def change_plan_now(self, account: int) -> None:
        live = self._live(account)
        if live is None:
            return
        other = self.plans[1] if live.plan_id == self.plans[0] else self.plans[0]
        self.attempt(
            lambda: self.db.subscriptions.upgrade_now(
                account_id=account, subscription_id=live.id, plan_id=other, now=self.clock
            )
        )

    @rule(account=accounts, at_end=st.booleans())
    def cancel(self, account: int, at_end: bool) -> None:
        live = self._live(account)
        if live is None:
            return
        method = (
            self.db.subscriptions.cancel_at_period_end
            if at_end
            else self.db.subscriptions.cancel_now
        )
        self.attempt(lambda: method(account_id=account, subscription_id=live.id, now=self.clock))

    # -- usage ---------------------------------------------------------------------------------

    @rule(
        account=accounts,
        quantity=st.integers(1, 90),
        lateness=st.sampled_from(["on time", "on time", "a little late", "late"]),
        late_hours=st.integers(1, 24 * 34),
    )
    def use(self, account: int, quantity: int, lateness: str, late_hours: int) -> None:
        hours = {"on time": 0, "a little late": late_hours % (24 * 8), "late": late_hours}
        occurred = max(FLOOR, self.clock - timedelta(hours=hours[lateness]))
        key = uuid.uuid4().hex
        result = self.db.usage.record_batch(
            events=[
                {
                    "account_id": account,
                    "meter_code": "api_calls",
                    "quantity": Decimal(quantity),
                    "occurred_at": occurred,
                    "idempotency_key": key,
                }
            ],
            now=self.clock,
        )
        assert result.inserted == 1
        self.keys.append((account, key))

    @rule(pick=st.integers(0, 10**6), cancel=st.booleans())
    def resend_or_cancel_usage(self, pick: int, cancel: bool) -> None:
        if not self.keys:
            return
        account, key = self.keys[pick % len(self.keys)]
        if cancel:
            # Cancellation follows the real clock's window: older events are refused.
            self.attempt(
                lambda: self.db.usage.cancel(account_id=account, idempotency_key=key, reason="t")
            )
            return
        result = self.db.usage.record_batch(
            events=[
                {
                    "account_id": account,
                    "meter_code": "api_calls",
                    "quantity": Decimal(999),
                    "occurred_at": self.clock,
                    "idempotency_key": key,
                }
            ],
            now=self.clock,
        )
        assert (result.inserted, result.duplicates) == (0, 1)

    # -- money ---------------------------------------------------------------------------------

    @rule(hours=st.sampled_from([0, 1, 2, 3]))
    def billing_run(self, hours: int) -> None:
        self.clock = min(self.clock + timedelta(hours=hours), LAST)
        result = self.db.billing.run(now=self.clock)
        assert result.failed == 0

    def _invoice(self, data: st.DataObject, account: int, statuses: tuple[str, ...]) -> Any:
        listed = self.db.billing.invoices(account_id=account, limit=1000).items
        found = [i for i in listed if i.status in statuses]
        return data.draw(st.sampled_from(found)) if found else None

    @rule(account=accounts, data=st.data(), extra=st.sampled_from([0, 0, 1, 700, 5000]))
    def pay(self, account: int, data: st.DataObject, extra: int) -> None:
        invoice = self._invoice(data, account, ("open",))
        if invoice is None:
            return
        amount = data.draw(st.integers(1, invoice.amount_due_minor)) + extra
        self.db.billing.record_payment(
            account_id=account, invoice_id=invoice.id, provider="test",
            provider_payment_id=uuid.uuid4().hex, amount_minor=amount, currency="USD",
            now=self.clock,
        )  # fmt: skip

    @rule(account=accounts, data=st.data(), refund=st.booleans())
    def credit_note(self, account: int, data: st.DataObject, refund: bool) -> None:
        invoice = self._invoice(data, account, ("open", "paid"))
        if invoice is None or invoice.total_minor == invoice.credited_minor:
            return
        amount = data.draw(st.integers(1, invoice.total_minor - invoice.credited_minor))
        note = self.attempt(
            lambda: self.db.billing.issue_credit_note(
                account_id=account,
                invoice_id=invoice.id,
                amount_minor=amount,
                reason="test",
                idempotency_key=uuid.uuid4().hex,
                refund=refund,
            )
        )
        if note is not None and note.refunds and data.draw(st.booleans()):
            refund_id = note.refunds[0].id
            self.db.billing.record_refund(
                account_id=account, refund_id=refund_id, provider_refund_id=uuid.uuid4().hex
            )

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def the_books_balance(self) -> None:
        with self.db.connection() as conn:
            unbalanced = conn.execute(
                "SELECT account_id, transaction_id FROM ledger_entries"
                " GROUP BY account_id, transaction_id, currency HAVING sum(amount_minor) <> 0"
            ).fetchall()
            receivable = conn.execute(
                """
                SELECT a.id,
                       coalesce((SELECT sum(amount_minor) FROM ledger_entries e
                                 WHERE e.account_id = a.id AND ledger_account = 'receivable'), 0),
                       coalesce((SELECT sum(amount_due_minor) FROM invoices i
                                 WHERE i.account_id = a.id AND status = 'open'), 0),
                       -coalesce((SELECT sum(amount_minor) FROM ledger_entries e
                                  WHERE e.account_id = a.id
                                    AND ledger_account = 'customer_credit'), 0),
                       coalesce((SELECT sum(amount_minor) FROM credit_grants g
                                 WHERE g.account_id = a.id), 0)
                       - coalesce((SELECT sum(amount_minor) FROM credit_applications c
                                   WHERE c.account_id = a.id), 0),
                       coalesce((SELECT sum(remaining_minor) FROM credit_grants g
                                 WHERE g.account_id = a.id), 0)
                FROM accounts a
                """
            ).fetchall()
        assert unbalanced == []
        for account, ledger_due, invoices_due, credit, granted, remaining in receivable:
            assert ledger_due == invoices_due, ("receivable", account)
            assert credit == granted == remaining, ("credit", account)

    @invariant()
    def nothing_is_billed_twice(self) -> None:
        with self.db.connection() as conn:
            twice = conn.execute(
                "SELECT billing_period_id FROM invoices WHERE billing_period_id IS NOT NULL"
                " GROUP BY 1 HAVING count(*) > 1"
                " UNION ALL SELECT pending_item_id FROM invoice_lines"
                " WHERE pending_item_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1"
            ).fetchall()
            linked = conn.execute(
                "SELECT count(*) FROM pending_invoice_items i WHERE i.invoice_id IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM invoice_lines l WHERE l.account_id = i.account_id"
                " AND l.pending_item_id = i.id AND l.invoice_id = i.invoice_id"
                " AND l.amount_minor = i.amount_minor)"
            ).fetchone()
        assert twice == []
        assert linked == (0,)

    # -- the end -------------------------------------------------------------------------------

    def finish(self) -> None:
        """End every subscription, run past every window, and check what was billed."""
        for account in self._accounts():
            live = self._live(account)
            if live is not None:
                self.db.subscriptions.cancel_now(
                    account_id=account, subscription_id=live.id, now=self.clock
                )
        end = self.clock + ACCEPTED_AGE + timedelta(days=2)
        for at in (self.clock, end, end + timedelta(hours=2)):
            assert self.db.billing.run(now=at).failed == 0
        again = self.db.billing.run(now=end + timedelta(hours=3))
        assert (again.generated, again.adjustment_invoices, again.finalized) == (0, 0, 0)
        self.the_books_balance()
        self.nothing_is_billed_twice()
        with self.db.connection() as conn:
            periods = conn.execute(
                "SELECT p.account_id, p.id, p.period_start, p.closes_at, i.status"
                " FROM billing_periods p LEFT JOIN invoices i"
                " ON i.account_id = p.account_id AND i.id = p.invoice_id"
            ).fetchall()
            billed = {
                (pid, meter): (Decimal(q), int(a))
                for pid, meter, q, a in conn.execute(
                    "SELECT billing_period_id, meter_code, sum(metered_quantity), sum(amount_minor)"
                    " FROM invoice_lines WHERE meter_code IS NOT NULL GROUP BY 1, 2"
                ).fetchall()
            }
            unbilled = conn.execute(
                "SELECT count(*) FROM pending_invoice_items WHERE invoice_id IS NULL"
            ).fetchone()
            drafts = conn.execute("SELECT count(*) FROM invoices WHERE status = 'draft'").fetchone()
        with self.db.connection() as conn:
            # Subqueries as columns beside aggregates do not run on Citus: one row each.
            row = conn.execute(
                "SELECT (SELECT count(*) FILTER (WHERE kind = 'adjustment'"
                "                                 AND meter_code IS NOT NULL) FROM invoice_lines),"
                " (SELECT count(*) FILTER (WHERE kind = 'proration') FROM invoice_lines),"
                " (SELECT count(*) FROM invoices WHERE billing_period_id IS NULL),"
                " (SELECT count(*) FROM credit_applications),"
                " (SELECT count(*) FROM usage_cancellations),"
                " (SELECT count(*) FROM invoices)"
            ).fetchone()
        assert row is not None
        for name, value in zip(SEEN, row, strict=True):
            SEEN[name] += int(value)
        assert unbilled == (0,)
        assert drafts == (0,)
        for account, period_id, start, closes, status in periods:
            assert status not in (None, "draft"), ("period without an issued invoice", period_id)
            accepted = Decimal(0)
            if closes > start:
                for total in self.db.usage_reports.period_totals(
                    account_id=account, period_start=start, period_end=closes
                ):
                    if total.meter_code == "api_calls":
                        accepted = total.quantity_sum
            quantity, money = billed.get((period_id, "api_calls"), (Decimal(0), 0))
            assert quantity == accepted, ("quantity", period_id, quantity, accepted)
            assert money == overage_amount(accepted, INCLUDED, OVERAGE), ("money", period_id)

    def _accounts(self) -> list[int]:
        with self.db.connection() as conn:
            return [r[0] for r in conn.execute("SELECT id FROM accounts")]


def _with_finish(machine: type[BillingMachine]) -> type[BillingMachine]:
    """Run ``finish`` (the final checks) before every machine's teardown."""

    class Finishing(machine):  # type: ignore[misc, valid-type]
        def teardown(self) -> None:
            try:
                self.finish()
            finally:
                super().teardown()

    return Finishing


@pytest.mark.first
@pytest.mark.parametrize("seed", [None, "random"], ids=["fixed seed", "random seed"])
def test_everything_metered_or_charged_is_billed_exactly_once(
    template_dbname: str, seed: Any
) -> None:
    template_name = template_dbname
    # On Citus every step is a distributed transaction (~3x the CPU) and every example a
    # database on three nodes: a third of the examples there. The fixed seed's first four
    # examples already reach every path SEEN counts; CI's long form runs on both layouts.
    short = 4 if citus_servers.active() else 12
    examples, steps = (short, 60) if not STEPS else (max(2, STEPS // 100), 100)

    class Machine(BillingMachine):
        template_dbname = template_name

    options = settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=seed is None,
        # No shrinking: each step is real SQL and shrinking a failure took minutes;
        # the failing run is printed step by step as it happened.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    for name in SEEN:
        SEEN[name] = 0
    run_state_machine_as_test(_with_finish(Machine), settings=options)
    if seed is None:
        assert all(SEEN.values()), SEEN
    print(f"billing state machine ({examples} x {steps} steps): {SEEN}")
