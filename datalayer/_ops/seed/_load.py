"""Bulk-loading helpers of the seed: binary COPY with a progress bar, sampling."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, LiteralString, TextIO

import psycopg
import psycopg.sql

DAYS = 90


@dataclass
class SeedResult:
    """Row counts written and the seconds each step took."""

    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream
        self.last = 0.0

    def update(self, label: str, done: int, total: int) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if done < total and now - self.last < 0.2:
            return
        self.last = now
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        end = "\n" if done >= total else ""
        self.stream.write(f"\r  [{bar}] {label:<20} {done:>10,}/{total:,}{end}")
        self.stream.flush()


def copy_rows(
    conn: psycopg.Connection[Any],
    statement: LiteralString,
    types: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    progress: Progress,
    label: str,
    total: int,
) -> int:
    count = 0
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)
            count += 1
            if count % 20_000 == 0 and count < total:
                progress.update(label, count, total)
    progress.update(label, count, count)
    return count


def zipf_weights(n: int, s: float = 1.1) -> list[float]:
    return [1 / (rank**s) for rank in range(1, n + 1)]


def timestamps(rng: random.Random, n: int, anchor: datetime) -> list[datetime]:
    """``n`` times in the ``DAYS`` before ``anchor`` with a weekly and a daily cycle."""
    start = anchor - timedelta(days=DAYS)
    day_weights = [
        (0.45 if (start + timedelta(days=d)).weekday() >= 5 else 1.0) * (1 + d / (DAYS * 3))
        for d in range(DAYS)
    ]
    hour_weights = [0.25 + math.exp(-((h - 14) ** 2) / 18) for h in range(24)]
    days = rng.choices(range(DAYS), day_weights, k=n)
    hours = rng.choices(range(24), hour_weights, k=n)
    return [
        start + timedelta(days=d, hours=h, seconds=rng.randrange(3600))
        for d, h in zip(days, hours, strict=True)
    ]
