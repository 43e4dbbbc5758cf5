"""Usage repository (``sql/usage.sql``): exactly-once event recording."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from psycopg.types.json import Jsonb
from pydantic import AwareDatetime, Field, StringConstraints, TypeAdapter

from .._repository import Repository, copy_in, execute, many, one, scalar
from .._validation import Id, validate_batch, validated
from ..errors import InvalidInput, ReferenceViolation
from ..models.usage import (
    BatchResult,
    RecordResult,
    Rejection,
    StagedRejection,
    UsageEvent,
    UsageEventIn,
)

MeterCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]+$")
]
Quantity = Annotated[Decimal, Field(ge=0, lt=Decimal("1e12"), allow_inf_nan=False)]

# Events older than this, or further in the future, are refused (DOMAIN.md).
ACCEPTED_AGE = timedelta(days=35)
ACCEPTED_SKEW = timedelta(minutes=5)


def check_window(occurred_at: datetime, now: datetime | None = None) -> None:
    """Raise ``InvalidInput`` (field ``occurred_at``) for a time outside the accepted window."""
    now = now or datetime.now(UTC)
    if occurred_at < now - ACCEPTED_AGE:
        raise InvalidInput(
            f"older than the accepted window of {ACCEPTED_AGE.days} days", field="occurred_at"
        )
    if occurred_at > now + ACCEPTED_SKEW:
        raise InvalidInput("more than 5 minutes in the future", field="occurred_at")


class UsageRepository(Repository):
    """Metered usage events of an account."""

    aggregate = "usage"

    _record = one("record_usage_event", UsageEvent)
    _by_key = one("get_usage_event_by_key", UsageEvent)
    _target_exists = scalar("usage_target_exists", bool)
    _create_staging = execute("create_usage_staging")
    _copy_staging = copy_in("copy_usage_staging")
    _unknown_targets = many("find_unknown_usage_targets", StagedRejection)
    _insert_staged = scalar("insert_staged_usage", int)
    _drop_staging = execute("drop_usage_staging")

    @validated
    def record(
        self,
        *,
        account_id: Id,
        meter_code: MeterCode,
        quantity: Quantity,
        occurred_at: AwareDatetime,
        idempotency_key: IdempotencyKey,
        user_id: Id | None = None,
        api_key_id: Id | None = None,
        properties: dict[str, Any] | None = None,
    ) -> RecordResult:
        """Store one event exactly once per ``(account_id, idempotency_key)``.

        A key seen before (even with another timestamp, even sent by another
        process at the same moment) stores nothing and returns
        ``duplicate=True`` with the first event (``None`` if that event has
        since been archived); that is not an error. Raises
        ``InvalidInput`` for a bad argument or a time outside the accepted
        window, ``PartitionMissing`` when the month has no partition,
        ``ReferenceViolation`` for an unknown account or meter.
        """
        check_window(occurred_at)
        event = self._record(
            account_id=account_id,
            meter_code=meter_code,
            quantity=quantity,
            occurred_at=occurred_at,
            idempotency_key=idempotency_key,
            user_id=user_id,
            api_key_id=api_key_id,
            properties=Jsonb(properties or {}),
        )
        if event is not None:
            return RecordResult(event=event, duplicate=False)
        first = self._by_key(account_id=account_id, idempotency_key=idempotency_key)
        if first is None and not self._target_exists(account_id=account_id, meter_code=meter_code):
            raise ReferenceViolation(
                f"unknown account {account_id} or meter {meter_code!r}",
                table="usage_events",
            )
        return RecordResult(event=first, duplicate=True)

    @validated
    def get_by_key(self, *, account_id: Id, idempotency_key: IdempotencyKey) -> UsageEvent | None:
        """The event stored under this idempotency key, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return self._by_key(account_id=account_id, idempotency_key=idempotency_key)

    def record_batch(
        self, *, events: Sequence[UsageEventIn | Mapping[str, Any]], now: datetime | None = None
    ) -> BatchResult:
        """Store a batch of events exactly once each; report duplicates and rejections.

        Each event is validated (a bad field, or a time outside the accepted
        window, rejects that event with the reason); the valid ones go in by
        binary COPY into a transaction-private staging table, then one
        set-based statement stores each new key's event. Events of an unknown
        account or meter are rejected; a key already stored (or repeated in
        the batch) is a duplicate, which is not an error. All-or-nothing for
        the valid events: raises ``PartitionMissing`` (nothing stored) when a
        month has no partition, ``Unavailable`` if the database is lost.
        """
        moment = now or datetime.now(UTC)
        rejected: list[Rejection] = []
        valid: list[tuple[int, UsageEventIn]] = []
        for index, event in enumerate(_validate_all(events, rejected)):
            if event is None:
                continue
            if event.occurred_at < moment - ACCEPTED_AGE:
                reason = f"outside the accepted window: older than {ACCEPTED_AGE.days} days"
            elif event.occurred_at > moment + ACCEPTED_SKEW:
                reason = "outside the accepted window: more than 5 minutes in the future"
            else:
                valid.append((index, event))
                continue
            rejected.append(
                Rejection(index=index, idempotency_key=event.idempotency_key, reason=reason)
            )
        inserted = 0
        if valid:
            with self._atomic() as session:
                repo = type(self)(session)
                repo._create_staging()
                repo._copy_staging(
                    rows=(
                        (i, e.account_id, e.user_id, e.api_key_id, e.meter_code, e.quantity,
                         e.occurred_at, e.idempotency_key, Jsonb(e.properties))
                        for i, e in valid
                    ),
                    types=_STAGING_TYPES,
                )  # fmt: skip
                keys = dict(valid)
                for unknown in repo._unknown_targets():
                    key = keys[unknown.idx].idempotency_key
                    rejected.append(
                        Rejection(index=unknown.idx, idempotency_key=key, reason=unknown.reason)
                    )
                inserted = repo._insert_staged() or 0
                repo._drop_staging()
        rejected.sort(key=lambda r: r.index)
        duplicates = len(events) - len(rejected) - inserted
        return BatchResult(inserted=inserted, duplicates=duplicates, rejected=rejected)


_STAGING_TYPES = [
    "int4", "int8", "int8", "int8", "text", "numeric", "timestamptz", "text", "jsonb",
]  # fmt: skip
_EVENTS = TypeAdapter(list[UsageEventIn])


def _validate_all(
    events: Sequence[UsageEventIn | Mapping[str, Any]], rejected: list[Rejection]
) -> list[UsageEventIn | None]:
    """Validate a batch (see ``validate_batch``), recording each bad event with its key."""
    models, bad = validate_batch(UsageEventIn, _EVENTS, events)
    for index, reason in bad:
        raw = events[index]
        key = raw.get("idempotency_key") if isinstance(raw, Mapping) else None
        rejected.append(
            Rejection(
                index=index, idempotency_key=key if isinstance(key, str) else None, reason=reason
            )
        )
    return models
