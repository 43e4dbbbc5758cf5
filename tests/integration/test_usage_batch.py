"""Batch ingestion: binary COPY into staging, set-based exactly-once, rejections with reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from datalayer import ConcurrencyConflict, Database, PartitionMissing
from datalayer.models.usage import UsageEventIn

pytestmark = pytest.mark.both_apis


@pytest.fixture
def account_id(db: Database) -> int:
    with db.connection() as conn:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum')"
        )
    return db.accounts.create(name="Acme").id


def event(account_id: int, key: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "account_id": account_id,
        "meter_code": "api_calls",
        "quantity": Decimal(1),
        "occurred_at": datetime.now(UTC) - timedelta(minutes=1),
        "idempotency_key": key,
    }
    return {**base, **changes}


def _count(db: Database, table: str = "usage_events") -> int:
    with db.connection() as conn:
        row = conn.execute(
            psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_batch_stores_every_new_event_and_counts_duplicates(
    db: Database, account_id: int
) -> None:
    first = db.usage.record_batch(events=[event(account_id, f"k{i}") for i in range(50)])
    assert (first.inserted, first.duplicates, first.rejected) == (50, 0, [])
    again = [event(account_id, f"k{i}", quantity=Decimal(7)) for i in range(40, 60)]
    second = db.usage.record_batch(events=again)
    assert (second.inserted, second.duplicates) == (10, 10)
    assert _count(db) == 60 == _count(db, "usage_event_keys")


def test_a_key_repeated_inside_one_batch_is_stored_once_the_first_time(
    db: Database, account_id: int
) -> None:
    now = datetime.now(UTC)
    batch = [
        event(account_id, "same", quantity=Decimal(1), occurred_at=now - timedelta(minutes=2)),
        event(account_id, "same", quantity=Decimal(9), occurred_at=now - timedelta(days=3)),
    ]
    result = db.usage.record_batch(events=batch)
    assert (result.inserted, result.duplicates) == (1, 1)
    stored = db.usage.get_by_key(account_id=account_id, idempotency_key="same")
    assert stored is not None
    assert stored.quantity == Decimal(1)


def test_bad_events_are_rejected_with_their_reason_and_the_rest_stored(
    db: Database, account_id: int
) -> None:
    now = datetime.now(UTC)
    batch = [
        event(account_id, "ok"),
        event(account_id, "neg", quantity=Decimal(-1)),
        event(account_id, "nan", quantity=Decimal("NaN")),
        event(account_id, "huge", quantity=Decimal("1e13")),
        event(account_id, "naive", occurred_at=datetime(2026, 1, 1)),
        event(account_id, "old", occurred_at=now - timedelta(days=40)),
        event(account_id, "future", occurred_at=now + timedelta(minutes=10)),
        event(account_id, "meter", meter_code="no_such_meter"),
        event(2**62, "account"),
        event(account_id, ""),
        event(account_id, "nul\x00"),
    ]
    result = db.usage.record_batch(events=batch)
    assert result.inserted == 1
    assert result.duplicates == 0
    reasons = {r.index: r.reason for r in result.rejected}
    assert sorted(reasons) == list(range(1, 11))
    assert reasons[1].startswith("bad quantity")
    assert reasons[2].startswith("bad quantity")
    assert reasons[3].startswith("bad quantity")
    assert reasons[4].startswith("bad occurred_at")
    assert "older than 35 days" in reasons[5]
    assert "in the future" in reasons[6]
    assert reasons[7] == "unknown meter"
    assert reasons[8] == "unknown account"
    assert reasons[9].startswith("bad idempotency_key")
    assert reasons[10].startswith("bad idempotency_key")
    assert _count(db) == 1


def test_a_batch_is_all_or_nothing_for_its_valid_events(
    db: Database, account_id: int, fresh_admin_url: str
) -> None:
    now = datetime.now(UTC)
    month = f"usage_events_{now:%Y_%m}"
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:  # only an admin drops
        conn.execute(psycopg.sql.SQL("DROP TABLE {}").format(psycopg.sql.Identifier(month)))
    last_month = now.replace(day=1) - timedelta(days=1)
    batch = [
        event(account_id, "a", occurred_at=last_month),  # its partition exists
        event(account_id, "b", occurred_at=now - timedelta(minutes=1)),  # this month: none
    ]
    with pytest.raises(PartitionMissing) as info:
        db.usage.record_batch(events=batch)
    assert info.value.month == f"{now:%Y-%m}"
    assert _count(db) == 0
    assert _count(db, "usage_event_keys") == 0


def test_validated_models_and_plain_dicts_are_both_accepted(db: Database, account_id: int) -> None:
    model = UsageEventIn.model_validate(event(account_id, "model"))
    result = db.usage.record_batch(events=[model, event(account_id, "dict")])
    assert result.inserted == 2


def test_an_empty_batch_does_nothing(db: Database) -> None:
    result = db.usage.record_batch(events=[])
    assert (result.inserted, result.duplicates, result.rejected) == (0, 0, [])


def test_several_batches_can_be_recorded_in_one_unit_of_work(db: Database, account_id: int) -> None:
    with db.unit_of_work() as uow:
        first = uow.usage.record_batch(events=[event(account_id, "one")])
        second = uow.usage.record_batch(events=[event(account_id, "two"), event(account_id, "one")])
    assert (first.inserted, second.inserted, second.duplicates) == (1, 1, 1)
    assert _count(db) == 2


def _deadlocking_once(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Make the batch's store lose a deadlock ``times`` times after writing; count the tries.

    On both APIs: the sync repository's and the async one's ``_store``.
    """
    from datalayer.repositories import AsyncUsageRepository, UsageRepository

    tries: list[int] = []

    def verdict(inserted: int) -> int:
        tries.append(inserted)  # written, then the deadlock detector picks this transaction
        if len(tries) <= times:
            raise ConcurrencyConflict("deadlock detected (injected)", sqlstate="40P01")
        return inserted

    store, astore = UsageRepository._store, AsyncUsageRepository._store

    def deadlocked(self: UsageRepository, events: list[UsageEventIn]) -> int:
        return verdict(store(self, events))

    async def adeadlocked(self: AsyncUsageRepository, events: list[UsageEventIn]) -> int:
        return verdict(await astore(self, events))

    monkeypatch.setattr(UsageRepository, "_store", deadlocked)
    monkeypatch.setattr(AsyncUsageRepository, "_store", adeadlocked)
    return tries


def test_a_batch_that_loses_a_deadlock_is_retried_whole_and_stores_each_event_once(
    db: Database, account_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries = _deadlocking_once(monkeypatch, times=2)
    batch = [event(account_id, f"d{i}") for i in range(20)] + [event(999_999, "nobody")]
    result = db.usage.record_batch(events=batch)
    assert tries == [20, 20, 20]  # each try wrote all 20; the first two were rolled back
    assert (result.inserted, result.duplicates) == (20, 0)
    assert [(r.index, r.reason) for r in result.rejected] == [(20, "unknown account")]
    assert _count(db) == 20 == _count(db, "usage_event_keys")


def test_a_batch_deadlocking_past_its_attempts_or_in_a_unit_of_work_raises_with_nothing_stored(
    db: Database, account_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datalayer.repositories.usage import DEADLOCK_ATTEMPTS

    tries = _deadlocking_once(monkeypatch, times=DEADLOCK_ATTEMPTS)
    with pytest.raises(ConcurrencyConflict):
        db.usage.record_batch(events=[event(account_id, "x1")])
    assert len(tries) == DEADLOCK_ATTEMPTS
    tries.clear()
    with pytest.raises(ConcurrencyConflict), db.unit_of_work() as uow:
        uow.usage.record_batch(events=[event(account_id, "x2")])
    assert len(tries) == 1  # the caller's transaction is the caller's to retry
    assert _count(db) == 0
