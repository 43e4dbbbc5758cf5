"""Usage reports equal a fresh aggregate of the raw events, rolled up or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from datalayer import Database
from datalayer._rollups import refresh_rollups


def _raw(db: Database, account_id: int, lo: datetime, hi: datetime) -> list[tuple[Any, ...]]:
    with db.connection() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                "SELECT meter_code, count(*), sum(quantity), max(quantity) FROM usage_events"
                " WHERE account_id = %s AND occurred_at >= %s AND occurred_at < %s"
                " GROUP BY 1 ORDER BY 1",
                (account_id, lo, hi),
            )
        ]


def test_period_totals_equal_the_raw_aggregate_before_and_after_refresh(db: Database) -> None:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation) VALUES"
            " ('api_calls', 'API calls', 'call', 'sum'), ('storage', 'Storage', 'byte', 'max')"
        )
    account = db.accounts.create(name="Acme").id
    other = db.accounts.create(name="Other").id
    now = datetime.now(UTC).replace(microsecond=0)
    events = [
        {"account_id": acct, "meter_code": meter, "quantity": Decimal(q),
         "occurred_at": now - timedelta(minutes=17 * i), "idempotency_key": f"{acct}-{i}"}
        for i in range(300)
        for acct, meter, q in [(account, "api_calls" if i % 3 else "storage", i % 7 + 1)]
    ] + [
        {"account_id": other, "meter_code": "api_calls", "quantity": Decimal(5),
         "occurred_at": now - timedelta(minutes=i), "idempotency_key": f"o-{i}"}
        for i in range(50)
    ]  # fmt: skip
    assert db.usage.record_batch(events=events).inserted == 350
    # Unaligned edges, in the middle of hours.
    lo = now - timedelta(hours=50, minutes=13)
    hi = now - timedelta(hours=3, minutes=41)
    expected = _raw(db, account, lo, hi)
    assert expected  # the range holds events

    def totals() -> list[tuple[Any, ...]]:
        return [
            (t.meter_code, t.event_count, t.quantity_sum, t.quantity_max)
            for t in db.usage_reports.period_totals(
                account_id=account, period_start=lo, period_end=hi
            )
        ]

    assert totals() == expected  # nothing rolled up yet: all from raw hours
    refresh_rollups(db)
    assert totals() == expected  # all from rollups but the edge hours
    late = now - timedelta(hours=20, minutes=5)  # a late event for a rolled-up hour
    db.usage.record_batch(
        events=[{"account_id": account, "meter_code": "api_calls", "quantity": Decimal(100),
                 "occurred_at": late, "idempotency_key": "late"}]
    )  # fmt: skip
    expected = _raw(db, account, lo, hi)
    assert totals() == expected  # the dirty hour is read raw, not double counted
    refresh_rollups(db)
    assert totals() == expected
