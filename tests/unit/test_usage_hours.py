"""The hour buckets a batch queues for the rollups: exact at every edge of an hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from datalayer.repositories.usage import _EPOCH, _HOUR, _hour_of


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1900, 1, 1, tzinfo=UTC),  # the earliest instant accepted
        datetime(8999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # the latest
        datetime(2026, 3, 1, 0, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 3, 1, 1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(1969, 12, 31, 23, 30, tzinfo=UTC),  # before the epoch: floor, not truncation
        datetime(2026, 12, 4, 10, 0, 0, 1, tzinfo=UTC),
    ],
)
def test_an_events_hour_is_its_utc_hour_truncated(moment: datetime) -> None:
    bucket = _EPOCH + _hour_of(moment) * _HOUR
    assert bucket == moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    assert bucket <= moment < bucket + _HOUR
