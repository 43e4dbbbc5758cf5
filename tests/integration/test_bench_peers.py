"""The bench's peers (SQLAlchemy Core and ORM, aiosql) against a fresh migrated database."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from datalayer import Account, Database
from datalayer._bench.peers import PEER_LIBRARIES, Peer, available_peers, missing_peers

PEER_NAMES = ["sqlalchemy_core_pk_lookup", "sqlalchemy_orm_pk_lookup", "aiosql_pk_lookup"]


def _id_and_name(row: Any) -> tuple[int, str]:
    """id and name from an ORM object or a Core ``Row`` (attributes) or an aiosql tuple."""
    if isinstance(row, tuple):
        return row[0], row[1]
    return row.id, row.name


def _bench_connections(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'datalayer-bench-%'"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def account(db: Database) -> Account:
    return db.accounts.create(name="Peer Co")


@pytest.fixture
def peers(fresh_url: str, account: Account) -> Iterator[list[Peer]]:
    found = available_peers(fresh_url, account.id, pool_size=2)
    yield found
    for peer in found:
        peer.close()


def test_every_peer_is_available_in_the_dev_install(peers: list[Peer]) -> None:
    assert missing_peers() == []
    assert [p.name for p in peers] == PEER_NAMES


def test_each_peer_reads_the_same_account_as_the_repository(
    db: Database, account: Account, peers: list[Peer]
) -> None:
    expected = db.accounts.get(account_id=account.id)
    assert expected is not None
    for peer in peers:
        assert _id_and_name(peer.call()) == (expected.id, expected.name), peer.name


def test_each_peer_sees_a_change_made_between_calls(
    db: Database, account: Account, peers: list[Peer]
) -> None:
    for peer in peers:
        peer.call()
    db.accounts.update(account_id=account.id, name="Renamed Co")
    for peer in peers:  # the ORM peer opens a new Session per call: nothing cached across calls
        assert _id_and_name(peer.call()) == (account.id, "Renamed Co"), peer.name


def test_peers_accept_a_postgresql_url_as_well_as_a_conninfo_string(
    fresh_url: str, account: Account
) -> None:
    info = conninfo_to_dict(fresh_url)
    url = f"postgresql://{info['user']}@{info['host']}:{info['port']}/{info['dbname']}"
    for peer in available_peers(url, account.id, pool_size=1):
        try:
            assert _id_and_name(peer.call()) == (account.id, account.name), peer.name
        finally:
            peer.close()


def test_close_releases_every_connection_the_peers_opened(fresh_url: str, account: Account) -> None:
    peers = available_peers(fresh_url, account.id, pool_size=2)
    for peer in peers:
        peer.call()
    assert _bench_connections(fresh_url) >= len(peers)
    for peer in peers:
        peer.close()
    deadline = time.monotonic() + 5  # a backend leaves pg_stat_activity shortly after its client
    while _bench_connections(fresh_url) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _bench_connections(fresh_url) == 0


def test_a_peer_whose_library_is_missing_is_skipped_and_named(
    fresh_url: str, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == "aiosql" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert missing_peers() == ["aiosql_pk_lookup"]
    assert PEER_LIBRARIES["aiosql_pk_lookup"] == "aiosql"
    peers = available_peers(fresh_url, account.id, pool_size=1)
    try:
        assert [p.name for p in peers] == PEER_NAMES[:2]
    finally:
        for peer in peers:
            peer.close()
