"""Plans repository: versioned drafts with meters, publish/archive, immutability, public listing."""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from overlap import wait_until_blocked

from datalayer import (
    AlreadyExists,
    Database,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ReferenceViolation,
    UnitOfWork,
)
from datalayer.errors import CheckViolation, map_error
from datalayer.models.plans import Plan, PlanMeter, PlanMeterSpec, PlanWithMeters

pytestmark = pytest.mark.both_apis


def add_meters(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        "INSERT INTO meters (code, name, unit, aggregation) VALUES"
        " ('api_calls', 'API calls', 'call', 'sum'),"
        " ('storage_gb', 'Storage', 'GB', 'max')"
        " ON CONFLICT DO NOTHING"
    )


@pytest.fixture
def meters(conn: psycopg.Connection[Any]) -> None:
    add_meters(conn)


def draft(uow: UnitOfWork | Database, code: str = "basic", **overrides: Any) -> PlanWithMeters:
    fields: dict[str, Any] = {
        "code": code,
        "name": "Basic",
        "billing_interval": "month",
        "base_price_minor": 1000,
        "currency": "USD",
    }
    fields.update(overrides)
    return uow.plans.create_draft(**fields)


def plan_count(conn: psycopg.Connection[Any], code: str) -> int:
    row = conn.execute("SELECT count(*) FROM plans WHERE code = %s", (code,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_draft_is_created_with_its_meters_as_version_one(uow: UnitOfWork, meters: None) -> None:
    plan = draft(
        uow,
        trial_days=14,
        is_public=False,
        meters=[
            PlanMeterSpec(meter_code="storage_gb", included_quantity=Decimal(5), limit_kind="hard"),
            {
                "meter_code": "api_calls",
                "included_quantity": 10_000,
                "overage_unit_price_minor": "0.05",
            },
        ],
    )
    assert isinstance(plan, PlanWithMeters)
    assert (plan.code, plan.version, plan.status, plan.published_at) == ("basic", 1, "draft", None)
    assert (plan.billing_interval, plan.interval_count, plan.trial_days) == ("month", 1, 14)
    assert (plan.base_price_minor, plan.currency, plan.is_public) == (1000, "USD", False)
    assert plan.meters == [
        PlanMeter(
            plan_id=plan.id,
            meter_code="api_calls",
            included_quantity=Decimal(10_000),
            limit_kind="soft",
            overage_unit_price_minor=Decimal("0.05"),
        ),
        PlanMeter(
            plan_id=plan.id,
            meter_code="storage_gb",
            included_quantity=Decimal(5),
            limit_kind="hard",
            overage_unit_price_minor=Decimal(0),
        ),
    ]
    assert uow.plans.get(plan_id=plan.id) == plan


def test_each_new_draft_of_a_code_is_the_next_version(uow: UnitOfWork) -> None:
    first = draft(uow)
    uow.plans.publish(plan_id=first.id)
    second = draft(uow, name="Basic 2024")
    other = draft(uow, code="pro")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert second.meters == []


def test_meter_quantities_and_prices_keep_every_digit(uow: UnitOfWork, meters: None) -> None:
    plan = draft(
        uow,
        meters=[
            PlanMeterSpec(
                meter_code="api_calls",
                included_quantity=Decimal("99999999999999.999999"),
                overage_unit_price_minor=Decimal("0.000001"),
            )
        ],
    )
    stored = uow.plans.require(plan_id=plan.id).meters[0]
    assert stored.included_quantity == Decimal("99999999999999.999999")
    assert stored.overage_unit_price_minor == Decimal("0.000001")


def test_an_unknown_meter_raises_reference_violation_and_leaves_no_plan(
    conn: psycopg.Connection[Any], uow: UnitOfWork, meters: None
) -> None:
    with pytest.raises(ReferenceViolation) as info, conn.transaction():
        draft(uow, meters=[{"meter_code": "api_calls"}, {"meter_code": "no_such_meter"}])
    assert info.value.constraint == "plan_meters_meter_code_fkey"
    assert plan_count(conn, "basic") == 0


def test_an_unknown_meter_through_the_pool_rolls_the_whole_draft_back(db: Database) -> None:
    with db.connection() as conn:
        add_meters(conn)
    with pytest.raises(ReferenceViolation):
        db.plans.create_draft(
            code="basic",
            name="Basic",
            billing_interval="month",
            base_price_minor=1000,
            currency="USD",
            meters=[PlanMeterSpec(meter_code="nope")],
        )
    with db.connection() as conn:
        assert plan_count(conn, "basic") == 0
    assert db.plans.current(code="basic") is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"code": "Basic Plan"}, "code"),
        ({"code": "basic\x00"}, "code"),
        ({"name": ""}, "name"),
        ({"name": "x\x00y"}, "name"),
        ({"billing_interval": "fortnight"}, "billing_interval"),
        ({"interval_count": 0}, "interval_count"),
        ({"base_price_minor": -1}, "base_price_minor"),
        ({"base_price_minor": 10.5}, "base_price_minor"),
        ({"currency": "usd"}, "currency"),
        ({"trial_days": 366}, "trial_days"),
        ({"is_public": "yes"}, "is_public"),
        (
            {"meters": [{"meter_code": "api_calls", "included_quantity": 0.1}]},
            "meters.included_quantity",
        ),
        (
            {"meters": [{"meter_code": "api_calls", "included_quantity": -1}]},
            "meters.included_quantity",
        ),
        ({"meters": [{"meter_code": "api_calls", "limit_kind": "strict"}]}, "meters.limit_kind"),
        (
            {"meters": [{"meter_code": "api_calls", "overage_unit_price_minor": "0.0000001"}]},
            "meters.overage_unit_price_minor",
        ),
        ({"meters": [{"meter_code": "API"}]}, "meters.meter_code"),
        ({"meters": [{"meter_code": "api_calls"}, {"meter_code": "api_calls"}]}, "meters"),
    ],
)
def test_bad_draft_arguments_raise_invalid_input_naming_the_field_before_any_sql(
    conn: psycopg.Connection[Any], uow: UnitOfWork, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        draft(uow, **overrides)
    assert info.value.field == field
    # No statement ran: a failed one would have aborted the test transaction.
    assert plan_count(conn, "basic") == 0


def test_publishing_a_draft_stamps_it_and_a_second_publish_changes_nothing(
    uow: UnitOfWork,
) -> None:
    plan = draft(uow)
    published = uow.plans.publish(plan_id=plan.id)
    assert isinstance(published, Plan)
    assert published.status == "published"
    assert published.published_at is not None
    with pytest.raises(InvalidTransition) as info:
        uow.plans.publish(plan_id=plan.id)
    assert (info.value.entity, info.value.entity_id) == ("plan", plan.id)
    assert (info.value.expected, info.value.actual) == (("draft",), "published")
    assert uow.plans.get(plan_id=plan.id) == PlanWithMeters(**published.model_dump(), meters=[])


def test_archiving_needs_a_published_plan_and_keeps_its_publication_date(
    uow: UnitOfWork,
) -> None:
    plan = draft(uow)
    with pytest.raises(InvalidTransition) as info:
        uow.plans.archive(plan_id=plan.id)
    assert (info.value.expected, info.value.actual) == (("published",), "draft")
    assert uow.plans.require(plan_id=plan.id).status == "draft"
    published = uow.plans.publish(plan_id=plan.id)
    archived = uow.plans.archive(plan_id=plan.id)
    assert archived.status == "archived"
    assert archived.published_at == published.published_at
    with pytest.raises(InvalidTransition) as again:
        uow.plans.archive(plan_id=plan.id)
    assert again.value.actual == "archived"


def test_state_changes_of_a_missing_plan_raise_not_found(uow: UnitOfWork) -> None:
    with pytest.raises(NotFound):
        uow.plans.publish(plan_id=2**62)
    with pytest.raises(NotFound):
        uow.plans.archive(plan_id=2**62)
    with pytest.raises(NotFound):
        uow.plans.update_draft(plan_id=2**62, name="x")
    with pytest.raises(NotFound):
        uow.plans.require(plan_id=2**62)
    assert uow.plans.get(plan_id=2**62) is None


def test_a_draft_update_changes_only_the_fields_given(uow: UnitOfWork, meters: None) -> None:
    plan = draft(uow, trial_days=7, meters=[PlanMeterSpec(meter_code="api_calls")])
    updated = uow.plans.update_draft(plan_id=plan.id, base_price_minor=0, is_public=False)
    assert (updated.base_price_minor, updated.is_public) == (0, False)
    unchanged = {"base_price_minor", "is_public"}
    assert updated.model_dump(exclude=unchanged) == Plan(**plan.model_dump()).model_dump(
        exclude=unchanged
    )
    renamed = uow.plans.update_draft(
        plan_id=plan.id, name="Starter", billing_interval="year", interval_count=2, trial_days=0
    )
    assert (renamed.name, renamed.billing_interval, renamed.interval_count) == (
        "Starter",
        "year",
        2,
    )
    assert (renamed.trial_days, renamed.currency, renamed.is_public) == (0, "USD", False)
    assert uow.plans.require(plan_id=plan.id).meters == plan.meters


def test_an_update_with_no_fields_or_a_bad_value_raises_invalid_input(uow: UnitOfWork) -> None:
    plan = draft(uow)
    with pytest.raises(InvalidInput) as nothing:
        uow.plans.update_draft(plan_id=plan.id)
    assert nothing.value.field == "fields"
    with pytest.raises(InvalidInput) as bad:
        uow.plans.update_draft(plan_id=plan.id, currency="EURO")
    assert bad.value.field == "currency"
    assert uow.plans.require(plan_id=plan.id) == plan


@pytest.mark.parametrize("archive", [False, True])
def test_a_published_or_archived_version_cannot_be_edited(uow: UnitOfWork, archive: bool) -> None:
    plan = draft(uow)
    uow.plans.publish(plan_id=plan.id)
    if archive:
        uow.plans.archive(plan_id=plan.id)
    before = uow.plans.require(plan_id=plan.id)
    with pytest.raises(InvalidTransition) as info:
        uow.plans.update_draft(plan_id=plan.id, base_price_minor=1)
    assert info.value.expected == ("draft",)
    assert info.value.actual == before.status
    assert uow.plans.require(plan_id=plan.id) == before


def test_the_database_itself_refuses_an_edit_of_a_published_version(
    conn: psycopg.Connection[Any], uow: UnitOfWork
) -> None:
    # The repository never gets this far; the version's seal is the last line of defence.
    plan = uow.plans.publish(plan_id=draft(uow).id)
    # ForeignKeyViolation (23503) up to PostgreSQL 17, RestrictViolation (23001) from 18.
    with pytest.raises(psycopg.IntegrityError) as info, conn.transaction():
        conn.execute("UPDATE plans SET base_price_minor = 1 WHERE id = %s", (plan.id,))
    error = map_error(info.value)
    assert type(error) is CheckViolation
    assert error.constraint == "plans_published_immutable"


def test_the_current_version_is_the_highest_published_one(uow: UnitOfWork) -> None:
    assert uow.plans.current(code="basic") is None
    v1 = draft(uow)
    assert uow.plans.current(code="basic") is None
    uow.plans.publish(plan_id=v1.id)
    v2 = draft(uow)
    uow.plans.publish(plan_id=v2.id)
    draft(uow)  # v3 stays a draft
    current = uow.plans.current(code="basic")
    assert current is not None
    assert (current.id, current.version) == (v2.id, 2)
    uow.plans.archive(plan_id=v2.id)
    fallback = uow.plans.current(code="basic")
    assert fallback is not None
    assert fallback.id == v1.id


def test_public_listing_pages_through_public_published_plans_with_their_meters(
    uow: UnitOfWork, meters: None
) -> None:
    spec = [PlanMeterSpec(meter_code="api_calls", included_quantity=Decimal(100))]
    listed = []
    for code in ("a", "b", "c", "d", "e"):
        listed.append(uow.plans.publish(plan_id=draft(uow, code=code, meters=spec).id).id)
    draft(uow, code="draft-only")
    uow.plans.publish(plan_id=draft(uow, code="private", is_public=False).id)
    archived = uow.plans.publish(plan_id=draft(uow, code="old").id)
    uow.plans.archive(plan_id=archived.id)

    seen: list[PlanWithMeters] = []
    cursor = None
    while True:
        page = uow.plans.list_public(cursor=cursor, limit=2)
        assert len(page.items) <= 2
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [p.id for p in seen] == listed
    assert all(p.status == "published" and p.is_public for p in seen)
    assert [m.included_quantity for p in seen for m in p.meters] == [Decimal(100)] * 5


def test_a_cursor_that_is_not_from_the_listing_raises_invalid_input(uow: UnitOfWork) -> None:
    with pytest.raises(InvalidInput) as info:
        uow.plans.list_public(cursor="not-a-cursor")
    assert info.value.field == "cursor"
    with pytest.raises(InvalidInput) as limit:
        uow.plans.list_public(limit=0)
    assert limit.value.field == "limit"


@pytest.mark.not_on_citus(
    "tests/overlap.py sees a statement wait in the coordinator's pg_locks; on Citus the "
    "row lock is taken and waited for on a worker"
)
def test_two_drafts_of_one_code_created_at_once_never_share_a_version(
    db: Database, fresh_url: str
) -> None:
    # The first draft's transaction inserts v1 and stays open; the second computes its
    # version from what it sees (no v1 yet), so its insert must wait for the first on the
    # unique key: that wait is seen in pg_locks before the first commits. Then it collides
    # instead of doubling v1.
    first_inserted = threading.Event()
    release_first = threading.Event()
    first_pid: list[int] = []
    second_pid: list[int] = []
    outcomes: dict[str, object] = {}

    def first() -> None:
        try:
            with db.unit_of_work() as uow:
                first_pid.append(uow.connection.info.backend_pid)
                outcomes["first"] = draft(uow).version
                first_inserted.set()
                assert release_first.wait(30)
        except BaseException as exc:  # reported below
            outcomes["first"] = exc
            first_inserted.set()

    def second() -> None:
        try:
            assert first_inserted.wait(30)
            with db.unit_of_work() as uow:
                second_pid.append(uow.connection.info.backend_pid)
                outcomes["second"] = draft(uow).version
        except AlreadyExists as exc:
            outcomes["second"] = exc.constraint
        except BaseException as exc:  # reported below
            outcomes["second"] = exc

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    try:
        assert first_inserted.wait(30)
        with psycopg.connect(fresh_url, autocommit=True) as watcher:
            waiting = wait_until_blocked(watcher, first_pid[0], 1, what="second drafts")
        assert waiting == second_pid
    finally:
        release_first.set()
        for thread in threads:
            thread.join(timeout=30)
    assert outcomes == {"first": 1, "second": "plans_code_version_key"}
    assert draft(db).version == 2
