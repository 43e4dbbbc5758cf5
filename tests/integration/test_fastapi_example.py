"""examples/fastapi_app: a real asyncio client of the async API, through httpx.

The app runs in-process (httpx's ASGI transport) with its lifespan, on a fresh
database and a real Redis: API-key auth through the cached auth bundle, usage
recorded exactly once with 429 past a hard quota, and the usage report.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
from conftest import CACHE_KEYS, REDIS_URL

from datalayer import Database, PlanMeterSpec, Settings
from examples.fastapi_app.app import create_app


@pytest.fixture
def settings(fresh_url: str, request: pytest.FixtureRequest) -> Settings:
    redis_db = 1 + zlib.crc32(request.node.nodeid.encode()) % 15
    return Settings(
        database_url=fresh_url,
        redis_url=f"{REDIS_URL}/{redis_db}",
        cache_keys=CACHE_KEYS,
        pool_min_size=1,
        pool_max_size=4,
    )


@pytest.fixture
def secrets(settings: Settings) -> dict[str, str]:
    """An account on a plan of 3 API calls (hard), and its keys: read-write and read-only."""
    with Database(settings.model_copy(update={"redis_url": None})) as db:
        with db.connection() as conn:
            conn.execute(
                "INSERT INTO meters (code, name, unit, aggregation)"
                " VALUES ('api_calls', 'API calls', 'call', 'sum')"
            )
        plan = db.plans.create_draft(
            code="starter", name="Starter", billing_interval="month", base_price_minor=0,
            currency="USD",
            meters=[PlanMeterSpec(meter_code="api_calls", included_quantity=Decimal(3),
                                  limit_kind="hard", overage_unit_price_minor=Decimal(0))],
        )  # fmt: skip
        db.plans.publish(plan_id=plan.id)
        account = db.accounts.create(name="Acme")
        db.subscriptions.start(account_id=account.id, plan_id=plan.id)
        keys = {
            name: db.api_keys.issue(
                account_id=account.id, name=name, environment="live", scopes=scopes
            )
            for name, scopes in (("rw", ["usage:read", "usage:write"]), ("ro", ["usage:read"]))
        }
    return {name: issued.secret.get_secret_value() for name, issued in keys.items()}


def serve(settings: Settings, calls: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """``calls(client)`` against the app, its lifespan (the pool) open around them."""
    app = create_app(settings)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return await calls(client)

    return asyncio.run(main())


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_usage_is_recorded_once_per_key_and_refused_with_429_past_the_hard_quota(
    settings: Settings, secrets: dict[str, str]
) -> None:
    async def calls(client: httpx.AsyncClient) -> None:
        rw = bearer(secrets["rw"])
        sent = [
            await client.post(
                "/v1/usage",
                json={"meter_code": "api_calls", "quantity": "1", "idempotency_key": f"k{i}"},
                headers=rw,
            )
            for i in range(3)
        ]
        assert [r.status_code for r in sent] == [201, 201, 201]
        assert all(r.json()["duplicate"] is False for r in sent)

        again = await client.post(
            "/v1/usage",
            json={"meter_code": "api_calls", "quantity": "1", "idempotency_key": "k0"},
            headers=rw,
        )
        assert again.status_code == 200
        assert again.json() == {"event_id": sent[0].json()["event_id"], "duplicate": True}

        over = await client.post(
            "/v1/usage",
            json={"meter_code": "api_calls", "quantity": "1", "idempotency_key": "k3"},
            headers=rw,
        )
        assert over.status_code == 429
        assert (over.json()["limit"], over.json()["remaining"]) == ("3", "0")

        report = await client.get("/v1/usage", headers=bearer(secrets["ro"]))
        assert report.status_code == 200
        (meter,) = report.json()["meters"]
        assert (meter["meter_code"], meter["event_count"]) == ("api_calls", 3)  # k3 not stored

    serve(settings, calls)


def test_requests_without_a_valid_key_or_scope_are_refused_and_bad_input_is_422(
    settings: Settings, secrets: dict[str, str]
) -> None:
    async def calls(client: httpx.AsyncClient) -> None:
        event = {"meter_code": "api_calls", "quantity": "1", "idempotency_key": "x"}
        assert (await client.post("/v1/usage", json=event)).status_code == 401
        unknown = bearer("dl_live_" + "A" * 40)
        for _ in range(2):  # the second is answered from the cached "no such key"
            assert (await client.get("/v1/usage", headers=unknown)).status_code == 401
        read_only = await client.post("/v1/usage", json=event, headers=bearer(secrets["ro"]))
        assert read_only.status_code == 403
        rw = bearer(secrets["rw"])
        bad_meter = await client.post(
            "/v1/usage", json={**event, "meter_code": "Not A Meter!"}, headers=rw
        )
        assert bad_meter.status_code == 422
        assert bad_meter.json()["field"] == "meter_code"
        negative = await client.post("/v1/usage", json={**event, "quantity": "-1"}, headers=rw)
        assert negative.status_code == 422
        health = await client.get("/healthz")
        assert health.status_code in (200, 503)
        assert {c["name"] for c in health.json()["checks"]} >= {"pool", "cache"}

    serve(settings, calls)
