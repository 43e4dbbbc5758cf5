"""Subscriptions repository (``sql/subscriptions.sql``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from .._fanout_async import EARLIEST, claim_per_account
from .._paging import Page, PageRequest
from .._repository_async import AsyncRepository, execute, many, one
from .._validation import Id, Instant, Limit, RunInstant, validated
from ..errors import InvalidInput, InvalidTransition, NotFound
from ..models.billing import PendingItem
from ..models.plans import Plan
from ..models.subscriptions import (
    LIVE_STATUSES,
    Proration,
    Subscription,
    Upgrade,
)
from .api_keys_async import AsyncApiKeyRepository
from .plans_async import AsyncPlanRepository

Batch = Annotated[int, Field(ge=1, le=10_000)]

_LIVE: tuple[str, ...] = LIVE_STATUSES
_UPGRADABLE: tuple[str, ...] = ("trialing", "active")


class _DueSubscription(BaseModel):
    """A due subscription as the read without locks sees it (its place in the queue)."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    current_period_end: datetime


class _RenewedSubscription(BaseModel):
    """A subscription that ``renew_due`` handled (renewed, canceled or replaced)."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int


class AsyncSubscriptionRepository(AsyncRepository):
    """An account's subscriptions and their billing cycles; every method is scoped by account.

    Times default to the database's clock (the transaction's start); pass
    ``now`` (timezone-aware) to use another clock, as a test clock does. A
    subscription that belongs to another account is treated as missing.
    """

    aggregate = "subscriptions"

    _start = one("start_subscription", Subscription)
    _get = one("get_subscription", Subscription)
    _live = one("get_live_subscription", Subscription)
    _list = many("list_subscriptions", Subscription)
    _replace = one("replace_subscription", Subscription)
    _insert_upgrade = one("insert_upgrade", Subscription)
    _proration = one("compute_proration", Proration)
    _proration_items = many("insert_proration_items", PendingItem)
    _schedule_downgrade = one("schedule_downgrade", Subscription)
    _cancel_now = one("cancel_subscription_now", Subscription)
    _cancel_at_end = one("cancel_subscription_at_period_end", Subscription)
    _one_connection_per_node = execute("use_one_connection_per_node")
    _due = many("list_due_subscriptions", _DueSubscription)
    _renew_due = many("renew_due_subscriptions", _RenewedSubscription)

    @validated
    async def start(
        self,
        *,
        account_id: Id,
        plan_id: Id,
        trial: bool = False,
        now: Instant | None = None,
    ) -> Subscription:
        """Subscribe the account to a published plan and return the subscription.

        Trialing until ``now + trial_days`` when ``trial`` is asked for and the
        plan has trial days, else active (a trial is opt-in: the data layer
        cannot know whether the account had one before). The first period is
        ``[now, now + interval)`` and the billing anchor is ``now``. The
        subscription starts its own chain (``chain_id = id``) and the period's
        billing period is written with it (README: the billing model).

        Raises ``LiveSubscriptionExists`` when the account already has a live
        subscription (also when two callers start one at the same moment: one
        wins), ``NotFound`` when the plan does not exist, ``InvalidTransition``
        (entity ``plan``) when it is a draft or archived, ``ReferenceViolation``
        when the account does not exist, ``InvalidInput`` for a bad argument.
        """
        async with self._changing() as tx:
            subscription = await tx._start(
                account_id=account_id, plan_id=plan_id, trial=trial, now=now
            )
            if subscription is None:
                raise await _plan_refused(
                    tx._peer(AsyncPlanRepository), plan_id, expected=("published",)
                )
            await tx._changed(subscription.account_id)
        return subscription

    @validated
    async def get(self, *, account_id: Id, subscription_id: Id) -> Subscription | None:
        """The account's subscription with this id, in any status, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get(account_id=account_id, id=subscription_id)

    @validated
    async def require(self, *, account_id: Id, subscription_id: Id) -> Subscription:
        """Like ``get``, but raises ``NotFound`` instead of returning ``None``."""
        subscription = await self._get(account_id=account_id, id=subscription_id)
        if subscription is None:
            raise _not_found(account_id, subscription_id)
        return subscription

    @validated
    async def current(self, *, account_id: Id) -> Subscription | None:
        """The account's live (trialing, active or past-due) subscription, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._live(account_id=account_id)

    @validated
    async def history(
        self, *, account_id: Id, cursor: str | None = None, limit: Limit = 50
    ) -> Page[Subscription]:
        """A page of the account's subscriptions in every status, newest first.

        Pass ``next_cursor`` back for the next page. Raises ``InvalidInput``
        (field ``cursor``) for a cursor this listing did not make.
        """
        request = PageRequest.of(cursor, limit, "desc")
        return request.page(await self._list(**request.params, account_id=account_id))

    @validated
    async def upgrade_now(
        self,
        *,
        account_id: Id,
        subscription_id: Id,
        plan_id: Id,
        now: Instant | None = None,
    ) -> Upgrade:
        """Move a subscription to another plan at once, in one transaction, with proration.

        The subscription becomes ``replaced`` (ended at ``now``) and a new
        active one on ``plan_id`` replaces it in the same billing cycle: same
        period, same anchor, so its period started before it did, in the same
        subscription chain. The proration is computed in the database from the
        stored prices (the new plan charged for the rest of the period, the old
        one credited for the part of it that was not trial) and stored, in the
        same transaction, as two pending invoice items of the chain, which its
        next invoice bills once; the returned ``Proration`` shows the amounts.
        The period's usage is priced by the new plan. A trial ends with the
        upgrade; a pending downgrade or cancellation at period end does not
        carry over.

        Only a trialing or active subscription can be upgraded (a past-due one
        is settled first), and only inside its current period. The new plan
        must be published, differ from the current one, and share its currency
        and interval (a change of interval waits for the period end:
        ``downgrade_at_period_end``).

        Raises ``NotFound`` (no such subscription in the account, or no such
        plan), ``InvalidTransition`` (entity ``subscription``: not trialing or
        active, or ``now`` outside the period; entity ``plan``: not published),
        ``InvalidInput`` (field ``plan_id``: the same plan, another currency
        or another interval). Nothing changes when it raises.
        """
        async with self._atomic() as repo:
            replaced = await repo._replace(account_id=account_id, id=subscription_id, now=now)
            if replaced is None:
                await repo._refuse(
                    account_id,
                    subscription_id,
                    expected=_UPGRADABLE,
                    why=f"{'now' if now is None else now.isoformat()} is outside its current "
                    "period (renew it first) or it changed meanwhile",
                )
            subscription = await repo._insert_upgrade(
                account_id=account_id, replaces_id=subscription_id, plan_id=plan_id
            )
            if subscription is None:
                raise await _plan_refused(
                    repo._peer(AsyncPlanRepository),
                    plan_id,
                    expected=("published",),
                    current=replaced,  # async-only
                    # sync: current=replaced
                )
            proration = await repo._proration(
                account_id=account_id, subscription_id=subscription.id, now=now
            )
            assert proration is not None  # the row inserted just above
            plans = repo._peer(AsyncPlanRepository)
            since = f"{proration.effective_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
            old_plan = await plans.require(plan_id=proration.old_plan_id)  # async-only
            new_plan = await plans.require(plan_id=proration.new_plan_id)  # async-only
            items = [
                # async-only: begin
                (f"Unused time on {old_plan.name} from {since}", -proration.credit_minor),
                (f"Remaining time on {new_plan.name} from {since}", proration.charge_minor),
                # async-only: end
                # sync: (f"Unused time on {plans.require(plan_id=proration.old_plan_id).name} "
                # sync:  f"from {since}", -proration.credit_minor),
                # sync: (f"Remaining time on {plans.require(plan_id=proration.new_plan_id).name} "
                # sync:  f"from {since}", proration.charge_minor),
            ]  # fmt: skip
            items = [(d, a) for d, a in items if a]
            if items:
                await repo._proration_items(
                    account_id=account_id,
                    chain_id=subscription.chain_id,
                    subscription_id=subscription.id,
                    currency=proration.currency,
                    effective_at=proration.effective_at,
                    period_end=proration.period_end,
                    descriptions=[d for d, _ in items],
                    amounts_minor=[a for _, a in items],
                )
            await repo._changed(account_id)
        return Upgrade(replaced=replaced, subscription=subscription, proration=proration)

    @validated
    async def downgrade_at_period_end(
        self, *, account_id: Id, subscription_id: Id, plan_id: Id
    ) -> Subscription:
        """Schedule a move to ``plan_id`` at the end of the current period (``pending_plan_id``).

        ``renew_due`` applies it: the subscription is replaced by one on the
        new plan that starts the next period. Scheduling again replaces the
        pending plan; a cancellation at period end wins over it. The plan must
        be published, differ from the current one and share its currency; its
        interval may differ.

        Raises ``NotFound`` (no such subscription in the account, or no such
        plan), ``InvalidTransition`` (entity ``subscription``: not live;
        entity ``plan``: not published), ``InvalidInput`` (field ``plan_id``:
        the same plan or another currency). Nothing changes when it raises.
        """
        async with self._changing() as tx:
            subscription = await tx._schedule_downgrade(
                account_id=account_id, id=subscription_id, plan_id=plan_id
            )
            if subscription is None:
                current = await tx._check(account_id, subscription_id, expected=_LIVE)
                raise await _plan_refused(
                    tx._peer(AsyncPlanRepository),
                    plan_id,
                    expected=("published",),
                    current=current,
                    interval=False,
                )
            await tx._changed(subscription.account_id)
        return subscription

    @validated
    async def cancel_now(
        self, *, account_id: Id, subscription_id: Id, now: Instant | None = None
    ) -> Subscription:
        """End a live subscription at once: canceled, with ``canceled_at = ended_at = now``.

        A pending downgrade is dropped. The chain's billing period closes at
        ``now``: its usage window ends there and its invoice bills the period's
        base fee in full (no credit for the unused time, as Stripe's default;
        issue a credit note to give some back). Raises ``NotFound`` when the
        account has no such subscription, ``InvalidTransition`` (nothing
        changed) when it is not live.
        """
        async with self._changing() as tx:
            subscription = await tx._cancel_now(account_id=account_id, id=subscription_id, now=now)
            if subscription is None:
                await tx._refuse(account_id, subscription_id, expected=_LIVE)
            await tx._changed(subscription.account_id)
        return subscription

    @validated
    async def cancel_at_period_end(
        self, *, account_id: Id, subscription_id: Id, now: Instant | None = None
    ) -> Subscription:
        """Let a live subscription run to the end of its period, then cancel it (``renew_due``).

        ``canceled_at`` records when it was asked (``now``); the subscription
        stays live until the renewal cancels it. Asking again is harmless.
        Raises ``NotFound`` when the account has no such subscription,
        ``InvalidTransition`` (nothing changed) when it is not live.
        """
        async with self._changing() as tx:
            subscription = await tx._cancel_at_end(
                account_id=account_id, id=subscription_id, now=now
            )
            if subscription is None:
                await tx._refuse(account_id, subscription_id, expected=_LIVE)
            await tx._changed(subscription.account_id)
        return subscription

    @validated
    async def renew_due(self, *, now: RunInstant | None = None, batch: Batch = 100) -> int:
        """Renew up to ``batch`` live subscriptions whose period ended by ``now``, in one statement.

        Each is canceled (cancel at period end), replaced by a subscription on
        its pending plan (downgrade: the old one ends with its period and the
        successor, ``replaces_id`` pointing back, starts the next one), or
        moved one interval forward; a trial that ended by the period end
        becomes active. Period ends stay on the billing anchor's grid (Jan 31,
        Feb 28, Mar 31). Each chain that goes on opens its next billing period
        in the same statement. Rows another renewer holds are skipped, so
        concurrent renewers never handle one subscription twice. The billing
        run (``billing.run``) calls this first.

        Returns how many subscriptions were handled; call again until it
        returns 0 (a subscription many periods behind advances one period per
        call, so each period is renewed exactly once). This is a
        maintenance task over every account, like ``rollups refresh``: the
        due subscriptions are read without locks, oldest period end first,
        and each account's is renewed by a statement of its own
        (``datalayer._fanout``, so that on Citus every lock is taken on one
        shard), all in one transaction.

        Raises ``InvalidInput`` for a bad argument, before any SQL; ``now`` may
        be at most five years past the clock, as for ``billing.run``.
        """
        async with self._atomic() as tx:
            await tx._one_connection_per_node()
            visited: set[int] = set()

            async def due(after: _DueSubscription | None, n: int) -> list[_DueSubscription]:
                return await tx._due(
                    now=now,
                    after_period_end=after.current_period_end if after else EARLIEST,
                    after_account_id=after.account_id if after else 0,
                    after_id=after.id if after else 0,
                    batch=n,
                )

            async def renew(shares: list[tuple[int, int]]) -> list[_RenewedSubscription]:
                # Once per call: a renewed subscription still due comes back after the
                # cursor, and the renewer's own lock does not make it skip its row.
                calls = [
                    {"account_id": a, "now": now, "batch": n} for a, n in shares if a not in visited
                ]
                visited.update(a for a, _ in shares)
                return [r for renewed in await tx._renew_due.each(calls) for r in renewed]

            renewed = await claim_per_account(due, renew, batch)
            for account_id in sorted({r.account_id for r in renewed}):
                await tx._changed(account_id)
        return len(renewed)

    async def _changed(self, account_id: int) -> None:
        """After commit, drop the account's cached subscription and API-key auth contexts."""
        await self._peer(AsyncApiKeyRepository)._invalidate_account(account_id)

    async def _check(
        self, account_id: int, subscription_id: int, *, expected: tuple[str, ...]
    ) -> Subscription:
        """The subscription, if the account has it in an expected status; else raise.

        Raises ``NotFound`` (no such subscription in the account) or
        ``InvalidTransition`` (another status).
        """
        found = await self._get(account_id=account_id, id=subscription_id)
        if found is None:
            raise _not_found(account_id, subscription_id)
        if found.status not in expected:
            raise InvalidTransition(
                f"subscription {subscription_id} is {found.status}; "
                f"expected {' or '.join(expected)}",
                entity="subscription",
                entity_id=subscription_id,
                expected=expected,
                actual=found.status,
            )
        return found

    async def _refuse(
        self,
        account_id: int,
        subscription_id: int,
        *,
        expected: tuple[str, ...],
        why: str = "it changed meanwhile; retry",
    ) -> NoReturn:
        """Why a guarded change matched no row: raise ``NotFound`` or ``InvalidTransition``.

        ``why`` explains a refusal of a subscription that is in an expected
        status (a further condition of the statement did not hold).
        """
        found = await self._check(account_id, subscription_id, expected=expected)
        raise InvalidTransition(
            f"subscription {subscription_id} is {found.status} but {why}",
            entity="subscription",
            entity_id=subscription_id,
            expected=expected,
            actual=found.status,
        )


def _not_found(account_id: int, subscription_id: int) -> NotFound:
    return NotFound(f"subscription {subscription_id} not found in account {account_id}")


async def _plan_refused(
    plans: AsyncPlanRepository,
    plan_id: int,
    *,
    expected: tuple[str, ...],
    current: Subscription | None = None,
    interval: bool = True,
) -> NotFound | InvalidTransition | InvalidInput:
    """Why a plan was refused for a subscription: missing, not published, or not a fit.

    ``current`` is the subscription moving off its plan; the new plan must
    differ from that one and share its currency (and its interval, when
    ``interval``).
    """
    plan = await plans.get(plan_id=plan_id)
    if plan is None:
        return NotFound(f"plan {plan_id} not found")
    if plan.status not in expected:
        return InvalidTransition(
            f"plan {plan.code} version {plan.version} (id {plan_id}) is {plan.status}; "
            "subscriptions need a published plan",
            entity="plan",
            entity_id=plan_id,
            expected=expected,
            actual=plan.status,
        )
    old: Plan | None = await plans.get(plan_id=current.plan_id) if current is not None else None
    if old is not None:
        if old.id == plan.id:
            return InvalidInput("is already the subscription's plan", field="plan_id")
        if old.currency != plan.currency:
            return InvalidInput(
                f"plan {plan_id} is priced in {plan.currency}, the subscription in {old.currency}",
                field="plan_id",
            )
        if interval and (old.billing_interval, old.interval_count) != (
            plan.billing_interval,
            plan.interval_count,
        ):
            return InvalidInput(
                f"plan {plan_id} bills every {plan.interval_count} {plan.billing_interval}, "
                f"the subscription every {old.interval_count} {old.billing_interval}; "
                "change the interval at the period end (downgrade_at_period_end)",
                field="plan_id",
            )
    return InvalidTransition(
        f"plan {plan_id} could not be applied: the subscription changed meanwhile; retry",
        entity="plan",
        entity_id=plan_id,
        expected=expected,
        actual=plan.status,
    )
