"""The accepted window of event times: how old, or how far ahead, a usage or analytics event may be.

Events older than ``ACCEPTED_AGE`` or more than ``ACCEPTED_SKEW`` ahead of
now are refused with a reason (DOMAIN.md): partitions exist for that window
(``datalayer partitions ensure`` reaches back to ``oldest_accepted``), and a
late event never lands in a month that has been archived.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .errors import InvalidInput

__all__ = ["ACCEPTED_AGE", "ACCEPTED_SKEW", "check_window", "oldest_accepted", "window_refusal"]

ACCEPTED_AGE = timedelta(days=35)
ACCEPTED_SKEW = timedelta(minutes=5)


def oldest_accepted(now: datetime) -> datetime:
    """The oldest event time accepted at ``now``."""
    return now - ACCEPTED_AGE


def window_refusal(occurred_at: datetime, now: datetime) -> str | None:
    """Why ``occurred_at`` is outside the window at ``now`` (``None`` when inside)."""
    if occurred_at < now - ACCEPTED_AGE:
        return f"outside the accepted window: older than {ACCEPTED_AGE.days} days"
    if occurred_at > now + ACCEPTED_SKEW:
        minutes = int(ACCEPTED_SKEW.total_seconds() // 60)
        return f"outside the accepted window: more than {minutes} minutes in the future"
    return None


def check_window(occurred_at: datetime, now: datetime | None = None) -> None:
    """Raise ``InvalidInput`` (field ``occurred_at``) for a time outside the accepted window."""
    reason = window_refusal(occurred_at, now or datetime.now(UTC))
    if reason is not None:
        raise InvalidInput(reason, field="occurred_at")
