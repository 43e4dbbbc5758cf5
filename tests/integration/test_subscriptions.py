"""Subscriptions: start, one live per account, upgrade with proration, downgrade, cancel, renew."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
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
    LiveSubscriptionExists,
    NotFound,
    ReferenceViolation,
    UnitOfWork,
)
from datalayer.models.plans import Plan
from datalayer.models.subscriptions import Proration, Subscription

pytestmark = pytest.mark.both_apis

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LIVE = ("trialing", "active", "past_due")


def at(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def publish(
    uow: UnitOfWork | Database,
    code: str,
    *,
    price: int = 1000,
    interval: str = "month",
    count: int = 1,
    currency: str = "USD",
    trial_days: int = 0,
) -> Plan:
    plan = uow.plans.create_draft(
        code=code,
        name=code.title(),
        billing_interval=interval,  # type: ignore[arg-type]
        interval_count=count,
        base_price_minor=price,
        currency=currency,
        trial_days=trial_days,
    )
    return uow.plans.publish(plan_id=plan.id)


@dataclass(frozen=True)
class Plans:
    basic: Plan  # monthly, 1000, 14 trial days
    pro: Plan  # monthly, 2500
    yearly: Plan  # yearly, 10000
    euro: Plan  # monthly, EUR
    draft_id: int


@pytest.fixture
def plans(uow: UnitOfWork) -> Plans:
    draft = uow.plans.create_draft(
        code="draft", name="Draft", billing_interval="month", base_price_minor=1, currency="USD"
    )
    return Plans(
        basic=publish(uow, "basic", trial_days=14),
        pro=publish(uow, "pro", price=2500),
        yearly=publish(uow, "yearly", price=10_000, interval="year"),
        euro=publish(uow, "euro", currency="EUR"),
        draft_id=draft.id,
    )


@pytest.fixture
def account_id(uow: UnitOfWork) -> int:
    return uow.accounts.create(name="Acme").id


def live_count(conn: psycopg.Connection[Any], account_id: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM subscriptions WHERE account_id = %s"
        " AND status IN ('trialing', 'active', 'past_due')",
        (account_id,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def all_rows(uow: UnitOfWork | Database, account_id: int) -> list[Subscription]:
    return uow.subscriptions.history(account_id=account_id, limit=1000).items


# --- start -----------------------------------------------------------------------------------


def test_a_start_without_trial_is_active_for_one_interval_anchored_at_the_start(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    assert (sub.account_id, sub.plan_id, sub.status) == (account_id, plans.basic.id, "active")
    assert (sub.current_period_start, sub.current_period_end) == (T0, at(2026, 2, 1))
    assert (sub.billing_anchor, sub.trial_end) == (T0, None)
    assert (sub.replaces_id, sub.pending_plan_id, sub.cancel_at_period_end) == (None, None, False)
    assert uow.subscriptions.current(account_id=account_id) == sub
    assert uow.subscriptions.get(account_id=account_id, subscription_id=sub.id) == sub


def test_a_requested_trial_is_granted_only_when_the_plan_has_trial_days(
    uow: UnitOfWork, plans: Plans
) -> None:
    a, b = (uow.accounts.create(name=n).id for n in ("A", "B"))
    trialing = uow.subscriptions.start(account_id=a, plan_id=plans.basic.id, trial=True, now=T0)
    assert (trialing.status, trialing.trial_end) == ("trialing", T0 + timedelta(days=14))
    assert trialing.current_period_end == at(2026, 2, 1)
    no_trial = uow.subscriptions.start(account_id=b, plan_id=plans.pro.id, trial=True, now=T0)
    assert (no_trial.status, no_trial.trial_end) == ("active", None)


@pytest.mark.parametrize(
    ("interval", "count", "end"),
    [
        ("day", 3, at(2026, 1, 4)),
        ("week", 2, at(2026, 1, 15)),
        ("month", 3, at(2026, 4, 1)),
        ("year", 1, at(2027, 1, 1)),
    ],
)
def test_the_first_period_lasts_the_plans_interval_times_its_count(
    uow: UnitOfWork, account_id: int, interval: str, count: int, end: datetime
) -> None:
    plan = publish(uow, "p", interval=interval, count=count)
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plan.id, now=T0)
    assert (sub.current_period_start, sub.current_period_end) == (T0, end)


def test_without_a_clock_the_period_starts_at_the_transaction_time(
    conn: psycopg.Connection[Any], uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id)
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    assert sub.current_period_start == sub.billing_anchor == row[0]


def test_a_second_live_subscription_raises_live_subscription_exists(
    conn: psycopg.Connection[Any], uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    first = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    with pytest.raises(LiveSubscriptionExists) as info, conn.transaction():
        uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id, now=T0)
    assert isinstance(info.value, AlreadyExists)
    assert info.value.constraint == "subscriptions_one_live_per_account"
    assert info.value.sqlstate == "23505"
    assert all_rows(uow, account_id) == [first]


def test_after_a_cancellation_the_account_can_start_again(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    first = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    uow.subscriptions.cancel_now(account_id=account_id, subscription_id=first.id, now=T0)
    again = uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id, now=T0)
    assert uow.subscriptions.current(account_id=account_id) == again


def test_starting_on_a_draft_archived_or_missing_plan_or_account_is_refused(
    conn: psycopg.Connection[Any], uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    with pytest.raises(InvalidTransition) as draft:
        uow.subscriptions.start(account_id=account_id, plan_id=plans.draft_id)
    assert (draft.value.entity, draft.value.entity_id) == ("plan", plans.draft_id)
    assert (draft.value.expected, draft.value.actual) == (("published",), "draft")
    uow.plans.archive(plan_id=plans.pro.id)
    with pytest.raises(InvalidTransition) as archived:
        uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id)
    assert archived.value.actual == "archived"
    with pytest.raises(NotFound):
        uow.subscriptions.start(account_id=account_id, plan_id=2**62)
    assert uow.subscriptions.current(account_id=account_id) is None
    with pytest.raises(ReferenceViolation) as account, conn.transaction():
        uow.subscriptions.start(account_id=2**62, plan_id=plans.basic.id)
    assert account.value.constraint == "subscriptions_account_id_fkey"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"now": datetime(2026, 1, 1)}, "now"),
        ({"now": "2026-01-01T00:00:00Z"}, "now"),
        ({"plan_id": 0}, "plan_id"),
        ({"account_id": -1}, "account_id"),
        ({"trial": "yes"}, "trial"),
    ],
)
def test_bad_start_arguments_raise_invalid_input_naming_the_field_before_any_sql(
    conn: psycopg.Connection[Any],
    uow: UnitOfWork,
    plans: Plans,
    account_id: int,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    args: dict[str, Any] = {"account_id": account_id, "plan_id": plans.basic.id, **kwargs}
    with pytest.raises(InvalidInput) as info:
        uow.subscriptions.start(**args)
    assert info.value.field == field
    assert live_count(conn, account_id) == 0  # a failed statement would have aborted this


def test_two_starts_at_once_leave_exactly_one_live_subscription(db: Database) -> None:
    plan = publish(db, "basic")
    account_id = db.accounts.create(name="Racy").id
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def start() -> None:
        try:
            with db.unit_of_work() as uow:
                barrier.wait(timeout=5)
                sub = uow.subscriptions.start(account_id=account_id, plan_id=plan.id)
                time.sleep(0.2)  # keep the row uncommitted while the other one inserts
            outcomes.append(sub)
        except LiveSubscriptionExists as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    winners = [o for o in outcomes if isinstance(o, Subscription)]
    losers = [o for o in outcomes if isinstance(o, LiveSubscriptionExists)]
    assert (len(winners), len(losers)) == (1, 1)
    assert losers[0].constraint == "subscriptions_one_live_per_account"
    assert all_rows(db, account_id) == winners


# --- reads and tenancy -----------------------------------------------------------------------


def test_history_pages_newest_first_and_shows_no_other_accounts_rows(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    other = uow.accounts.create(name="Other").id
    uow.subscriptions.start(account_id=other, plan_id=plans.basic.id, now=T0)
    ids = []
    for _ in range(4):
        sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
        uow.subscriptions.cancel_now(account_id=account_id, subscription_id=sub.id, now=T0)
        ids.append(sub.id)
    first = uow.subscriptions.history(account_id=account_id, limit=3)
    assert [s.id for s in first.items] == ids[::-1][:3]
    assert first.next_cursor is not None
    rest = uow.subscriptions.history(account_id=account_id, cursor=first.next_cursor, limit=3)
    assert [s.id for s in rest.items] == [ids[0]]
    assert rest.next_cursor is None
    with pytest.raises(InvalidInput) as info:
        uow.subscriptions.history(account_id=account_id, cursor="bogus")
    assert info.value.field == "cursor"


def test_another_accounts_subscription_is_missing_for_every_method(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    other = uow.accounts.create(name="Other").id
    assert uow.subscriptions.get(account_id=other, subscription_id=sub.id) is None
    assert uow.subscriptions.current(account_id=other) is None
    assert uow.subscriptions.history(account_id=other).items == []
    with pytest.raises(NotFound):
        uow.subscriptions.require(account_id=other, subscription_id=sub.id)
    with pytest.raises(NotFound):
        uow.subscriptions.cancel_now(account_id=other, subscription_id=sub.id)
    with pytest.raises(NotFound):
        uow.subscriptions.cancel_at_period_end(account_id=other, subscription_id=sub.id)
    with pytest.raises(NotFound):
        uow.subscriptions.upgrade_now(
            account_id=other, subscription_id=sub.id, plan_id=plans.pro.id, now=T0
        )
    with pytest.raises(NotFound):
        uow.subscriptions.downgrade_at_period_end(
            account_id=other, subscription_id=sub.id, plan_id=plans.pro.id
        )
    assert all_rows(uow, account_id) == [sub]


# --- cancel ----------------------------------------------------------------------------------


def test_cancel_now_ends_the_subscription_and_a_second_cancel_changes_nothing(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    uow.subscriptions.downgrade_at_period_end(
        account_id=account_id, subscription_id=sub.id, plan_id=plans.pro.id
    )
    when = T0 + timedelta(days=3)
    canceled = uow.subscriptions.cancel_now(account_id=account_id, subscription_id=sub.id, now=when)
    assert (canceled.status, canceled.canceled_at, canceled.ended_at) == ("canceled", when, when)
    assert canceled.pending_plan_id is None
    assert uow.subscriptions.current(account_id=account_id) is None
    with pytest.raises(InvalidTransition) as info:
        uow.subscriptions.cancel_now(account_id=account_id, subscription_id=sub.id)
    assert (info.value.entity, info.value.entity_id) == ("subscription", sub.id)
    assert (info.value.expected, info.value.actual) == (LIVE, "canceled")
    with pytest.raises(InvalidTransition):
        uow.subscriptions.cancel_at_period_end(account_id=account_id, subscription_id=sub.id)
    assert uow.subscriptions.require(account_id=account_id, subscription_id=sub.id) == canceled


def test_cancel_at_period_end_keeps_it_live_until_renewal_cancels_it(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    uow.subscriptions.downgrade_at_period_end(
        account_id=account_id, subscription_id=sub.id, plan_id=plans.pro.id
    )
    asked = T0 + timedelta(days=5)
    flagged = uow.subscriptions.cancel_at_period_end(
        account_id=account_id, subscription_id=sub.id, now=asked
    )
    assert (flagged.status, flagged.cancel_at_period_end, flagged.canceled_at) == (
        "active",
        True,
        asked,
    )
    assert uow.subscriptions.renew_due(now=at(2026, 1, 31)) == 0
    assert uow.subscriptions.renew_due(now=at(2026, 2, 2)) == 1
    ended = uow.subscriptions.require(account_id=account_id, subscription_id=sub.id)
    assert (ended.status, ended.ended_at, ended.canceled_at) == ("canceled", at(2026, 2, 1), asked)
    assert ended.current_period_end == at(2026, 2, 1)
    # The cancellation wins over the pending downgrade: nothing replaces it.
    assert all_rows(uow, account_id) == [ended]


# --- upgrade ---------------------------------------------------------------------------------


def test_an_upgrade_replaces_the_subscription_in_the_same_cycle_with_a_hand_checked_proration(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    old = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    when = at(2026, 1, 11)
    result = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=old.id, plan_id=plans.pro.id, now=when
    )
    replaced, new = result.replaced, result.subscription
    assert (replaced.id, replaced.status, replaced.ended_at) == (old.id, "replaced", when)
    assert (new.status, new.plan_id, new.replaces_id) == ("active", plans.pro.id, old.id)
    assert (new.current_period_start, new.current_period_end) == (T0, at(2026, 2, 1))
    assert new.billing_anchor == T0
    assert uow.subscriptions.current(account_id=account_id) == new
    # January has 31 days; 21 of them are unused on Jan 11.
    # credit 1000 * 21/31 = 677.42 -> 677; charge 2500 * 21/31 = 1693.55 -> 1694.
    assert result.proration == Proration(
        account_id=account_id,
        subscription_id=new.id,
        replaced_id=old.id,
        old_plan_id=plans.basic.id,
        new_plan_id=plans.pro.id,
        currency="USD",
        effective_at=when,
        period_start=T0,
        period_end=at(2026, 2, 1),
        fraction=Decimal("0.6774193548"),
        credit_minor=677,
        charge_minor=1694,
        net_minor=1017,
    )


def test_proration_rounds_exact_halves_up(uow: UnitOfWork, account_id: int) -> None:
    cheap = publish(uow, "cheap", price=1)
    dear = publish(uow, "dear", price=1001)
    old = uow.subscriptions.start(account_id=account_id, plan_id=cheap.id, now=at(2026, 2, 1))
    # February 2026 has 28 days: on the 15th exactly half is unused.
    proration = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=old.id, plan_id=dear.id, now=at(2026, 2, 15)
    ).proration
    assert proration.fraction == Decimal("0.5")
    # 1 * 0.5 = 0.5 -> 1 and 1001 * 0.5 = 500.5 -> 501 (half-even would give 0 and 500).
    assert (proration.credit_minor, proration.charge_minor, proration.net_minor) == (1, 501, 500)


def test_a_second_upgrade_in_one_cycle_credits_only_the_rest_of_that_cycle(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    top = publish(uow, "top", price=6200)
    first = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    mid = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=first.id, plan_id=plans.pro.id, now=at(2026, 1, 11)
    ).subscription
    proration = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=mid.id, plan_id=top.id, now=at(2026, 1, 21)
    ).proration
    # 11 of the cycle's 31 days remain: 2500 * 11/31 = 887.10 -> 887; 6200 * 11/31 = 2200.
    assert (proration.credit_minor, proration.charge_minor) == (887, 2200)
    assert proration.period_start == T0


def test_a_trialing_subscription_upgrades_to_an_active_one(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    old = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, trial=True, now=T0)
    new = uow.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=old.id, plan_id=plans.pro.id, now=T0
    ).subscription
    assert (new.status, new.trial_end) == ("active", None)


def test_an_upgrade_through_the_pool_is_one_transaction(db: Database) -> None:
    basic = publish(db, "basic")
    euro = publish(db, "euro", currency="EUR")
    account_id = db.accounts.create(name="Acme").id
    sub = db.subscriptions.start(account_id=account_id, plan_id=basic.id, now=T0)
    # The first statement replaces the subscription; the second refuses the
    # plan; the first must be rolled back with it.
    with pytest.raises(InvalidInput):
        db.subscriptions.upgrade_now(
            account_id=account_id, subscription_id=sub.id, plan_id=euro.id, now=T0
        )
    assert all_rows(db, account_id) == [sub]
    pro = publish(db, "pro", price=2500)
    result = db.subscriptions.upgrade_now(
        account_id=account_id, subscription_id=sub.id, plan_id=pro.id, now=T0
    )
    assert db.subscriptions.current(account_id=account_id) == result.subscription


@pytest.mark.parametrize(
    ("target", "error", "detail"),
    [
        ("same", InvalidInput, "plan_id"),
        ("euro", InvalidInput, "plan_id"),
        ("yearly", InvalidInput, "plan_id"),
        ("draft", InvalidTransition, "plan"),
        ("missing", NotFound, None),
    ],
)
def test_an_upgrade_to_an_unfit_plan_is_refused_and_changes_nothing(
    uow: UnitOfWork, plans: Plans, account_id: int, target: str, error: type, detail: str | None
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    plan_id = {
        "same": plans.basic.id,
        "euro": plans.euro.id,
        "yearly": plans.yearly.id,
        "draft": plans.draft_id,
        "missing": 2**62,
    }[target]
    with pytest.raises(error) as info:
        uow.subscriptions.upgrade_now(
            account_id=account_id, subscription_id=sub.id, plan_id=plan_id, now=T0
        )
    if isinstance(info.value, InvalidInput):
        assert info.value.field == detail
    if isinstance(info.value, InvalidTransition):
        assert (info.value.entity, info.value.entity_id) == (detail, plan_id)
    assert all_rows(uow, account_id) == [sub]


@pytest.mark.parametrize("state", ["canceled", "past_due", "period_over", "before_period"])
def test_an_upgrade_of_a_subscription_in_the_wrong_state_is_refused_and_changes_nothing(
    conn: psycopg.Connection[Any], uow: UnitOfWork, plans: Plans, account_id: int, state: str
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    when = T0 + timedelta(days=1)
    if state == "canceled":
        uow.subscriptions.cancel_now(account_id=account_id, subscription_id=sub.id, now=T0)
    elif state == "past_due":
        conn.execute("UPDATE subscriptions SET status = 'past_due' WHERE id = %s", (sub.id,))
    elif state == "period_over":
        when = at(2026, 2, 1)  # the period is [Jan 1, Feb 1): renew first
    else:
        when = T0 - timedelta(microseconds=1)
    before = all_rows(uow, account_id)
    with pytest.raises(InvalidTransition) as info:
        uow.subscriptions.upgrade_now(
            account_id=account_id, subscription_id=sub.id, plan_id=plans.pro.id, now=when
        )
    assert (info.value.entity, info.value.entity_id) == ("subscription", sub.id)
    assert info.value.expected == ("trialing", "active")
    assert info.value.actual == before[0].status
    assert all_rows(uow, account_id) == before


def test_bad_upgrade_arguments_raise_invalid_input_before_any_sql(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    with pytest.raises(InvalidInput) as naive:
        uow.subscriptions.upgrade_now(
            account_id=account_id,
            subscription_id=sub.id,
            plan_id=plans.pro.id,
            now=datetime(2026, 1, 2),
        )
    assert naive.value.field == "now"
    with pytest.raises(InvalidInput) as plan:
        uow.subscriptions.upgrade_now(
            account_id=account_id, subscription_id=sub.id, plan_id=True, now=T0
        )
    assert plan.value.field == "plan_id"
    assert all_rows(uow, account_id) == [sub]


# --- downgrade and renewal -------------------------------------------------------------------


def test_a_downgrade_waits_for_renewal_which_replaces_the_subscription_on_the_new_plan(
    uow: UnitOfWork, plans: Plans
) -> None:
    accounts = [uow.accounts.create(name=n).id for n in ("A", "B")]
    olds = []
    for account_id in accounts:
        sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id, now=T0)
        flagged = uow.subscriptions.downgrade_at_period_end(
            account_id=account_id, subscription_id=sub.id, plan_id=plans.basic.id
        )
        assert (flagged.status, flagged.plan_id) == ("active", plans.pro.id)
        assert flagged.pending_plan_id == plans.basic.id
        olds.append(sub)
    assert uow.subscriptions.renew_due(now=at(2026, 2, 1)) == 2
    for account_id, old in zip(accounts, olds, strict=True):
        new, ended = all_rows(uow, account_id)
        assert (ended.id, ended.status, ended.ended_at) == (old.id, "replaced", at(2026, 2, 1))
        assert (new.status, new.plan_id, new.replaces_id) == ("active", plans.basic.id, old.id)
        assert (new.current_period_start, new.current_period_end) == (
            at(2026, 2, 1),
            at(2026, 3, 1),
        )
        assert new.billing_anchor == T0  # same interval: the cycle keeps its anchor
        assert uow.subscriptions.current(account_id=account_id) == new


def test_a_downgrade_to_another_interval_re_anchors_the_cycle_at_the_switch(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    cheap_yearly = publish(uow, "cheap-yearly", price=5000, interval="year")
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    uow.subscriptions.downgrade_at_period_end(
        account_id=account_id, subscription_id=sub.id, plan_id=cheap_yearly.id
    )
    assert uow.subscriptions.renew_due(now=at(2026, 2, 1)) == 1
    new = uow.subscriptions.current(account_id=account_id)
    assert new is not None
    assert (new.plan_id, new.billing_anchor) == (cheap_yearly.id, at(2026, 2, 1))
    assert (new.current_period_start, new.current_period_end) == (at(2026, 2, 1), at(2027, 2, 1))


@pytest.mark.parametrize(
    ("target", "error"),
    [("same", InvalidInput), ("euro", InvalidInput), ("draft", InvalidTransition)],
)
def test_a_downgrade_to_an_unfit_plan_is_refused_and_changes_nothing(
    uow: UnitOfWork, plans: Plans, account_id: int, target: str, error: type
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id, now=T0)
    plan_id = {"same": plans.pro.id, "euro": plans.euro.id, "draft": plans.draft_id}[target]
    with pytest.raises(error):
        uow.subscriptions.downgrade_at_period_end(
            account_id=account_id, subscription_id=sub.id, plan_id=plan_id
        )
    assert all_rows(uow, account_id) == [sub]


def test_a_downgrade_of_an_ended_subscription_is_an_invalid_transition(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.pro.id, now=T0)
    canceled = uow.subscriptions.cancel_now(account_id=account_id, subscription_id=sub.id)
    with pytest.raises(InvalidTransition) as info:
        uow.subscriptions.downgrade_at_period_end(
            account_id=account_id, subscription_id=sub.id, plan_id=plans.basic.id
        )
    assert (info.value.expected, info.value.actual) == (LIVE, "canceled")
    assert all_rows(uow, account_id) == [canceled]


def test_renewal_keeps_month_ends_on_the_anchor(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(
        account_id=account_id, plan_id=plans.basic.id, now=at(2026, 1, 31)
    )
    assert sub.current_period_end == at(2026, 2, 28)
    ends = []
    for now in (at(2026, 2, 28), at(2026, 3, 31), at(2026, 4, 30)):
        assert uow.subscriptions.renew_due(now=now) == 1
        ends.append(uow.subscriptions.require(account_id=account_id, subscription_id=sub.id))
    # Not Mar 28 / Apr 28: each end is the anchor plus whole months.
    assert [(s.current_period_start, s.current_period_end) for s in ends] == [
        (at(2026, 2, 28), at(2026, 3, 31)),
        (at(2026, 3, 31), at(2026, 4, 30)),
        (at(2026, 4, 30), at(2026, 5, 31)),
    ]
    assert {(s.id, s.status, s.billing_anchor) for s in ends} == {
        (sub.id, "active", at(2026, 1, 31))
    }


def test_renewal_ignores_subscriptions_not_yet_due_and_ended_ones(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    other = uow.accounts.create(name="Other").id
    gone = uow.subscriptions.start(account_id=other, plan_id=plans.basic.id, now=T0)
    gone = uow.subscriptions.cancel_now(account_id=other, subscription_id=gone.id, now=T0)
    assert uow.subscriptions.renew_due(now=at(2026, 2, 1) - timedelta(microseconds=1)) == 0
    assert uow.subscriptions.renew_due(now=at(2027, 1, 1), batch=10) == 1
    assert uow.subscriptions.require(account_id=other, subscription_id=gone.id) == gone
    renewed = uow.subscriptions.require(account_id=account_id, subscription_id=sub.id)
    assert (renewed.current_period_start, renewed.current_period_end) == (
        at(2026, 2, 1),
        at(2026, 3, 1),
    )


def test_a_subscription_many_periods_behind_advances_one_period_per_call(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    sub = uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    calls = 0
    while uow.subscriptions.renew_due(now=at(2026, 4, 15)):
        calls += 1
    assert calls == 3
    now = uow.subscriptions.require(account_id=account_id, subscription_id=sub.id)
    assert (now.current_period_start, now.current_period_end) == (at(2026, 4, 1), at(2026, 5, 1))


def test_renewal_takes_at_most_a_batch_at_a_time(uow: UnitOfWork, plans: Plans) -> None:
    for name in ("A", "B", "C"):
        account_id = uow.accounts.create(name=name).id
        uow.subscriptions.start(account_id=account_id, plan_id=plans.basic.id, now=T0)
    counts = [uow.subscriptions.renew_due(now=at(2026, 2, 1), batch=2) for _ in range(3)]
    assert counts == [2, 1, 0]


def test_a_trial_becomes_active_at_the_first_renewal_after_it_ended(
    uow: UnitOfWork, plans: Plans, account_id: int
) -> None:
    weekly = publish(uow, "weekly", price=300, interval="week", trial_days=10)
    sub = uow.subscriptions.start(account_id=account_id, plan_id=weekly.id, trial=True, now=T0)
    assert sub.trial_end == at(2026, 1, 11)
    uow.subscriptions.renew_due(now=at(2026, 1, 8))
    first = uow.subscriptions.require(account_id=account_id, subscription_id=sub.id)
    assert (first.status, first.current_period_end) == ("trialing", at(2026, 1, 15))
    uow.subscriptions.renew_due(now=at(2026, 1, 15))
    second = uow.subscriptions.require(account_id=account_id, subscription_id=sub.id)
    assert (second.status, second.current_period_end) == ("active", at(2026, 1, 22))
    assert second.trial_end == at(2026, 1, 11)


def test_bad_renewal_arguments_raise_invalid_input(uow: UnitOfWork) -> None:
    with pytest.raises(InvalidInput) as naive:
        uow.subscriptions.renew_due(now=datetime(2026, 1, 1))
    assert naive.value.field == "now"
    with pytest.raises(InvalidInput) as batch:
        uow.subscriptions.renew_due(now=T0, batch=0)
    assert batch.value.field == "batch"


def test_concurrent_renewers_advance_each_subscription_exactly_once(db: Database) -> None:
    plan = publish(db, "basic")
    subs = []
    for i in range(12):
        account_id = db.accounts.create(name=f"Account {i}").id
        subs.append(db.subscriptions.start(account_id=account_id, plan_id=plan.id, now=T0))
    barrier = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def renew() -> None:
        try:
            barrier.wait(timeout=5)
            total = 0
            while True:
                with db.unit_of_work() as uow:
                    renewed = uow.subscriptions.renew_due(now=at(2026, 2, 2), batch=3)
                    time.sleep(0.05)  # hold the locks so the other renewer must skip them
                if renewed == 0:
                    break
                total += renewed
            counts.append(total)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=renew) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert sum(counts) == len(subs)
    assert all(c > 0 for c in counts)  # both took part
    for sub in subs:
        now = db.subscriptions.require(account_id=sub.account_id, subscription_id=sub.id)
        assert (now.current_period_start, now.current_period_end) == (
            at(2026, 2, 1),
            at(2026, 3, 1),
        )
