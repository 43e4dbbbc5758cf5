"""The billing run (``sql/billing.sql``): renew, make, remake and issue invoices, in batches.

Each step claims a batch of work with ``FOR UPDATE SKIP LOCKED`` (read across
accounts without locks, then locked one account at a time: ``datalayer._fanout``)
in a transaction of its own and does each item in a savepoint: an item that raises
is rolled back alone, logged, counted and left for the next run; two runners
skip each other's batches; a crash loses only the batch in flight, which the
next run does again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from .._billing import usage_lines
from .._fanout_async import EARLIEST, claim_per_account, shares
from .._repository_async import many
from ..errors import DataLayerError
from ..models.billing import BillingPeriod, BillingRunResult
from .invoicing_async import AsyncInvoicing, _period
from .subscriptions_async import AsyncSubscriptionRepository

log = logging.getLogger("datalayer")

# Stripe finalises an invoice an hour after its period ends: late usage of that
# hour still lands on the invoice itself rather than on an adjustment.
DEFAULT_GRACE = timedelta(hours=1)


class _ClosedPeriod(BaseModel):
    """A closed period to invoice as the read without locks sees it (its place in the queue)."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    closes_at: datetime


class _Draft(BaseModel):
    """A draft invoice as the read without locks sees it."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int


class _ClaimedDraft(BaseModel):
    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    due_at: datetime


@dataclass
class _Counts:
    renewed: int = 0
    generated: int = 0
    refreshed: int = 0
    finalized: int = 0
    adjustment_invoices: int = 0
    credit_applied_minor: int = 0
    failed: int = 0
    stopped: bool = False


def _never() -> bool:
    return False


class AsyncBillingRun(AsyncInvoicing):
    """The billing run; the base of ``BillingRepository``."""

    aggregate = "billing"

    _closed_periods = many("list_closed_periods", _ClosedPeriod)
    _claim_periods = many("claim_closed_periods", BillingPeriod)
    _drafts_after = many("list_drafts", _Draft)
    _claim_drafts = many("claim_drafts", _ClaimedDraft)
    _ended = many("list_ended_chain_periods", BillingPeriod)

    async def _run(
        self,
        now: datetime,
        grace: timedelta,
        batch: int,
        stop: Callable[[], bool] = _never,
    ) -> BillingRunResult:
        counts = _Counts()
        renewals = self._peer(AsyncSubscriptionRepository)
        while not stop() and (renewed := await renewals.renew_due(now=now, batch=batch)) > 0:
            counts.renewed += renewed
        for step in (self._drafts, self._periods):
            if not stop():
                await step(now, grace, batch, counts, stop)
        if not stop():
            await self._ended_chains(now, batch, counts, stop)
        counts.stopped = stop()
        return BillingRunResult(**vars(counts))

    async def _drafts(
        self,
        now: datetime,
        grace: timedelta,
        batch: int,
        counts: _Counts,
        stop: Callable[[], bool],
    ) -> None:
        """Issue every draft whose grace has passed; make the others again."""
        after = 0
        while True:
            async with self._atomic() as tx:
                drafts = await tx._drafts_after(after_id=after, batch=batch)
                for draft in await tx._claim_among(drafts, grace):
                    await tx._item(
                        counts, f"draft invoice {draft.id}", _bind(tx._draft, draft, now, counts)
                    )
            if len(drafts) < batch or stop():
                return
            after = drafts[-1].id

    async def _claim_among(self, drafts: list[_Draft], grace: timedelta) -> list[_ClaimedDraft]:
        """Lock ``drafts`` (read without locks) one account at a time, in id order.

        Those another runner holds, or no longer drafts, are left out: this
        run goes on after them (``datalayer._fanout``).
        """
        calls = [
            {"account_id": a, "ids": [d.id for d in drafts if d.account_id == a], "grace": grace}
            for a, _ in shares(drafts)
        ]
        claimed = [draft for locked in await self._claim_drafts.each(calls) for draft in locked]
        return sorted(claimed, key=lambda d: d.id)

    async def _draft(self, draft: _ClaimedDraft, now: datetime, counts: _Counts) -> None:
        invoice = await self._lock(account_id=draft.account_id, id=draft.id)
        if invoice is None or invoice.status != "draft":
            return
        if draft.due_at <= now:
            issued = await self._issue(invoice, now, timedelta(days=30))
            counts.finalized += 1
            counts.credit_applied_minor += issued.credit_applied_minor
        else:
            await self._remake(invoice, now)
            counts.refreshed += 1

    async def _periods(
        self,
        now: datetime,
        grace: timedelta,
        batch: int,
        counts: _Counts,
        stop: Callable[[], bool],
    ) -> None:
        """Make the invoice of every closed period, each chain in order."""
        skip: list[int] = []
        while True:
            async with self._atomic() as tx:
                claimed = await tx._claim_closed(now, batch, skip)
                for period in claimed:
                    await tx._item(
                        counts,
                        f"billing period {period.id}",
                        _bind(tx._period, period, now, grace, counts),
                    )
                    skip.append(period.id)  # once per run, whatever happened to it
            if not claimed or stop():
                return

    async def _claim_closed(
        self, now: datetime, batch: int, skip: list[int]
    ) -> list[BillingPeriod]:
        """Lock up to ``batch`` closed periods to invoice, not those of ``skip``, oldest first.

        Read without locks across accounts, then locked one account at a time
        (``datalayer._fanout``); periods another runner holds are skipped.
        """
        taken: list[int] = []  # claimed already: this transaction's own locks do not skip them

        async def closed(after: _ClosedPeriod | None, n: int) -> list[_ClosedPeriod]:
            return await self._closed_periods(
                now=now,
                after_closes_at=after.closes_at if after else EARLIEST,
                after_account_id=after.account_id if after else 0,
                after_id=after.id if after else 0,
                skip_ids=skip + taken,
                batch=n,
            )

        async def claim(shares: list[tuple[int, int]]) -> list[BillingPeriod]:
            skip_ids = skip + taken
            calls = [
                {"account_id": a, "now": now, "batch": n, "skip_ids": skip_ids} for a, n in shares
            ]
            periods = [p for claimed in await self._claim_periods.each(calls) for p in claimed]
            taken.extend(p.id for p in periods)
            return periods

        claimed = await claim_per_account(closed, claim, batch)
        return sorted(claimed, key=lambda p: (p.closes_at, p.account_id, p.id))

    async def _period(
        self, period: BillingPeriod, now: datetime, grace: timedelta, counts: _Counts
    ) -> None:
        invoice, made = await self._invoice_period(period, now)
        counts.generated += made
        if invoice.status == "draft" and period.closes_at + grace <= now:
            locked = await self._lock(account_id=invoice.account_id, id=invoice.id)
            assert locked is not None  # made just above, in this transaction
            issued = await self._issue(locked, now, timedelta(days=30))
            counts.finalized += 1
            counts.credit_applied_minor += issued.credit_applied_minor

    async def _ended_chains(
        self, now: datetime, batch: int, counts: _Counts, stop: Callable[[], bool]
    ) -> None:
        """Give each ended chain whose billed usage changed a standalone adjustment invoice."""
        after = 0
        while True:
            periods = await self._ended(after_id=after, batch=batch)
            chains: dict[tuple[int, int], list[BillingPeriod]] = {}
            for p in periods:
                chains.setdefault((p.account_id, p.chain_id), []).append(p)
            for (_account_id, chain_id), members in chains.items():
                async with self._atomic() as tx:
                    await tx._item(
                        counts,
                        f"adjustments of chain {chain_id}",
                        _bind(tx._adjust, members, now, counts),
                    )
            if len(periods) < batch or stop():
                return
            after = periods[-1].id

    async def _adjust(self, members: list[BillingPeriod], now: datetime, counts: _Counts) -> None:
        """A standalone draft for the chain of ``members`` if their billed usage is off."""
        first, last = members[0], max(members, key=lambda p: p.period_start)
        probe = await self._by_period(account_id=last.account_id, billing_period_id=last.id)
        assert probe is not None  # ended chains' periods are invoiced
        usage = await self._usage(probe.model_copy(update={"id": 0}), members)
        if not any(usage_lines(_period(p), usage.get(p.id, []), own=False) for p in members):
            # Nothing changed: checked now, and settled once past the horizon.
            await self._checked(first.account_id, [p.id for p in members], now)
            return
        made = await self._insert_invoice(
            account_id=first.account_id,
            subscription_id=last.subscription_id,
            chain_id=first.chain_id,
            billing_period_id=None,
            currency=probe.currency,
            period_start=min(p.period_start for p in members),
            period_end=max(p.period_end for p in members),
            created_at=now,
        )
        if made is None:  # another runner made the chain's draft meanwhile
            return
        await self._make(made, None, now)
        counts.adjustment_invoices += 1

    async def _item(self, counts: _Counts, what: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Do one work item in a savepoint; on a datalayer error roll it back and go on."""
        try:
            async with self._session.atomic():
                await work()
        except DataLayerError as exc:
            counts.failed += 1
            log.warning("billing run: %s failed and is left for the next run: %s", what, exc)
            return False
        return True


def _bind(fn: Callable[..., Awaitable[None]], *args: object) -> Callable[[], Awaitable[None]]:
    """``fn`` with its arguments, to call later (a work item)."""
    return lambda: fn(*args)
