"""Plans repository (``sql/plans.sql``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .._cachecore import account_tag, key_tag, plan_tag
from .._paging import Page, PageRequest, update_params
from .._repository_async import AsyncRepository, many, one
from .._validation import Id, Limit, Name, validated
from ..errors import InvalidInput, InvalidTransition, NotFound
from ..models.plans import BillingInterval, Plan, PlanMeter, PlanMeterSpec, PlanWithMeters

PlanCode = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
IntervalCount = Annotated[int, Field(ge=1, le=365)]
TrialDays = Annotated[int, Field(ge=0, le=365)]
MinorUnits = Annotated[int, Field(ge=0, le=2**63 - 1)]

_UPDATABLE = (
    "name",
    "billing_interval",
    "interval_count",
    "base_price_minor",
    "currency",
    "trial_days",
    "is_public",
)


class _Subscriber(BaseModel):
    account_id: int
    secret_hash: bytes | None


class AsyncPlanRepository(AsyncRepository):
    """Versioned plans with their meters: a shared reference table (no ``account_id``).

    A plan version is created as a draft, edited freely, published once and
    archived at the end; published and archived versions never change (the
    database enforces it with the trigger ``plans_published_immutable``).
    """

    aggregate = "plans"

    _create = one("create_plan", Plan)
    _add_meters = many("add_plan_meters", PlanMeter)
    _subscribers = many("list_plan_subscriber_cache_keys", _Subscriber)
    _publish = one("publish_plan", Plan)
    _archive = one("archive_plan", Plan)
    _update = one("update_draft_plan", Plan)
    _row = one("get_plan_row", Plan)
    _get = one("get_plan", PlanWithMeters)
    _current = one("get_current_plan", PlanWithMeters)
    _list_public = many("list_public_plans", PlanWithMeters)

    @validated
    async def create_draft(
        self,
        *,
        code: PlanCode,
        name: Name,
        billing_interval: BillingInterval,
        base_price_minor: MinorUnits,
        currency: Currency,
        interval_count: IntervalCount = 1,
        trial_days: TrialDays = 0,
        is_public: bool = True,
        meters: list[PlanMeterSpec] | None = None,
    ) -> PlanWithMeters:
        """Create the next version of ``code`` as a draft, with its meters, in one transaction.

        The version is the highest existing version of the code plus one (1 for
        a new code). ``meters`` may be ``PlanMeterSpec`` objects or dicts of
        their fields. Raises ``InvalidInput`` for a bad argument or a meter
        given twice (field ``meters``), ``ReferenceViolation`` (constraint
        ``plan_meters_meter_code_fkey``) for a meter that does not exist, and
        ``AlreadyExists`` (``plans_code_version_key``) when another caller
        created a version of the same code at the same moment (retry).
        Nothing is written when it raises.
        """
        specs = meters or []
        codes = [m.meter_code for m in specs]
        if len(set(codes)) != len(codes):
            duplicate = next(c for c in codes if codes.count(c) > 1)
            raise InvalidInput(f"meter {duplicate} is given more than once", field="meters")
        async with self._atomic() as repo:
            plan = await repo._create(
                code=code,
                name=name,
                billing_interval=billing_interval,
                interval_count=interval_count,
                base_price_minor=base_price_minor,
                currency=currency,
                trial_days=trial_days,
                is_public=is_public,
            )
            assert plan is not None  # INSERT … SELECT with an aggregate yields one row
            rows: list[PlanMeter] = []
            if specs:
                rows = await repo._add_meters(
                    plan_id=plan.id,
                    meter_codes=codes,
                    included_quantities=[m.included_quantity for m in specs],
                    limit_kinds=[m.limit_kind for m in specs],
                    overage_unit_prices_minor=[m.overage_unit_price_minor for m in specs],
                )
        return PlanWithMeters(**plan.model_dump(), meters=sorted(rows, key=lambda m: m.meter_code))

    @validated
    async def publish(self, *, plan_id: Id) -> Plan:
        """Publish a draft (draft → published, ``published_at`` set) and return it.

        From then on the version is immutable. Raises ``InvalidTransition``
        (nothing changed) when the plan is not a draft, ``NotFound`` when there
        is no such plan.
        """
        async with self._changing() as tx:
            plan = await tx._publish(id=plan_id)
            if plan is None:
                raise await tx._refused(plan_id, expected=("draft",), action="published")
            await tx._invalidate(None, plan_tag(plan.code))
        return plan

    @validated
    async def archive(self, *, plan_id: Id) -> Plan:
        """Archive a published version (published → archived): no new subscriptions.

        Existing subscriptions keep it. Raises ``InvalidTransition`` (nothing
        changed) when the plan is not published, ``NotFound`` when there is no
        such plan.
        """
        async with self._changing() as tx:
            plan = await tx._archive(id=plan_id)
            if plan is None:
                raise await tx._refused(plan_id, expected=("published",), action="archived")
            await tx._invalidate(None, plan_tag(plan.code))
            await tx._invalidate_subscribers(plan_id)
        return plan

    @validated
    async def update_draft(
        self,
        *,
        plan_id: Id,
        name: Name | None = None,
        billing_interval: BillingInterval | None = None,
        interval_count: IntervalCount | None = None,
        base_price_minor: MinorUnits | None = None,
        currency: Currency | None = None,
        trial_days: TrialDays | None = None,
        is_public: bool | None = None,
    ) -> Plan:
        """Change the given fields of a draft (``None`` leaves a field as it is).

        Raises ``InvalidInput`` (field ``fields``) when no field is given,
        ``InvalidTransition`` (nothing changed) when the plan is published or
        archived — the statement only touches drafts, so the trigger
        ``plans_published_immutable`` (a ``CheckViolation``) stays a last line
        of defence that this method never reaches — and ``NotFound`` when
        there is no such plan.
        """
        params = update_params(
            {
                "name": name,
                "billing_interval": billing_interval,
                "interval_count": interval_count,
                "base_price_minor": base_price_minor,
                "currency": currency,
                "trial_days": trial_days,
                "is_public": is_public,
            },
            _UPDATABLE,
        )
        plan = await self._update(id=plan_id, **params)
        if plan is None:
            raise await self._refused(plan_id, expected=("draft",), action="edited")
        return plan

    @validated
    async def get(self, *, plan_id: Id) -> PlanWithMeters | None:
        """The plan with this id (any status) and its meters, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get(id=plan_id)

    @validated
    async def require(self, *, plan_id: Id) -> PlanWithMeters:
        """Like ``get``, but raises ``NotFound`` instead of returning ``None``."""
        plan = await self._get(id=plan_id)
        if plan is None:
            raise NotFound(f"plan {plan_id} not found")
        return plan

    @validated
    async def current(self, *, code: PlanCode) -> PlanWithMeters | None:
        """The highest published version of ``code`` with its meters, or ``None``.

        Archived versions and drafts are never current.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._current(code=code)

    @validated
    async def list_public(
        self, *, cursor: str | None = None, limit: Limit = 50
    ) -> Page[PlanWithMeters]:
        """A page of public, published plan versions with their meters, in id order.

        Every published version is listed (an older one stays until it is
        archived); pass ``next_cursor`` back for the next page. Raises
        ``InvalidInput`` (field ``cursor``) for a cursor this listing did not make.
        """
        request = PageRequest.of(cursor, limit)
        return request.page(await self._list_public(**request.params))

    async def _refused(
        self, plan_id: int, *, expected: tuple[str, ...], action: str
    ) -> InvalidTransition | NotFound:
        """The error for a guarded change that matched no row: why the plan was not changed."""
        plan = await self._row(id=plan_id)
        if plan is None:
            return NotFound(f"plan {plan_id} not found")
        return InvalidTransition(
            f"plan {plan.code} version {plan.version} (id {plan_id}) is {plan.status}; "
            f"only a {' or '.join(expected)} plan can be {action}",
            entity="plan",
            entity_id=plan_id,
            expected=expected,
            actual=plan.status,
        )

    async def _invalidate_subscribers(self, plan_id: int) -> None:
        """After commit, drop the cached views that embed this plan (its status changed)."""
        if self._session.cache is None or not self._session.cache.enabled:
            return
        pairs: set[tuple[int, str]] = set()
        for row in await self._subscribers(plan_id=plan_id):
            pairs.add((row.account_id, account_tag(row.account_id)))
            if row.secret_hash is not None:
                pairs.add((row.account_id, key_tag(row.secret_hash)))
        await self._invalidate_each(sorted(pairs))
