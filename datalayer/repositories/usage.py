"""Usage repository (``sql/usage.sql``): exactly-once event recording."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from psycopg.types.json import Jsonb
from pydantic import AwareDatetime, Field, StringConstraints

from .._repository import Repository, one, scalar
from .._validation import Id, validated
from ..errors import InvalidInput, ReferenceViolation
from ..models.usage import RecordResult, UsageEvent

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
        """The event stored under this idempotency key, or ``None``."""
        return self._by_key(account_id=account_id, idempotency_key=idempotency_key)
