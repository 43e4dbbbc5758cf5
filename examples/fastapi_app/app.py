"""A small asyncio service on datalayer's async API: API-key auth, metered usage, a report.

Run it (after ``make migrate``; ``DATABASE_URL``, ``REDIS_URL`` and
``DATALAYER_CACHE_KEYS`` as for the library)::

    pip install -e ".[examples]"
    uvicorn examples.fastapi_app.app:app

* ``Authorization: Bearer <API key secret>`` on every ``/v1`` call, checked
  through ``db.cached.auth`` (one Redis read on a hit, never a refused key
  cached for long; Redis down falls back to PostgreSQL);
* ``POST /v1/usage`` records one event exactly once per idempotency key and
  consumes the meter's quota in the same transaction: a hard limit reached is
  ``429`` with the limit and what remains, and the event is not stored; a
  re-sent key is ``200`` with ``duplicate: true`` and consumes nothing;
* ``GET /v1/usage`` reports the account's usage per meter over a period
  (default: the current calendar month, UTC);
* ``GET /healthz`` is ``db.health()``.

The pool opens with the application and closes with it (FastAPI's lifespan).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from datalayer import (
    AsyncDatabase,
    AuthBundle,
    InvalidInput,
    MeterTotal,
    NotFound,
    QuotaExceeded,
    Settings,
)

__all__ = ["create_app"]


class UsageIn(BaseModel):
    """One usage event as a client sends it."""

    meter_code: str
    quantity: Decimal = Field(gt=0)
    idempotency_key: str
    occurred_at: datetime | None = None


class UsageOut(BaseModel):
    event_id: int | None
    duplicate: bool


class UsageReport(BaseModel):
    account_id: int
    period_start: datetime
    period_end: datetime
    meters: list[MeterTotal]


def database(request: Request) -> AsyncDatabase:
    """The application's database, opened by its lifespan."""
    db: AsyncDatabase = request.app.state.db
    return db


Db = Annotated[AsyncDatabase, Depends(database)]


async def authenticated(db: Db, authorization: Annotated[str, Header()] = "") -> AuthBundle:
    """The auth bundle of the request's API key (``db.cached.auth``), else 401."""
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret:
        raise HTTPException(401, "an API key is needed: Authorization: Bearer <secret>")
    bundle = await db.cached.auth(secret=secret)
    if bundle is None:
        raise HTTPException(401, "unknown, revoked or expired API key")
    return bundle


Auth = Annotated[AuthBundle, Depends(authenticated)]


def require_scope(bundle: AuthBundle, scope: str) -> None:
    if scope not in bundle.context.scopes:
        raise HTTPException(403, f"this key lacks the scope {scope!r}")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service on an ``AsyncDatabase`` made from ``settings`` (default: the environment)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncDatabase(settings or Settings.from_env()) as db:
            app.state.db = db
            yield

    app = FastAPI(title="datalayer example", lifespan=lifespan)

    @app.exception_handler(QuotaExceeded)
    async def quota_exceeded(request: Request, exc: QuotaExceeded) -> JSONResponse:
        return JSONResponse(
            status_code=429,
            content={
                "detail": "quota exceeded",
                "meter_code": exc.meter_code,
                "limit": str(exc.limit.normalize()),
                "used": str(exc.used.normalize()),
                "remaining": str(exc.remaining.normalize()),
            },
        )

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc), "field": exc.field})

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.post("/v1/usage", response_model=UsageOut, status_code=201)
    async def record_usage(event: UsageIn, db: Db, auth: Auth) -> UsageOut | JSONResponse:
        require_scope(auth, "usage:write")
        account_id = auth.context.account_id
        async with db.unit_of_work() as uow:  # the event and its quota: both or neither
            result = await uow.usage.record(
                account_id=account_id,
                meter_code=event.meter_code,
                quantity=event.quantity,
                occurred_at=event.occurred_at or datetime.now(UTC),
                idempotency_key=event.idempotency_key,
                api_key_id=auth.context.key_id,
            )
            if not result.duplicate:
                await uow.quotas.consume(
                    account_id=account_id, meter_code=event.meter_code, quantity=event.quantity
                )
        out = UsageOut(
            event_id=result.event.id if result.event is not None else None,
            duplicate=result.duplicate,
        )
        if result.duplicate:
            return JSONResponse(status_code=200, content=out.model_dump())
        return out

    @app.get("/v1/usage", response_model=UsageReport)
    async def usage_report(
        db: Db, auth: Auth, start: datetime | None = None, end: datetime | None = None
    ) -> UsageReport:
        require_scope(auth, "usage:read")
        now = datetime.now(UTC)
        start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = end or (
            start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        )
        meters = await db.usage_reports.period_totals(
            account_id=auth.context.account_id, period_start=start, period_end=end
        )
        return UsageReport(
            account_id=auth.context.account_id, period_start=start, period_end=end, meters=meters
        )

    @app.get("/healthz")
    async def health(db: Db) -> JSONResponse:
        report = await db.health()
        return JSONResponse(
            status_code=200 if report.status != "failing" else 503,
            content=report.model_dump(mode="json"),
        )

    return app


app = create_app()
