"""Quotas: atomic hard limits under concurrency, soft overage, reservations, reset per period."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from datalayer import (
    CheckViolation,
    Database,
    InvalidInput,
    InvalidTransition,
    NotFound,
    PlanMeterSpec,
    QuotaExceeded,
)
from datalayer.repositories import quotas as quotas_module

pytestmark = pytest.mark.both_apis


def _plan(db: Database, code: str, limit: int, kind: str = "hard") -> int:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation) VALUES"
            " ('api_calls', 'API calls', 'call', 'sum'), ('storage', 'Storage', 'byte', 'max')"
            " ON CONFLICT DO NOTHING"
        )
    plan = db.plans.create_draft(
        code=code, name=code, billing_interval="month", base_price_minor=0, currency="USD",
        meters=[PlanMeterSpec(meter_code="api_calls", included_quantity=Decimal(limit),
                              limit_kind=kind, overage_unit_price_minor=Decimal(0))],
    )  # fmt: skip
    db.plans.publish(plan_id=plan.id)
    return plan.id


@pytest.fixture
def hard_account(db: Database) -> int:
    plan_id = _plan(db, "hard", 1000)
    account = db.accounts.create(name="Acme").id
    db.subscriptions.start(account_id=account, plan_id=plan_id)
    return account


def test_16_threads_consuming_a_hard_limit_of_1000_never_overspend(
    db: Database, hard_account: int
) -> None:
    ok: list[int] = []
    refused: list[QuotaExceeded] = []
    other: list[BaseException] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait(timeout=10)
        for _ in range(200):
            try:
                db.quotas.consume(
                    account_id=hard_account, meter_code="api_calls", quantity=Decimal(1)
                )
                ok.append(1)
            except QuotaExceeded as exc:
                refused.append(exc)
            except BaseException as exc:  # pragma: no cover - reported below
                other.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert other == []
    assert len(ok) == 1000
    assert len(refused) == 16 * 200 - 1000
    (status,) = db.quotas.status(account_id=hard_account)
    assert (status.used, status.remaining) == (Decimal(1000), Decimal(0))
    assert all(e.limit == 1000 and e.remaining == 0 for e in refused)


def test_a_refused_consumption_names_limit_used_and_remaining(
    db: Database, hard_account: int
) -> None:
    db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(990))
    with pytest.raises(QuotaExceeded) as info:
        db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(11))
    assert (info.value.limit, info.value.used, info.value.remaining) == (1000, 990, 10)
    assert "hard limit of 1000" in str(info.value)
    decision = db.quotas.consume(
        account_id=hard_account, meter_code="api_calls", quantity=Decimal(10)
    )
    assert decision.remaining == 0
    assert not decision.over_limit


def test_a_soft_limit_allows_overage_and_says_so(db: Database) -> None:
    plan_id = _plan(db, "soft", 5, kind="soft")
    account = db.accounts.create(name="Soft").id
    db.subscriptions.start(account_id=account, plan_id=plan_id)
    first = db.quotas.consume(account_id=account, meter_code="api_calls", quantity=Decimal(5))
    assert not first.over_limit
    over = db.quotas.consume(account_id=account, meter_code="api_calls", quantity=Decimal(3))
    assert over.over_limit
    assert over.remaining == -3


def test_reservations_hold_quota_until_settled_released_or_expired(
    db: Database, hard_account: int
) -> None:
    held = db.quotas.reserve(
        account_id=hard_account, meter_code="api_calls", quantity=Decimal(600),
        ttl=timedelta(minutes=5),
    )  # fmt: skip
    with pytest.raises(QuotaExceeded):
        db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(401))
    settled = db.quotas.settle(account_id=hard_account, reservation_id=held.id, used=Decimal(450))
    assert (settled.used, settled.reserved) == (Decimal(450), Decimal(0))
    with pytest.raises(InvalidTransition):
        db.quotas.release(account_id=hard_account, reservation_id=held.id)

    second = db.quotas.reserve(
        account_id=hard_account, meter_code="api_calls", quantity=Decimal(500),
        ttl=timedelta(minutes=5),
    )  # fmt: skip
    released = db.quotas.release(account_id=hard_account, reservation_id=second.id)
    assert (released.used, released.reserved) == (Decimal(450), Decimal(0))

    crashed = db.quotas.reserve(
        account_id=hard_account, meter_code="api_calls", quantity=Decimal(550),
        ttl=timedelta(milliseconds=1),
    )  # fmt: skip
    with pytest.raises(QuotaExceeded):
        db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(1))
    assert db.quotas.expire_reservations() == 1
    assert (
        db.quotas.consume(
            account_id=hard_account, meter_code="api_calls", quantity=Decimal(550)
        ).remaining
        == 0
    )
    with pytest.raises(InvalidTransition) as info:
        db.quotas.settle(account_id=hard_account, reservation_id=crashed.id, used=Decimal(1))
    assert info.value.actual == "expired"


def test_settling_more_than_the_hard_limit_allows_is_refused_and_keeps_the_hold(
    db: Database, hard_account: int
) -> None:
    held = db.quotas.reserve(
        account_id=hard_account, meter_code="api_calls", quantity=Decimal(900),
        ttl=timedelta(minutes=5),
    )  # fmt: skip
    with pytest.raises(QuotaExceeded):
        db.quotas.settle(account_id=hard_account, reservation_id=held.id, used=Decimal(1001))
    (status,) = db.quotas.status(account_id=hard_account)
    assert (status.used, status.reserved) == (Decimal(0), Decimal(900))


def test_counters_reset_with_the_subscription_period(db: Database, hard_account: int) -> None:
    db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(1000))
    with pytest.raises(QuotaExceeded):
        db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(1))
    sub = db.subscriptions.current(account_id=hard_account)
    assert sub is not None
    assert db.subscriptions.renew_due(now=sub.current_period_end + timedelta(seconds=1)) == 1
    fresh = db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(1))
    assert (fresh.used, fresh.remaining) == (Decimal(1), Decimal(999))


def test_status_reports_metered_usage_from_rollups_and_the_tail(
    db: Database, hard_account: int
) -> None:
    now = datetime.now(UTC)  # after the subscription started: inside its period
    db.usage.record_batch(
        events=[{"account_id": hard_account, "meter_code": "api_calls", "quantity": Decimal(2),
                 "occurred_at": now, "idempotency_key": f"k{i}"}
                for i in range(7)]
    )  # fmt: skip
    (status,) = db.quotas.status(account_id=hard_account)
    assert status.metered == Decimal(14)


def test_no_live_subscription_or_meter_is_not_found_and_bad_input_is_refused(
    db: Database, hard_account: int
) -> None:
    lonely = db.accounts.create(name="Nobody").id
    with pytest.raises(NotFound):
        db.quotas.consume(account_id=lonely, meter_code="api_calls", quantity=Decimal(1))
    with pytest.raises(NotFound):
        db.quotas.consume(account_id=hard_account, meter_code="storage", quantity=Decimal(1))
    for bad in (Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("1e13")):
        with pytest.raises(InvalidInput) as info:
            db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=bad)
        assert info.value.field == "quantity"
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM quota_counters").fetchone()
    assert row is not None
    assert row[0] == 0  # nothing was written by the refusals
    assert db.quotas.status(account_id=lonely) == []


def test_the_database_itself_refuses_a_hard_counter_over_its_limit(
    db: Database, hard_account: int
) -> None:
    db.quotas.consume(account_id=hard_account, meter_code="api_calls", quantity=Decimal(1))
    with pytest.raises(CheckViolation) as info, db.connection() as conn:
        conn.execute("UPDATE quota_counters SET used = limit_quantity + 1")
    assert info.value.constraint == "quota_counters_hard_limit_check"


def test_expiry_releases_the_holds_of_every_account_once_page_by_page(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One statement per account, a few accounts per transaction: the pages must add up.
    monkeypatch.setattr(quotas_module, "_EXPIRE_PAGE", 2)
    plan_id = _plan(db, "pages", 1000)
    accounts = []
    for i in range(5):
        account_id = db.accounts.create(name=f"Hold {i}").id
        db.subscriptions.start(account_id=account_id, plan_id=plan_id)
        for _ in range(2):
            db.quotas.reserve(
                account_id=account_id, meter_code="api_calls", quantity=Decimal(100),
                ttl=timedelta(milliseconds=1),
            )  # fmt: skip
        accounts.append(account_id)
    time.sleep(0.01)
    assert db.quotas.expire_reservations() == 10
    assert db.quotas.expire_reservations() == 0
    for account_id in accounts:
        (state,) = db.quotas.status(account_id=account_id)
        assert (state.used, state.reserved) == (Decimal(0), Decimal(0))
