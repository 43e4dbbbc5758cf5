"""Quota repository (``sql/quotas.sql``): atomic consumption, reservations, status."""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._repository_async import AsyncRepository, execrows, many, one, scalar
from .._validation import Id, MeterCode, validated
from ..errors import (
    CheckViolation,
    ConcurrencyConflict,
    InvalidTransition,
    NotFound,
    QuotaExceeded,
)
from ..models.plans import LimitKind
from ..models.quotas import QuotaCounter, QuotaDecision, QuotaStatus, Reservation
from .usage_reports_async import AsyncUsageReportRepository

Quantity = Annotated[Decimal, Field(gt=0, lt=Decimal("1e12"), allow_inf_nan=False)]
Settled = Annotated[Decimal, Field(ge=0, lt=Decimal("1e12"), allow_inf_nan=False)]
Ttl = Annotated[timedelta, Field(gt=timedelta(0), le=timedelta(days=7))]

_HARD_LIMIT_CHECK = "quota_counters_hard_limit_check"
# A consume retries when the counter appeared under it (first use of a period).
_ATTEMPTS = 3
# expire_reservations: accounts per transaction.
_EXPIRE_PAGE = 100


class _Expiring(BaseModel):
    """An account holding a reservation past its expiry."""

    model_config = ConfigDict(frozen=True)

    account_id: int


class _QuotaState(BaseModel):
    """A meter of the live plan with its limit and this period's counter values."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    meter_code: str
    period_start: datetime
    period_end: datetime
    limit_kind: LimitKind
    limit_quantity: Decimal
    used: Decimal
    reserved: Decimal
    counter_exists: bool


class AsyncQuotaRepository(AsyncRepository):
    """Quotas of the live subscription's plan, per meter and billing period.

    Hard limits are enforced by one atomic UPDATE (and, as the last line of
    defence, by the ``quota_counters_hard_limit_check`` constraint); they are
    never decided from a cache or a read-then-write.
    """

    aggregate = "quotas"

    _consume = one("consume_quota", QuotaCounter)
    _open_counter = execrows("open_quota_counter")
    _states = many("get_quota_states", _QuotaState)
    _reserve = one("reserve_quota", Reservation)
    _settle = one("settle_quota_reservation", QuotaCounter)
    _get_reservation = one("get_quota_reservation", Reservation)
    _expiring = many("list_expired_reservation_accounts", _Expiring)
    _expire = scalar("expire_quota_reservations", int)

    @validated
    async def consume(
        self, *, account_id: Id, meter_code: MeterCode, quantity: Quantity
    ) -> QuotaDecision:
        """Consume ``quantity`` of the meter's quota for the current period.

        Hard limit: one atomic statement admits it only if ``used + reserved +
        quantity <= limit``, so concurrent callers can never overspend; a
        refusal raises ``QuotaExceeded`` (limit, used, remaining) and consumes
        nothing. Soft limit: always admitted; ``over_limit`` says the limit was
        passed. Raises ``NotFound`` when the account has no live subscription
        whose plan has the meter, ``InvalidInput`` for a bad argument.
        """
        for _ in range(_ATTEMPTS):
            counter = await self._consume(
                account_id=account_id, meter_code=meter_code, quantity=quantity
            )
            if counter is not None:
                return _decision(counter)
            await self._refuse_or_open(account_id, meter_code, quantity)
        raise _busy(meter_code)

    @validated
    async def reserve(
        self, *, account_id: Id, meter_code: MeterCode, quantity: Quantity, ttl: Ttl
    ) -> Reservation:
        """Hold ``quantity`` for a long job, under the same hard-limit rule as ``consume``.

        The reservation expires after ``ttl`` (at most 7 days) unless settled
        or released; ``expire_reservations`` returns expired holds. Raises
        ``QuotaExceeded``, ``NotFound`` (no live plan with the meter) and
        ``InvalidInput``.
        """
        for _ in range(_ATTEMPTS):
            reservation = await self._reserve(
                account_id=account_id, meter_code=meter_code, quantity=quantity, ttl=ttl
            )
            if reservation is not None:
                return reservation
            await self._refuse_or_open(account_id, meter_code, quantity)
        raise _busy(meter_code)

    @validated
    async def settle(self, *, account_id: Id, reservation_id: Id, used: Settled) -> QuotaCounter:
        """Close a held reservation, charging ``used`` (which may differ from what was held).

        Raises ``InvalidTransition`` when the reservation is no longer held
        (settled, released or expired), ``NotFound`` when the account has no
        such reservation, ``QuotaExceeded`` when ``used`` passes a hard limit
        (the reservation then stays held), ``InvalidInput`` for a bad argument.
        """
        return await self._close(account_id, reservation_id, used, "settled")

    @validated
    async def release(self, *, account_id: Id, reservation_id: Id) -> QuotaCounter:
        """Give a held reservation back unused.

        Raises ``InvalidTransition`` when it is no longer held and
        ``NotFound`` when the account has no such reservation.
        """
        return await self._close(account_id, reservation_id, Decimal(0), "released")

    async def expire_reservations(self) -> int:
        """Release every held reservation past its expiry; return how many.

        Run it periodically (a crashed job never settles). The accounts that
        hold one are read without locks, in account order, and each
        account's are released by one statement of its own (so that on Citus
        each routes to one shard), up to 100 accounts per transaction. Raises
        only the errors of the database (``Unavailable``, ``QueryTimeout``).
        """
        expired = 0
        after = 0
        while True:
            async with self._atomic() as tx:
                accounts = await tx._expiring(after_account_id=after, limit=_EXPIRE_PAGE)
                calls = [{"account_id": a.account_id} for a in accounts]
                expired += sum(n or 0 for n in await tx._expire.each(calls))
            if len(accounts) < _EXPIRE_PAGE:
                return expired
            after = accounts[-1].account_id

    @validated
    async def status(self, *, account_id: Id) -> builtins.list[QuotaStatus]:
        """Per meter of the live plan: limit, used, reserved, remaining and metered usage.

        ``metered`` is the period's usage events that are not cancelled, read
        from rollups plus the not-yet-rolled tail (``usage_reports.period_totals``).
        ``used`` is what ``consume`` and ``settle`` admitted, and cancelling a
        usage event does not refund it: a quota decision made in the past
        stands. Raises ``InvalidInput`` for a bad argument; an account
        without a live subscription has an empty status.
        """
        states = await self._states(account_id=account_id, meter_code=None)
        if not states:
            return []
        first = states[0]
        metered = {
            t.meter_code: t.quantity_sum
            for t in await AsyncUsageReportRepository(self._session).period_totals(
                account_id=account_id, period_start=first.period_start, period_end=first.period_end
            )
        }
        return [
            QuotaStatus(
                meter_code=s.meter_code,
                limit_kind=s.limit_kind,
                limit=s.limit_quantity,
                used=s.used,
                reserved=s.reserved,
                remaining=s.limit_quantity - s.used - s.reserved,
                metered=metered.get(s.meter_code, Decimal(0)),
                period_start=s.period_start,
                period_end=s.period_end,
            )
            for s in states
        ]

    async def _refuse_or_open(self, account_id: int, meter_code: str, quantity: Decimal) -> None:
        """After a refused update: raise if the limit is the reason, else make the counter.

        The update also finds nothing when the period's counter does not exist
        yet (first use in a period), or was created by another caller after
        this one looked: then the caller simply tries again.
        """
        state = await self._state(account_id, meter_code)
        if not state.counter_exists:
            await self._open_counter(account_id=account_id, meter_code=meter_code)
        elif state.limit_kind == "hard" and (
            state.used + state.reserved + quantity > state.limit_quantity
        ):
            raise _exceeded(state, quantity)

    async def _state(self, account_id: int, meter_code: str) -> _QuotaState:
        states = await self._states(account_id=account_id, meter_code=meter_code)
        if not states:
            raise NotFound(
                f"account {account_id} has no live subscription whose plan has meter {meter_code}"
            )
        return states[0]

    async def _close(
        self,
        account_id: int,
        reservation_id: int,
        used: Decimal,
        status: Literal["settled", "released"],
    ) -> QuotaCounter:
        try:
            counter = await self._settle(
                account_id=account_id, id=reservation_id, used=used, status=status
            )
        except CheckViolation as exc:
            if exc.constraint != _HARD_LIMIT_CHECK:
                raise
            reservation = await self._get_reservation(account_id=account_id, id=reservation_id)
            assert reservation is not None
            state = await self._state(account_id, reservation.meter_code)
            raise _exceeded(state, used - reservation.quantity) from exc
        if counter is not None:
            return counter
        reservation = await self._get_reservation(account_id=account_id, id=reservation_id)
        if reservation is None:
            raise NotFound(f"reservation {reservation_id} not found in account {account_id}")
        raise InvalidTransition(
            f"reservation {reservation_id} is {reservation.status}, not held",
            entity="quota_reservation",
            entity_id=reservation_id,
            expected=("held",),
            actual=reservation.status,
        )


def _decision(counter: QuotaCounter) -> QuotaDecision:
    remaining = counter.limit_quantity - counter.used - counter.reserved
    return QuotaDecision(
        meter_code=counter.meter_code,
        limit_kind=counter.limit_kind,
        limit=counter.limit_quantity,
        used=counter.used,
        reserved=counter.reserved,
        remaining=remaining,
        over_limit=counter.limit_kind != "none" and remaining < 0,
    )


def _exceeded(state: _QuotaState, quantity: Decimal) -> QuotaExceeded:
    taken = state.used + state.reserved
    remaining = state.limit_quantity - taken
    return QuotaExceeded(
        f"{quantity} {state.meter_code} would pass the hard limit of {state.limit_quantity} "
        f"({taken} used or reserved, {remaining} remaining this period)",
        meter_code=state.meter_code,
        limit=state.limit_quantity,
        used=taken,
        remaining=remaining,
    )


def _busy(meter_code: str) -> ConcurrencyConflict:
    return ConcurrencyConflict(
        f"the quota counter of {meter_code} kept changing under this call; retry",
        table="quota_counters",
    )
