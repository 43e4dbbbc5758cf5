"""Seed: meters, plans, accounts of Zipf-distributed sizes, users, subscription chains."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import psycopg.sql

from ..partitions import add_months, month_start
from ._load import DAYS, Progress, SeedResult, copy_rows, zipf_weights

METERS = [
    # code, name, unit, aggregation
    ("api_calls", "API calls", "call", "sum"),
    ("file_uploads", "File uploads", "file", "count"),
    ("processing_seconds", "Processing time", "second", "sum"),
    ("storage_bytes", "Storage", "byte", "max"),
]
# code, version, name, status, interval, base price (cents), trial days, public,
# {meter: (included, limit kind, overage price per unit in cents)}
PLANS: list[tuple[str, int, str, str, str, int, int, bool, dict[str, tuple[int, str, str]]]] = [
    (
        "free",
        1,
        "Free",
        "published",
        "month",
        0,
        0,
        True,
        {
            "api_calls": (10_000, "hard", "0"),
            "file_uploads": (100, "hard", "0"),
            "processing_seconds": (600, "hard", "0"),
            "storage_bytes": (10**9, "hard", "0"),
        },
    ),
    (
        "pro",
        1,
        "Pro",
        "archived",
        "month",
        2_900,
        14,
        True,
        {
            "api_calls": (200_000, "soft", "0.02"),
            "file_uploads": (5_000, "soft", "1"),
            "processing_seconds": (36_000, "soft", "0.5"),
            "storage_bytes": (10**11, "soft", "0"),
        },
    ),
    (
        "pro",
        2,
        "Pro",
        "published",
        "month",
        3_900,
        14,
        True,
        {
            "api_calls": (250_000, "soft", "0.02"),
            "file_uploads": (10_000, "soft", "1"),
            "processing_seconds": (72_000, "soft", "0.4"),
            "storage_bytes": (10**11, "soft", "0"),
        },
    ),
    (
        "enterprise",
        1,
        "Enterprise",
        "published",
        "month",
        49_900,
        30,
        False,
        {
            "api_calls": (5_000_000, "none", "0.01"),
            "file_uploads": (500_000, "none", "0.5"),
            "processing_seconds": (3_600_000, "none", "0.2"),
            "storage_bytes": (10**13, "none", "0"),
        },
    ),
]


def seed_catalog(conn: psycopg.Connection[Any], anchor: datetime) -> dict[str, int]:
    created = anchor - timedelta(days=400)
    for code, name, unit, aggregation in METERS:
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation, created_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (code, name, unit, aggregation, created),
        )
    plan_ids: dict[str, int] = {}
    for code, version, name, status, interval, price, trial, public, meters in PLANS:
        row = conn.execute(
            "INSERT INTO plans (code, version, name, billing_interval, base_price_minor, currency,"
            " trial_days, is_public, created_at) VALUES (%s, %s, %s, %s, %s, 'USD', %s, %s, %s)"
            " RETURNING id",
            (code, version, name, interval, price, trial, public, created),
        ).fetchone()
        assert row is not None
        plan_id = int(row[0])
        for meter, (included, kind, overage) in meters.items():
            conn.execute(
                "INSERT INTO plan_meters (plan_id, meter_code, included_quantity, limit_kind,"
                " overage_unit_price_minor) VALUES (%s, %s, %s, %s, %s)",
                (plan_id, meter, included, kind, Decimal(overage)),
            )
        with conn.transaction():  # the seals are checked at commit
            conn.execute(
                "UPDATE plans SET status = 'published', published_at = %s WHERE id = %s",
                (created + timedelta(days=version), plan_id),
            )
            seal_plan(conn, plan_id)
            if status == "archived":
                conn.execute("UPDATE plans SET status = 'archived' WHERE id = %s", (plan_id,))
                conn.execute("INSERT INTO plan_archivals (plan_id) VALUES (%s)", (plan_id,))
        plan_ids[f"{code}:{version}"] = plan_id
    return plan_ids


def seal_plan(conn: psycopg.Connection[Any], plan_id: int) -> None:
    """Seal a version published with plain SQL, as ``publish_plan`` does (migration 0021)."""
    conn.execute(
        "INSERT INTO plan_seals (plan_id, code, version, name, billing_interval, interval_count,"
        " base_price_minor, currency, trial_days, is_public, published_at, created_at)"
        " SELECT id, code, version, name, billing_interval, interval_count, base_price_minor,"
        " currency, trial_days, is_public, published_at, created_at FROM plans WHERE id = %s",
        (plan_id,),
    )
    conn.execute(
        "INSERT INTO plan_meter_seals (plan_id, meter_code, included_quantity, limit_kind,"
        " overage_unit_price_minor, published_at)"
        " SELECT plan_id, meter_code, included_quantity, limit_kind, overage_unit_price_minor,"
        " seal_ref FROM plan_meters WHERE plan_id = %s",
        (plan_id,),
    )


def seed_accounts(
    conn: psycopg.Connection[Any], rng: random.Random, n: int, anchor: datetime, result: SeedResult
) -> list[tuple[int, float, list[int], datetime]]:
    """Returns (account_id, weight, user ids, created_at) per account."""
    weights = zipf_weights(n)
    order = list(range(n))
    rng.shuffle(order)  # heavy accounts are not simply the oldest
    accounts = []
    for i in range(n):
        created = anchor - timedelta(
            days=DAYS + 30 + rng.randrange(600), seconds=rng.randrange(86400)
        )
        status = "active" if rng.random() > 0.03 else rng.choice(["suspended", "closed"])
        accounts.append((f"Account {i + 1:05d}", status, created, created))
    copy_rows(
        conn,
        "COPY accounts (name, status, created_at, updated_at) FROM STDIN (FORMAT BINARY)",
        ["text", "text", "timestamptz", "timestamptz"],
        accounts,
        progress=Progress(None),
        label="accounts",
        total=n,
    )
    users = []
    sizes: list[tuple[int, float, list[int], datetime]] = []
    next_user = 1
    for index in range(n):
        account_id = index + 1
        weight = weights[order[index]]
        count = 1 + min(200, int(weight * 60 * rng.uniform(0.5, 1.5)))
        ids = []
        for j in range(count):
            created = accounts[index][2] + timedelta(days=j, seconds=rng.randrange(86400))
            role = "owner" if j == 0 else ("admin" if rng.random() < 0.1 else "member")
            deleted = created + timedelta(days=5) if j > 0 and rng.random() < 0.03 else None
            users.append(
                (
                    account_id,
                    f"user{j + 1}@account{account_id}.example.com",
                    f"User {j + 1}",
                    role,
                    created,
                    created,
                    deleted,
                )
            )
            ids.append(next_user)
            next_user += 1
        sizes.append((account_id, weight, ids, accounts[index][2]))
    result.counts["accounts"] = n
    # Each live user's address is reserved in the lookup table first: users'
    # foreign key users_live_email_fkey points at it (seed emails are lower case).
    copy_rows(
        conn,
        "COPY user_emails (email, account_id) FROM STDIN (FORMAT BINARY)",
        ["text", "int8"],
        [(email, account_id) for account_id, email, *_, deleted in users if deleted is None],
        progress=Progress(None),
        label="user emails",
        total=len(users),
    )
    result.counts["users"] = copy_rows(
        conn,
        "COPY users (account_id, email, display_name, role, created_at, updated_at, deleted_at)"
        " FROM STDIN (FORMAT BINARY)",
        ["int8", "text", "text", "text", "timestamptz", "timestamptz", "timestamptz"],
        users,
        progress=Progress(None),
        label="users",
        total=len(users),
    )
    return sizes


@dataclass(frozen=True)
class Sub:
    account_id: int
    id: int
    plan_key: str
    status: str
    start: datetime
    end: datetime


def seed_subscriptions(
    conn: psycopg.Connection[Any],
    rng: random.Random,
    sizes: list[tuple[int, float, list[int], datetime]],
    plan_ids: dict[str, int],
    anchor: datetime,
    result: SeedResult,
) -> list[Sub]:
    """One chain per account: earlier plans 'replaced', the last one in any status."""
    rows: list[tuple[Any, ...]] = []
    subs: list[Sub] = []
    next_id = 1
    heavy = sorted(w for _, w, _, _ in sizes)[-max(1, len(sizes) // 50)]
    for account_id, weight, _, _ in sizes:
        if weight >= heavy:
            chain = ["pro:1", "pro:2", "enterprise:1"]
        elif rng.random() < 0.25:
            chain = ["free:1", "pro:2"]
        else:
            chain = [rng.choice(["free:1", "free:1", "pro:2"])]
        final_status = rng.choices(
            ["active", "trialing", "past_due", "canceled", "incomplete"], [70, 8, 6, 12, 4]
        )[0]
        period_start = add_months(month_start(anchor), -len(chain) - 1)
        previous = None
        root = next_id  # the chain's first subscription: its chain_id
        for position, plan_key in enumerate(chain):
            last = position == len(chain) - 1
            months = 1 if last else 1 + (position == 0)
            end = add_months(period_start, months)
            status = final_status if last else "replaced"
            if last and status in ("active", "past_due", "trialing", "incomplete"):
                # Live subscriptions are in their current period.
                period_start = month_start(anchor - timedelta(microseconds=1))
                end = add_months(period_start, 1)
            trial_end = period_start + timedelta(days=14) if status == "trialing" else None
            canceled = end - timedelta(days=3) if status == "canceled" else None
            ended = end if status in ("canceled", "replaced") else None
            rows.append(
                (
                    account_id,
                    root,
                    plan_ids[plan_key],
                    status,
                    period_start,
                    end,
                    period_start,
                    trial_end,
                    status == "active" and rng.random() < 0.05,
                    previous,
                    canceled,
                    ended,
                    period_start,
                    ended or period_start,
                )
            )
            subs.append(Sub(account_id, next_id, plan_key, status, period_start, end))
            previous = next_id
            next_id += 1
            period_start = end
    result.counts["subscriptions"] = copy_rows(
        conn,
        "COPY subscriptions (account_id, chain_id, plan_id, status, current_period_start,"
        " current_period_end,"
        " billing_anchor, trial_end, cancel_at_period_end, replaces_id, canceled_at, ended_at,"
        " created_at, updated_at) FROM STDIN (FORMAT BINARY)",
        [
            "int8",
            "int8",
            "int8",
            "text",
            "timestamptz",
            "timestamptz",
            "timestamptz",
            "timestamptz",
            "bool",
            "int8",
            "timestamptz",
            "timestamptz",
            "timestamptz",
            "timestamptz",
        ],
        rows,
        progress=Progress(None),
        label="subscriptions",
        total=len(rows),
    )
    return subs
