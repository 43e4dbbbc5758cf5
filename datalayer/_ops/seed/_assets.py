"""Seed: files in every status, API keys, and invoices with payments and a balanced ledger."""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import psycopg.sql

from ._load import DAYS, Progress, SeedResult, copy_rows
from ._tenants import PLANS, Sub


def seed_files_and_keys(
    conn: psycopg.Connection[Any],
    rng: random.Random,
    sizes: list[tuple[int, float, list[int], datetime]],
    anchor: datetime,
    result: SeedResult,
) -> None:
    statuses = ["pending", "uploaded", "processing", "ready", "failed", "deleted"]
    types = ["image/png", "image/jpeg", "application/pdf", "text/csv", "video/mp4"]
    files = []
    keys = []
    for account_id, weight, user_ids, _ in sizes:
        for j in range(2 + int(weight * 40)):
            status = rng.choices(statuses, [5, 5, 3, 75, 7, 5])[0]
            created = anchor - timedelta(days=rng.randrange(DAYS), seconds=rng.randrange(86400))
            uploaded = created + timedelta(seconds=30) if status != "pending" else None
            size = rng.randrange(1_000, 50_000_000) if uploaded else None
            digest = hashlib.sha256(f"{account_id}/{j}".encode()).hexdigest() if uploaded else None
            files.append(
                (
                    account_id,
                    rng.choice(user_ids),
                    f"acct-{account_id}/file-{j}",
                    f"file-{j}.{rng.choice(['png', 'pdf', 'csv'])}",
                    rng.choice(types),
                    size,
                    digest,
                    status,
                    1 if status in ("ready", "processing") else (5 if status == "failed" else 0),
                    created + timedelta(minutes=10) if status == "processing" else None,
                    rng.randrange(100, 60_000) if status == "ready" else None,
                    "decoder crashed" if status == "failed" else None,
                    created,
                    created,
                    uploaded,
                    created + timedelta(minutes=2) if status in ("ready", "failed") else None,
                    created + timedelta(days=1) if status == "deleted" else None,
                )
            )
        for j in range(1 + int(weight * 5)):
            created = anchor - timedelta(days=rng.randrange(DAYS))
            env = "live" if j % 2 == 0 else "test"
            state = rng.choices(["active", "revoked", "expired"], [80, 12, 8])[0]
            secret = f"seed-secret-{account_id}-{j}".encode()
            keys.append(
                (
                    account_id,
                    f"Key {j + 1}",
                    f"dl_{env}_{hashlib.md5(secret).hexdigest()[:4]}",  # noqa: S324 - a display stub, not security
                    hashlib.sha256(secret).digest(),
                    env,
                    ["usage:write", "files:read"],
                    user_ids[0],
                    created + timedelta(days=30) if state == "expired" else None,
                    created + timedelta(days=2) if state == "revoked" else None,
                    created,
                )
            )
    result.counts["files"] = copy_rows(
        conn,
        "COPY files (account_id, uploaded_by, storage_key, file_name, content_type, size_bytes,"
        " checksum_sha256, status, attempts, lease_expires_at, processing_ms, last_error,"
        " created_at, updated_at, uploaded_at, processed_at, deleted_at)"
        " FROM STDIN (FORMAT BINARY)",
        [
            "int8",
            "int8",
            "text",
            "text",
            "text",
            "int8",
            "text",
            "text",
            "int8",
            "timestamptz",
            "int8",
            "text",
            "timestamptz",
            "timestamptz",
            "timestamptz",
            "timestamptz",
            "timestamptz",
        ],
        files,
        progress=Progress(None),
        label="files",
        total=len(files),
    )
    # Each key's hash is reserved in the lookup table first: api_keys' foreign key
    # api_keys_secret_hash_fkey points at it.
    copy_rows(
        conn,
        "COPY api_key_hashes (secret_hash, account_id) FROM STDIN (FORMAT BINARY)",
        ["bytea", "int8"],
        [(key[3], key[0]) for key in keys],
        progress=Progress(None),
        label="api key hashes",
        total=len(keys),
    )
    result.counts["api_keys"] = copy_rows(
        conn,
        "COPY api_keys (account_id, name, display_prefix, secret_hash, environment, scopes,"
        " created_by, expires_at, revoked_at, created_at) FROM STDIN (FORMAT BINARY)",
        [
            "int8",
            "text",
            "text",
            "bytea",
            "text",
            "text[]",
            "int8",
            "timestamptz",
            "timestamptz",
            "timestamptz",
        ],
        keys,
        progress=Progress(None),
        label="api keys",
        total=len(keys),
    )


def seed_billing(
    conn: psycopg.Connection[Any],
    rng: random.Random,
    subs: list[Sub],
    plan_ids: dict[str, int],
    anchor: datetime,
    result: SeedResult,
) -> None:
    """An invoice per ended subscription period, paid mostly, with a balanced ledger."""
    prices = {f"{code}:{version}": price for code, version, _, _, _, price, *_ in PLANS}
    counters: dict[int, int] = {}
    invoices: list[tuple[Any, ...]] = []
    lines: list[tuple[Any, ...]] = []
    payments: list[tuple[Any, ...]] = []
    ledger: list[tuple[int, str, str, int | None, datetime, list[tuple[str, int]]]] = []
    invoice_id = payment_id = 0
    for sub in subs:
        price = prices[sub.plan_key]
        if price == 0 or sub.status == "incomplete":
            continue
        finished = sub.end <= anchor
        status = "draft"
        if finished:
            status = rng.choices(["paid", "open", "void", "uncollectible"], [85, 8, 4, 3])[0]
        usage = (
            rng.randrange(0, 5_000) if sub.plan_key != "enterprise:1" else rng.randrange(0, 90_000)
        )
        total = price + usage
        invoice_id += 1
        number = None
        finalized = None
        if status != "draft":
            year = sub.end.year
            counters[year] = counters.get(year, 0) + 1
            number = f"{year}-{counters[year]:06d}"
            finalized = sub.end + timedelta(hours=1)
        paid_at = finalized + timedelta(days=2) if status == "paid" and finalized else None
        voided = finalized + timedelta(days=5) if status == "void" and finalized else None
        invoices.append(
            (
                sub.account_id,
                sub.id,
                number,
                status,
                "USD",
                sub.start,
                sub.end,
                total,
                0,
                total,
                total if status == "paid" else 0,
                finalized,
                finalized + timedelta(days=14) if finalized else None,
                paid_at,
                voided,
                sub.end,
                paid_at or voided or finalized or sub.end,
            )
        )
        lines.append(
            (
                sub.account_id,
                invoice_id,
                "subscription",
                f"{sub.plan_key} plan",
                None,
                Decimal(1),
                Decimal(price),
                price,
                sub.start,
                sub.end,
            )
        )
        if usage:
            lines.append(
                (
                    sub.account_id,
                    invoice_id,
                    "usage",
                    "API calls above the plan",
                    "api_calls",
                    Decimal(usage * 50),
                    Decimal("0.02"),
                    usage,
                    sub.start,
                    sub.end,
                )
            )
        if finalized is not None:
            ledger.append(
                (
                    sub.account_id,
                    "invoice_finalized",
                    f"invoice:{invoice_id}:finalized",
                    invoice_id,
                    finalized,
                    [("receivable", total), ("revenue", -total)],
                )
            )
        if status == "paid" and paid_at is not None:
            payment_id += 1
            payments.append(
                (
                    sub.account_id,
                    invoice_id,
                    "stripe",
                    f"pi_seed_{payment_id:08d}",
                    total,
                    "USD",
                    "succeeded",
                    paid_at,
                    paid_at,
                )
            )
            ledger.append(
                (
                    sub.account_id,
                    "payment",
                    f"payment:{payment_id}",
                    invoice_id,
                    paid_at,
                    [("cash", total), ("receivable", -total)],
                )
            )
        if status == "void" and voided is not None:
            ledger.append(
                (
                    sub.account_id,
                    "invoice_voided",
                    f"invoice:{invoice_id}:voided",
                    invoice_id,
                    voided,
                    [("revenue", total), ("receivable", -total)],
                )
            )
        if status == "uncollectible" and finalized is not None:
            ledger.append(
                (
                    sub.account_id,
                    "write_off",
                    f"invoice:{invoice_id}:written_off",
                    invoice_id,
                    finalized + timedelta(days=30),
                    [("bad_debt", total), ("receivable", -total)],
                )
            )
    none = Progress(None)
    with conn.transaction():
        for year, last in sorted(counters.items()):
            conn.execute(
                "INSERT INTO invoice_number_counters (year, last_number) VALUES (%s, %s)",
                (year, last),
            )
        result.counts["invoices"] = copy_rows(
            conn,
            "COPY invoices (account_id, subscription_id, number, status, currency, period_start,"
            " period_end, subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at,"
            " due_at, paid_at, voided_at, created_at, updated_at) FROM STDIN (FORMAT BINARY)",
            [
                "int8",
                "int8",
                "text",
                "text",
                "text",
                "timestamptz",
                "timestamptz",
                "int8",
                "int8",
                "int8",
                "int8",
                "timestamptz",
                "timestamptz",
                "timestamptz",
                "timestamptz",
                "timestamptz",
                "timestamptz",
            ],
            invoices,
            progress=none,
            label="invoices",
            total=len(invoices),
        )
        result.counts["invoice_lines"] = copy_rows(
            conn,
            "COPY invoice_lines (account_id, invoice_id, kind, description, meter_code,"
            " quantity, unit_amount_minor, amount_minor, period_start, period_end)"
            " FROM STDIN (FORMAT BINARY)",
            [
                "int8",
                "int8",
                "text",
                "text",
                "text",
                "numeric",
                "numeric",
                "int8",
                "timestamptz",
                "timestamptz",
            ],
            lines,
            progress=none,
            label="invoice lines",
            total=len(lines),
        )
        result.counts["payments"] = copy_rows(
            conn,
            "COPY payments (account_id, invoice_id, provider, provider_payment_id, amount_minor,"
            " currency, status, created_at, succeeded_at) FROM STDIN (FORMAT BINARY)",
            [
                "int8",
                "int8",
                "text",
                "text",
                "int8",
                "text",
                "text",
                "timestamptz",
                "timestamptz",
            ],
            payments,
            progress=none,
            label="payments",
            total=len(payments),
        )
        pay_ids = {f"payment:{i + 1}": i + 1 for i in range(len(payments))}
        result.counts["ledger_transactions"] = copy_rows(
            conn,
            "COPY ledger_transactions (account_id, kind, idempotency_key, invoice_id, payment_id,"
            " occurred_at) FROM STDIN (FORMAT BINARY)",
            ["int8", "text", "text", "int8", "int8", "timestamptz"],
            ((a, k, key, inv, pay_ids.get(key), at) for a, k, key, inv, at, _ in ledger),
            progress=none,
            label="ledger",
            total=len(ledger),
        )
        result.counts["ledger_entries"] = copy_rows(
            conn,
            "COPY ledger_entries (account_id, transaction_id, ledger_account, amount_minor,"
            " currency) FROM STDIN (FORMAT BINARY)",
            ["int8", "int8", "text", "int8", "text"],
            (
                (a, tx + 1, acct, amount, "USD")
                for tx, (a, _, _, _, _, entries) in enumerate(ledger)
                for acct, amount in entries
            ),
            progress=none,
            label="ledger entries",
            total=2 * len(ledger),
        )
