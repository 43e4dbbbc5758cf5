"""Archiving old partitions: round trip, crash safety, retention window, dry run."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from datalayer import DataLayerError, InvalidInput
from datalayer._ops import archive as _archive
from datalayer._ops.archive import archive_partitions, restore_archive
from datalayer._ops.partitions import ensure_partitions, list_partitions
from datalayer._ops.rollups import rebuild_rollups

OLD = datetime(2020, 1, 1, tzinfo=UTC)  # partitions 2020_01 .. 2020_03 are created
NOW = datetime(2021, 3, 15, tzinfo=UTC)  # 13 months back: only the 2020_01 ones are out


@pytest.fixture
def aconn(fresh_admin_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to a fresh database with old partitions full of events."""
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        ensure_partitions(conn, start=OLD, now=datetime(2020, 3, 10, tzinfo=UTC), ahead=0)
        conn.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum')"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute(
            """
            INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,
                                      idempotency_key, properties)
            SELECT g % 7 + 1, 'api_calls', g * 1.5,
                   timestamptz '2020-01-01 00:00:00+00' + g * interval '17 minutes',
                   'k' || g, jsonb_build_object('note', E'tab\\there\nnewline ' || g)
            FROM generate_series(0, 4000) g
            """
        )
        conn.execute(
            """
            INSERT INTO analytics_events (account_id, category, name, occurred_at)
            SELECT g % 3 + 1, 'behaviour', 'page.view',
                   timestamptz '2020-01-01 00:00:00+00' + g * interval '1 hour'
            FROM generate_series(0, 1500) g
            """
        )
        yield conn


def digest(conn: psycopg.Connection[Any], table: str, start: str, end: str) -> tuple[int, str]:
    """Row count and md5 of the ordered rows of ``table`` in ``[start, end)``."""
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n'"
            " ORDER BY t.account_id, t.occurred_at, t.id), ''))"
            " FROM {} t WHERE occurred_at >= %s AND occurred_at < %s"
        ).format(sql.Identifier(table)),
        (start, end),
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def table_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,)


def partition_names(conn: psycopg.Connection[Any]) -> set[str]:
    return {p.name for p in list_partitions(conn)}


JAN = ("2020-01-01T00:00:00+00:00", "2020-02-01T00:00:00+00:00")


def test_archive_drop_and_restore_round_trip_gives_identical_rows(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    usage_before = digest(aconn, "usage_events", *JAN)
    analytics_before = digest(aconn, "analytics_events", *JAN)
    assert usage_before[0] > 2000
    assert analytics_before[0] == 744

    results = archive_partitions(aconn, out_dir=tmp_path, now=NOW)

    assert {r.name for r in results} == {"usage_events_2020_01", "analytics_events_2020_01"}
    assert all(r.dropped for r in results)
    assert not table_exists(aconn, "usage_events_2020_01")
    assert digest(aconn, "usage_events", *JAN)[0] == 0
    manifest = json.loads((tmp_path / "usage_events_2020_01.manifest.json").read_text())
    assert manifest["rows"] == usage_before[0]
    assert manifest["parent"] == "usage_events"
    assert manifest["range_start"] == "2020-01-01T00:00:00+00:00"
    assert manifest["schema_version"].startswith("00")

    restored = restore_archive(aconn, tmp_path / "usage_events_2020_01.manifest.json")
    assert restored == usage_before[0]
    assert restore_archive(aconn, tmp_path / "analytics_events_2020_01.manifest.json") == 744
    assert digest(aconn, "usage_events", *JAN) == usage_before
    assert digest(aconn, "analytics_events", *JAN) == analytics_before
    assert "usage_events_2020_01" in partition_names(aconn)


def test_partitions_inside_the_retention_window_are_untouched(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    feb = digest(aconn, "usage_events", "2020-02-01", "2020-03-01")
    before = partition_names(aconn)

    archive_partitions(aconn, out_dir=tmp_path, now=NOW)

    after = partition_names(aconn)
    assert before - after == {"usage_events_2020_01", "analytics_events_2020_01"}
    assert {"usage_events_2020_02", "usage_events_2020_03"} <= after
    assert digest(aconn, "usage_events", "2020-02-01", "2020-03-01") == feb
    assert feb[0] > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "analytics_events_2020_01.copy.gz",
        "analytics_events_2020_01.manifest.json",
        "usage_events_2020_01.copy.gz",
        "usage_events_2020_01.manifest.json",
    ]


def test_a_retention_that_reaches_into_the_accepted_window_is_refused_and_changes_nothing(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    before = partition_names(aconn)
    march_1 = datetime(2021, 3, 1, tzinfo=UTC)  # January still accepts events until the 5th
    with pytest.raises(InvalidInput) as info:
        archive_partitions(aconn, older_than_months=1, out_dir=tmp_path, now=march_1)
    assert info.value.field == "older_than_months"
    assert partition_names(aconn) == before
    assert list(tmp_path.iterdir()) == []
    # On the 15th January is out of the window: one month is allowed then.
    results = archive_partitions(
        aconn, older_than_months=1, out_dir=tmp_path, now=NOW, dry_run=True
    )
    assert results
    assert all(r.end <= datetime(2021, 2, 1, tzinfo=UTC) for r in results)


def test_dry_run_lists_the_partitions_and_changes_nothing(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    before = partition_names(aconn)
    out = tmp_path / "archive"

    results = archive_partitions(aconn, out_dir=out, now=NOW, dry_run=True)

    assert {r.name for r in results} == {"usage_events_2020_01", "analytics_events_2020_01"}
    assert all(not r.dropped and r.rows is None for r in results)
    assert partition_names(aconn) == before
    assert not out.exists()


def test_a_crash_between_detach_and_drop_loses_nothing_and_a_rerun_finishes(
    aconn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {t: digest(aconn, t, *JAN) for t in ("usage_events", "analytics_events")}

    def crash(conn: psycopg.Connection[Any], name: str) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr(_archive, "_drop_detached", crash)
    with pytest.raises(RuntimeError):
        archive_partitions(aconn, out_dir=tmp_path, now=NOW)
    # The first one (analytics) is detached, not dropped: its rows are still there.
    assert table_exists(aconn, "analytics_events_2020_01")
    assert "analytics_events_2020_01" not in partition_names(aconn)
    assert "usage_events_2020_01" in partition_names(aconn)
    monkeypatch.undo()

    results = archive_partitions(aconn, out_dir=tmp_path, now=NOW)

    assert {r.name for r in results} == {"usage_events_2020_01", "analytics_events_2020_01"}
    for table in before:
        assert not table_exists(aconn, f"{table}_2020_01")
        restore_archive(aconn, tmp_path / f"{table}_2020_01.manifest.json")
        assert digest(aconn, table, *JAN) == before[table]


def test_a_file_corrupted_before_verification_is_rewritten_on_rerun(
    aconn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {t: digest(aconn, t, *JAN) for t in ("usage_events", "analytics_events")}
    real_write = _archive._write

    def write_then_crash(conn: psycopg.Connection[Any], cand: Any, out_dir: Path) -> Any:
        manifest = real_write(conn, cand, out_dir)
        path = out_dir / f"{cand.name}.copy.gz"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # torn write
        return manifest

    monkeypatch.setattr(_archive, "_write", write_then_crash)
    with pytest.raises(DataLayerError, match=r"analytics_events_2020_01\.copy\.gz"):
        archive_partitions(aconn, out_dir=tmp_path, now=NOW)
    # Verification failed: the detached table is kept.
    assert table_exists(aconn, "analytics_events_2020_01")
    monkeypatch.undo()

    archive_partitions(aconn, out_dir=tmp_path, now=NOW)

    for table in before:
        assert not table_exists(aconn, f"{table}_2020_01")
        restore_archive(aconn, tmp_path / f"{table}_2020_01.manifest.json")
        assert digest(aconn, table, *JAN) == before[table]


def test_restore_refuses_a_corrupted_archive_and_creates_nothing(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    archive_partitions(aconn, out_dir=tmp_path, now=NOW)
    path = tmp_path / "usage_events_2020_01.copy.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data.replace(b"api_calls", b"api_callz", 1)))

    with pytest.raises(DataLayerError, match=r"usage_events_2020_01\.copy\.gz"):
        restore_archive(aconn, tmp_path / "usage_events_2020_01.manifest.json")
    assert not table_exists(aconn, "usage_events_2020_01")


def test_archiving_in_a_transaction_uses_a_plain_detach(
    fresh_admin_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(fresh_admin_url, autocommit=True) as setup:
        ensure_partitions(setup, start=OLD, now=datetime(2020, 1, 10, tzinfo=UTC), ahead=0)
    with psycopg.connect(fresh_admin_url) as conn:
        results = archive_partitions(conn, out_dir=tmp_path, now=NOW)
        conn.commit()
        assert {r.rows for r in results} == {0}
        assert not table_exists(conn, "usage_events_2020_01")


def test_archiving_forgets_the_keys_of_archived_usage_and_restoring_brings_them_back(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    aconn.execute(
        "INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)"
        " SELECT account_id, idempotency_key, id, occurred_at FROM usage_events"
    )
    keys_by_month = (
        "SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM'), count(*)"
        " FROM usage_event_keys GROUP BY 1 ORDER BY 1"
    )
    before = dict(aconn.execute(keys_by_month).fetchall())
    assert before["2020-01"] > 2000
    assert before["2020-02"] > 0

    archive_partitions(aconn, out_dir=tmp_path, now=NOW)

    after = dict(aconn.execute(keys_by_month).fetchall())
    assert "2020-01" not in after  # January's events are archived: their keys go with them
    assert after["2020-02"] == before["2020-02"]  # February is kept, and its keys
    restore_archive(aconn, tmp_path / "usage_events_2020_01.manifest.json")
    assert dict(aconn.execute(keys_by_month).fetchall()) == before


def test_archiving_keeps_the_cancellations_of_a_month_and_restored_events_stay_cancelled(
    aconn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    aconn.execute("INSERT INTO accounts (name) SELECT 'A' || g FROM generate_series(1, 7) g")
    # Cancelled while they were inside the accepted window, as cancel() stores them.
    aconn.execute(
        "INSERT INTO usage_cancellations (account_id, event_id, occurred_at, meter_code,"
        " quantity, idempotency_key, reason)"
        " SELECT account_id, id, occurred_at, meter_code, quantity, idempotency_key, 'test'"
        " FROM usage_events WHERE id % 10 = 0"
    )
    rebuild_rollups(aconn)
    cancellations = "SELECT * FROM usage_cancellations ORDER BY account_id, event_id"
    rollups = (
        "SELECT account_id, meter_code, granularity, bucket_start, event_count, quantity_sum,"
        " quantity_max FROM usage_rollups ORDER BY 1, 2, 3, 4"
    )
    kept = aconn.execute(cancellations).fetchall()
    assert sum(1 for c in kept if c[2] < datetime(2020, 2, 1, tzinfo=UTC)) > 200
    rolled = aconn.execute(rollups).fetchall()

    archive_partitions(aconn, out_dir=tmp_path, now=NOW)
    assert aconn.execute(cancellations).fetchall() == kept  # the audit records stay
    assert aconn.execute(rollups).fetchall() == rolled  # rollups are never touched

    restore_archive(aconn, tmp_path / "usage_events_2020_01.manifest.json")
    rebuild_rollups(aconn)  # recomputed from the restored raw events
    assert aconn.execute(rollups).fetchall() == rolled  # the cancelled ones stay out
