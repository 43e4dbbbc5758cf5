"""API keys against the migrated schema: issue, authenticate, revoke, rotate, list."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from datalayer import (
    Account,
    AlreadyExists,
    Database,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ReferenceViolation,
    UnitOfWork,
)
from datalayer.models.api_keys import ApiKey, IssuedKey
from datalayer.repositories import api_keys as api_keys_module
from datalayer.repositories.api_keys import ApiKeyRepository

pytestmark = pytest.mark.both_apis

T = TypeVar("T")


@pytest.fixture
def account(uow: UnitOfWork) -> Account:
    return uow.accounts.create(name="Acme")


@pytest.fixture
def other(uow: UnitOfWork) -> Account:
    return uow.accounts.create(name="Other")


def _secret(issued: IssuedKey) -> str:
    return issued.secret.get_secret_value()


def _issue(repo: ApiKeyRepository, account_id: int, **overrides: Any) -> IssuedKey:
    params: dict[str, Any] = {
        "account_id": account_id,
        "name": "ci",
        "environment": "live",
        "scopes": ["files:read"],
    }
    params.update(overrides)
    return repo.issue(**params)


class _Spy:
    """Stands in for a query descriptor: counts calls and what they returned."""

    def __init__(self, ref: Any, *, forbid: bool = False):
        self.ref = ref
        self.forbid = forbid
        self.results: list[Any] = []
        self._lock = threading.Lock()

    def __get__(self, obj: Any, owner: type) -> Callable[..., Any]:
        bound = self.ref.__get__(obj, owner)

        def call(**params: Any) -> Any:
            if self.forbid:
                raise AssertionError(f"query {self.ref.name} must not run")
            result = bound(**params)
            with self._lock:
                self.results.append(result)
            return result

        return call


def _spy(monkeypatch: pytest.MonkeyPatch, attr: str, *, forbid: bool = False) -> _Spy:
    spy = _Spy(ApiKeyRepository.__dict__[attr], forbid=forbid)
    monkeypatch.setattr(ApiKeyRepository, attr, spy)
    return spy


def _db_now(conn: psycopg.Connection[Any]) -> datetime:
    now = conn.execute("SELECT now()").fetchone()
    assert now is not None
    return now[0]  # type: ignore[no-any-return]


# --- issue and authenticate -----------------------------------------------------------------


def test_an_issued_key_authenticates_as_its_account_with_its_scopes(
    uow: UnitOfWork, account: Account
) -> None:
    issued = _issue(
        uow.api_keys, account.id, environment="test", scopes=["usage:write", "files:read"] * 2
    )
    secret = _secret(issued)
    assert secret.startswith("dl_test_")
    assert len(secret) == 46
    assert issued.key.display_prefix == secret[:12]
    assert issued.key.scopes == ("files:read", "usage:write")  # sorted, no duplicates
    context = uow.api_keys.authenticate(secret=secret)
    assert context is not None
    assert (context.key_id, context.account_id) == (issued.key.id, account.id)
    assert context.environment == "test"
    assert context.scopes == ("files:read", "usage:write")
    assert context.expires_at is None
    assert uow.api_keys.has_scope(context=context, scope="usage:write")
    assert not uow.api_keys.has_scope(context=context, scope="usage:read")


def test_a_well_formed_but_unknown_secret_does_not_authenticate(uow: UnitOfWork) -> None:
    assert uow.api_keys.authenticate(secret=api_keys_module.generate_secret("live")) is None


def _every_stored_value(conn: psycopg.Connection[Any]) -> list[tuple[str, str, Any]]:
    """(table, column, value) for every non-null value in every table of the schema."""
    columns: dict[str, list[str]] = {}
    for table, column in conn.execute(
        "SELECT c.relname, a.attname FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        "   AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum"
    ):
        columns.setdefault(table, []).append(column)
    values = []
    for table, names in columns.items():
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, names)), sql.Identifier(table)
        )
        for row in conn.execute(query):
            values += [(table, c, v) for c, v in zip(names, row, strict=True) if v is not None]
    return values


def _where_found(values: list[tuple[str, str, Any]], needle: str) -> set[tuple[str, str]]:
    def contains(value: Any) -> bool:
        if isinstance(value, bytes | bytearray | memoryview):
            return needle.encode() in bytes(value)
        return needle in str(value)

    return {(table, column) for table, column, value in values if contains(value)}


def test_the_secret_is_stored_nowhere_in_the_database(db: Database) -> None:
    account = db.accounts.create(name="Acme")
    live = _issue(db.api_keys, account.id)
    test = _issue(db.api_keys, account.id, environment="test", name="staging")
    assert db.api_keys.authenticate(secret=_secret(live)) is not None
    rotated = db.api_keys.rotate(account_id=account.id, key_id=test.key.id, overlap=timedelta(0))
    with db.connection() as conn:
        values = _every_stored_value(conn)
    tables = {table for table, _, _ in values}
    assert {"accounts", "api_keys"} <= tables
    # The search finds what is stored (so an empty result below means something) …
    assert _where_found(values, live.key.display_prefix) == {("api_keys", "display_prefix")}
    digest = api_keys_module.hash_secret(_secret(live))
    assert ("api_keys", "secret_hash", digest) in values
    # … but no secret, nor its random part beyond the display prefix, is anywhere.
    for issued in (live, test, rotated):
        secret = _secret(issued)
        assert _where_found(values, secret) == set()
        assert _where_found(values, secret[12:40]) == set()


def test_keys_as_returned_carry_neither_secret_nor_hash(uow: UnitOfWork, account: Account) -> None:
    issued = _issue(uow.api_keys, account.id)
    secret = _secret(issued)
    assert "secret_hash" not in ApiKey.model_fields
    assert secret not in repr(issued)
    assert secret not in str(issued.model_dump())
    listed = uow.api_keys.list(account_id=account.id).items
    fetched = uow.api_keys.require(account_id=account.id, key_id=issued.key.id)
    assert listed == [issued.key]
    assert fetched == issued.key
    digest = api_keys_module.hash_secret(secret)
    assert all(digest not in repr(k).encode() and secret not in repr(k) for k in listed)


@pytest.mark.not_on_citus(
    "it asserts PostgreSQL's own plan; on Citus every plan is a Custom Scan "
    "(test_citus_router.py checks the routing)"
)
def test_authentication_is_one_probe_of_the_hash_lookup_then_one_read_in_the_account(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    for _ in range(3):
        _issue(uow.api_keys, account.id)

    def leaves(ref: Any, params: dict[str, Any]) -> list[tuple[str, str | None]]:
        query = ref.query
        assert query is not None
        plan = conn.execute(b"EXPLAIN (FORMAT JSON) " + query.sql.encode(), params).fetchone()
        assert plan is not None

        def scans(node: dict[str, Any]) -> list[tuple[str, str | None]]:
            found = [(node["Node Type"], node.get("Index Name"))]
            for child in node.get("Plans", []):
                found += scans(child)
            return found

        return [s for s in scans(plan[0][0]["Plan"]) if "Scan" in s[0]]

    digest = api_keys_module.hash_secret("x")
    # The account: one probe of the lookup table's key (either of its unique indexes).
    lookup = leaves(ApiKeyRepository._account, {"secret_hash": digest})
    assert len(lookup) == 1, lookup
    assert lookup[0][0] in ("Index Scan", "Index Only Scan")
    assert lookup[0][1] in ("api_keys_secret_hash_key", "api_key_hashes_account_key")
    # The key in that account, then the account by primary key: no scan.
    read = leaves(ApiKeyRepository._find, {"secret_hash": digest, "account_id": account.id})
    assert ("Index Scan", "api_keys_secret_hash_account_key") in read
    assert all(kind == "Index Scan" for kind, _ in read), read
    assert {name for _, name in read} <= {"api_keys_secret_hash_account_key", "accounts_pkey"}


# --- validity -------------------------------------------------------------------------------


def test_a_revoked_key_does_not_authenticate(uow: UnitOfWork, account: Account) -> None:
    issued = _issue(uow.api_keys, account.id)
    revoked = uow.api_keys.revoke(account_id=account.id, key_id=issued.key.id)
    assert revoked.revoked_at is not None
    assert uow.api_keys.authenticate(secret=_secret(issued)) is None


def test_revoking_twice_succeeds_and_keeps_the_first_revocation_time(db: Database) -> None:
    account = db.accounts.create(name="Acme")
    issued = _issue(db.api_keys, account.id)
    first = db.api_keys.revoke(account_id=account.id, key_id=issued.key.id)
    # Outside a unit of work each call is its own transaction, so now() has moved on.
    again = db.api_keys.revoke(account_id=account.id, key_id=issued.key.id)
    assert first.revoked_at is not None
    assert again.revoked_at == first.revoked_at
    assert db.api_keys.authenticate(secret=_secret(issued)) is None


def test_an_expired_key_does_not_authenticate(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    expires = _db_now(conn) + timedelta(hours=1)
    issued = _issue(uow.api_keys, account.id, expires_at=expires)
    context = uow.api_keys.authenticate(secret=_secret(issued))
    assert context is not None
    assert context.expires_at == expires
    # The hour passes: move the key back in time (the schema wants created_at < expires_at).
    conn.execute(
        "UPDATE api_keys SET created_at = now() - interval '2 hours', expires_at = now()"
        " WHERE account_id = %s AND id = %s",
        [account.id, issued.key.id],
    )
    assert uow.api_keys.authenticate(secret=_secret(issued)) is None


@pytest.mark.parametrize(
    "expires_at",
    [
        datetime(2100, 1, 1),  # naive
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),  # year 10000 in UTC
        "2100-01-01T00:00:00Z",
    ],
)
def test_issue_refuses_an_expiry_that_is_naive_past_or_out_of_range(
    uow: UnitOfWork, account: Account, expires_at: Any
) -> None:
    with pytest.raises(InvalidInput) as info:
        _issue(uow.api_keys, account.id, expires_at=expires_at)
    assert info.value.field == "expires_at"
    assert uow.api_keys.list(account_id=account.id).items == []


def test_issue_refuses_a_creator_from_another_account_and_a_missing_account(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account, other: Account
) -> None:
    stranger = uow.users.create(account_id=other.id, email="eve@other.test")
    with pytest.raises(ReferenceViolation) as info, conn.transaction():
        _issue(uow.api_keys, account.id, created_by=stranger.id)
    assert info.value.constraint == "api_keys_created_by_fkey"
    with pytest.raises(ReferenceViolation) as info, conn.transaction():
        _issue(uow.api_keys, 2**62)
    assert info.value.constraint == "api_keys_account_id_fkey"
    owner = uow.users.create(account_id=account.id, email="ada@acme.test")
    assert _issue(uow.api_keys, account.id, created_by=owner.id).key.created_by == owner.id


# --- no database round trip for what cannot be a key ----------------------------------------


def _variants(secret: str) -> list[str]:
    flip = {c: ("A" if c != "A" else "B") for c in secret}
    return [
        secret[:-1],  # truncated
        secret[:20],
        secret + "x",
        secret[:-1] + flip[secret[-1]],  # checksum typo
        secret[:20] + flip[secret[20]] + secret[21:],  # random-part typo
        secret.replace("dl_live_", "dl_test_"),  # environment tampered
        secret.upper(),
        f" {secret}",
        "",
        "\x00" * 46,
        "dl_live_" + "A" * 38,
    ]


def test_a_tampered_or_truncated_key_is_refused_without_a_database_round_trip(
    db: Database,
) -> None:
    account = db.accounts.create(name="Acme")
    secret = _secret(_issue(db.api_keys, account.id))
    before = db.stats()["requests_num"]
    for variant in _variants(secret):
        assert db.api_keys.authenticate(secret=variant) is None, variant
    assert db.stats()["requests_num"] == before  # no connection was even borrowed
    # The counter does move for a secret that is well formed.
    assert db.api_keys.authenticate(secret=secret) is not None
    assert db.stats()["requests_num"] > before


def test_a_malformed_secret_never_reaches_the_lookup_query(
    monkeypatch: pytest.MonkeyPatch, uow: UnitOfWork, account: Account
) -> None:
    secret = _secret(_issue(uow.api_keys, account.id))
    _spy(monkeypatch, "_account", forbid=True)
    _spy(monkeypatch, "_find", forbid=True)
    for variant in _variants(secret):
        assert uow.api_keys.authenticate(secret=variant) is None


# --- last_used_at ---------------------------------------------------------------------------


def _xmin_and_last_used(db: Database, key: ApiKey) -> tuple[str, datetime | None]:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT xmin::text, last_used_at FROM api_keys WHERE account_id = %s AND id = %s",
            [key.account_id, key.id],
        ).fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.mark.sync_api_only("it patches the sync ApiKeyRepository or its module")
@pytest.mark.not_on_citus(
    "it backdates last_used_at with timestamptz - interval, which Citus refuses in an UPDATE"
)
def test_last_used_at_is_written_at_most_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, db: Database
) -> None:
    account = db.accounts.create(name="Acme")
    issued = _issue(db.api_keys, account.id)
    secret = _secret(issued)
    touches = _spy(monkeypatch, "_touch")
    xmin_issued, never = _xmin_and_last_used(db, issued.key)
    assert never is None

    assert db.api_keys.authenticate(secret=secret) is not None
    xmin_first, used = _xmin_and_last_used(db, issued.key)
    assert used is not None
    assert xmin_first != xmin_issued
    for _ in range(19):
        assert db.api_keys.authenticate(secret=secret) is not None
    assert _xmin_and_last_used(db, issued.key) == (xmin_first, used)  # no new row version
    assert touches.results == [1]  # one UPDATE in 20 calls; the other 19 were one read each

    # A minute later the next authentication records the use again, once.
    with db.connection() as conn:
        conn.execute(
            "UPDATE api_keys SET last_used_at = last_used_at - interval '61 seconds'"
            " WHERE account_id = %s AND id = %s",
            [account.id, issued.key.id],
        )
    xmin_moved, _ = _xmin_and_last_used(db, issued.key)
    for _ in range(5):
        assert db.api_keys.authenticate(secret=secret) is not None
    xmin_second, used_again = _xmin_and_last_used(db, issued.key)
    assert xmin_second != xmin_moved
    assert used_again is not None
    assert used_again > used
    assert touches.results == [1, 1]


@pytest.mark.sync_api_only("it patches the sync ApiKeyRepository or its module")
def test_concurrent_authentications_of_a_stale_key_record_the_use_once(
    monkeypatch: pytest.MonkeyPatch, db: Database
) -> None:
    account = db.accounts.create(name="Acme")
    secret = _secret(_issue(db.api_keys, account.id))
    touches = _spy(monkeypatch, "_touch")
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                assert db.api_keys.authenticate(secret=secret) is not None
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert sum(touches.results) == 1  # however many saw it stale, one row was written


@pytest.mark.sync_api_only("it patches the sync ApiKeyRepository or its module")
def test_authentication_never_waits_behind_a_lock_on_the_key(
    monkeypatch: pytest.MonkeyPatch, db: Database, fresh_url: str
) -> None:
    account = db.accounts.create(name="Acme")
    issued = _issue(db.api_keys, account.id)
    touches = _spy(monkeypatch, "_touch")
    with psycopg.connect(fresh_url) as holder:  # a long transaction holding the row lock
        holder.execute(
            "SELECT 1 FROM api_keys WHERE account_id = %s AND id = %s FOR UPDATE",
            [account.id, issued.key.id],
        )
        started = time.monotonic()
        assert db.api_keys.authenticate(secret=_secret(issued)) is not None
        assert time.monotonic() - started < 1  # lock_timeout is 10 s: it did not wait
        assert touches.results == [0]  # the use went unrecorded; a later call records it
    assert db.api_keys.authenticate(secret=_secret(issued)) is not None
    assert touches.results == [0, 1]


@pytest.mark.sync_api_only("it patches the sync ApiKeyRepository or its module")
def test_a_lookup_row_whose_hash_differs_is_never_accepted(
    monkeypatch: pytest.MonkeyPatch, uow: UnitOfWork, account: Account
) -> None:
    """Defence in depth: even a lookup that returned the wrong row cannot authenticate."""
    issued = _issue(uow.api_keys, account.id)
    real = ApiKeyRepository.__dict__["_find"]

    class WrongRow:
        def __get__(self, obj: Any, owner: type) -> Callable[..., Any]:
            def find(**params: Any) -> Any:
                row = real.__get__(obj, owner)(**params)
                assert row is not None
                return row.model_copy(update={"secret_hash": bytes(32)})

            return find

    monkeypatch.setattr(ApiKeyRepository, "_find", WrongRow())
    assert uow.api_keys.authenticate(secret=_secret(issued)) is None


def test_authenticating_without_recording_use_never_writes(
    monkeypatch: pytest.MonkeyPatch, uow: UnitOfWork, account: Account
) -> None:
    issued = _issue(uow.api_keys, account.id)
    _spy(monkeypatch, "_touch", forbid=True)
    assert uow.api_keys.authenticate(secret=_secret(issued), record_use=False) is not None
    key = uow.api_keys.require(account_id=account.id, key_id=issued.key.id)
    assert key.last_used_at is None


# --- rotation -------------------------------------------------------------------------------


def _move_back(conn: psycopg.Connection[Any], key: ApiKey, *, expires_in: timedelta) -> None:
    """Make ``key`` a day old, expiring ``expires_in`` from now (the schema wants
    created_at < expires_at): time passing, inside one transaction."""
    conn.execute(
        "UPDATE api_keys SET created_at = now() - interval '1 day', expires_at = now() + %s"
        " WHERE account_id = %s AND id = %s",
        [expires_in, key.account_id, key.id],
    )


def test_during_the_overlap_both_keys_authenticate_and_afterwards_only_the_new_one(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    old = _issue(uow.api_keys, account.id, name="deploy", scopes=["a:b", "c:d"])
    new = uow.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(hours=1))
    assert _secret(new) != _secret(old)
    assert new.key.rotated_from_id == old.key.id
    assert (new.key.name, new.key.scopes, new.key.environment) == ("deploy", ("a:b", "c:d"), "live")
    assert new.key.expires_at is None
    retiring = uow.api_keys.require(account_id=account.id, key_id=old.key.id)
    assert retiring.expires_at == _db_now(conn) + timedelta(hours=1)
    old_context = uow.api_keys.authenticate(secret=_secret(old))
    new_context = uow.api_keys.authenticate(secret=_secret(new))
    assert old_context is not None
    assert old_context.key_id == old.key.id
    assert new_context is not None
    assert new_context.key_id == new.key.id
    # The hour is over.
    _move_back(conn, retiring, expires_in=timedelta(0))
    assert uow.api_keys.authenticate(secret=_secret(old)) is None
    assert uow.api_keys.authenticate(secret=_secret(new)) is not None


def test_a_rotation_without_overlap_retires_the_old_key_at_once(db: Database) -> None:
    account = db.accounts.create(name="Acme")
    old = _issue(db.api_keys, account.id)
    new = db.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(0))
    assert db.api_keys.authenticate(secret=_secret(old)) is None
    assert db.api_keys.authenticate(secret=_secret(new)) is not None


def test_rotation_never_extends_an_earlier_expiry(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    soon = _db_now(conn) + timedelta(minutes=5)
    old = _issue(uow.api_keys, account.id, expires_at=soon)
    uow.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(days=7))
    assert uow.api_keys.require(account_id=account.id, key_id=old.key.id).expires_at == soon
    # Rotating it again with a shorter overlap moves the expiry earlier; it never moves later.
    uow.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(minutes=1))
    assert uow.api_keys.require(account_id=account.id, key_id=old.key.id).expires_at == _db_now(
        conn
    ) + timedelta(minutes=1)


def test_a_key_can_be_rotated_without_overlap_in_the_transaction_that_issued_it(
    uow: UnitOfWork, account: Account
) -> None:
    # now() is the same for the whole transaction, and the schema wants expires_at > created_at.
    old = _issue(uow.api_keys, account.id)
    new = uow.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(0))
    retired = uow.api_keys.require(account_id=account.id, key_id=old.key.id)
    assert retired.expires_at == old.key.created_at + timedelta(microseconds=1)
    assert uow.api_keys.authenticate(secret=_secret(new)) is not None


def test_the_new_key_records_who_rotated_it_else_who_created_the_old_one(
    uow: UnitOfWork, account: Account
) -> None:
    ada = uow.users.create(account_id=account.id, email="ada@acme.test")
    bob = uow.users.create(account_id=account.id, email="bob@acme.test")
    old = _issue(uow.api_keys, account.id, created_by=ada.id)
    inherited = uow.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(1))
    by_bob = uow.api_keys.rotate(
        account_id=account.id, key_id=inherited.key.id, overlap=timedelta(1), created_by=bob.id
    )
    assert (inherited.key.created_by, by_bob.key.created_by) == (ada.id, bob.id)
    assert by_bob.key.rotated_from_id == inherited.key.id


def test_rotating_a_revoked_or_expired_key_raises_invalid_transition(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account
) -> None:
    revoked = _issue(uow.api_keys, account.id)
    uow.api_keys.revoke(account_id=account.id, key_id=revoked.key.id)
    expired = _issue(uow.api_keys, account.id)
    _move_back(conn, expired.key, expires_in=timedelta(seconds=-1))
    for issued, state in ((revoked, "revoked"), (expired, "expired")):
        with pytest.raises(InvalidTransition) as info:
            uow.api_keys.rotate(account_id=account.id, key_id=issued.key.id, overlap=timedelta(0))
        assert (info.value.actual, info.value.expected) == (state, ("active",))
        assert info.value.entity_id == issued.key.id
    page = uow.api_keys.list(account_id=account.id, include_revoked=True)
    assert {k.id for k in page.items} == {revoked.key.id, expired.key.id}


@pytest.mark.sync_api_only("it patches the sync ApiKeyRepository or its module")
def test_a_failed_rotation_changes_nothing(monkeypatch: pytest.MonkeyPatch, db: Database) -> None:
    account = db.accounts.create(name="Acme")
    old = _issue(db.api_keys, account.id)
    taken = _secret(_issue(db.api_keys, account.id, name="other"))
    # Force the new key's insert to fail after the old key was locked (a hash collision).
    monkeypatch.setattr(api_keys_module, "generate_secret", lambda environment: taken)
    with pytest.raises(AlreadyExists) as info:
        db.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(0))
    assert info.value.constraint == "api_keys_secret_hash_key"
    assert db.api_keys.require(account_id=account.id, key_id=old.key.id) == old.key
    assert len(db.api_keys.list(account_id=account.id).items) == 2
    monkeypatch.undo()
    # The lock was released with the rolled-back transaction: rotation works now.
    db.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(0))


def test_a_rotation_inside_a_rolled_back_unit_of_work_leaves_no_trace(db: Database) -> None:
    account = db.accounts.create(name="Acme")
    old = _issue(db.api_keys, account.id)
    with pytest.raises(RuntimeError), db.unit_of_work() as uow:
        new = uow.api_keys.rotate(account_id=account.id, key_id=old.key.id, overlap=timedelta(0))
        raise RuntimeError("the caller changes its mind")
    assert db.api_keys.authenticate(secret=_secret(new)) is None
    assert db.api_keys.authenticate(secret=_secret(old)) is not None


def _reserved_hashes(conn: psycopg.Connection[Any]) -> set[tuple[bytes, int]]:
    return set(conn.execute("SELECT secret_hash, account_id FROM api_key_hashes").fetchall())


def _key_hashes(conn: psycopg.Connection[Any]) -> set[tuple[bytes, int]]:
    return set(conn.execute("SELECT secret_hash, account_id FROM api_keys").fetchall())


def test_every_keys_hash_is_reserved_for_its_account_in_the_lookup_table(
    conn: psycopg.Connection[Any], uow: UnitOfWork, account: Account, other: Account
) -> None:
    """Issued, rotated, revoked or expired: a key's hash stays reserved (never reused)."""
    first = _issue(uow.api_keys, account.id)
    second = _issue(uow.api_keys, other.id)
    uow.api_keys.rotate(account_id=account.id, key_id=first.key.id, overlap=timedelta(0))
    uow.api_keys.revoke(account_id=other.id, key_id=second.key.id)
    assert len(_key_hashes(conn)) == 3
    assert _reserved_hashes(conn) == _key_hashes(conn)


def test_a_failed_issue_outside_a_unit_of_work_reserves_no_hash(db: Database) -> None:
    account = db.accounts.create(name="Acme")
    with pytest.raises(ReferenceViolation):
        _issue(db.api_keys, 2**62)
    with pytest.raises(InvalidInput):  # refused by the database clock, after the reservation
        _issue(db.api_keys, account.id, expires_at=datetime.now(UTC) - timedelta(minutes=1))
    with db.connection() as conn:
        assert _reserved_hashes(conn) == set()


# --- tenancy --------------------------------------------------------------------------------


def test_another_account_can_neither_see_nor_change_a_key(
    uow: UnitOfWork, account: Account, other: Account
) -> None:
    issued = _issue(uow.api_keys, account.id)
    key_id = issued.key.id
    assert uow.api_keys.get(account_id=other.id, key_id=key_id) is None
    with pytest.raises(NotFound):
        uow.api_keys.require(account_id=other.id, key_id=key_id)
    with pytest.raises(NotFound):
        uow.api_keys.revoke(account_id=other.id, key_id=key_id)
    with pytest.raises(NotFound):
        uow.api_keys.rotate(account_id=other.id, key_id=key_id, overlap=timedelta(0))
    assert uow.api_keys.list(account_id=other.id, include_revoked=True).items == []
    assert uow.api_keys.require(account_id=account.id, key_id=key_id) == issued.key
    assert uow.api_keys.authenticate(secret=_secret(issued)) is not None


# --- listing --------------------------------------------------------------------------------


def test_list_pages_through_keys_newest_first_leaving_out_revoked_ones(
    uow: UnitOfWork, account: Account, other: Account
) -> None:
    ids = [_issue(uow.api_keys, account.id, name=f"k{i}").key.id for i in range(5)]
    _issue(uow.api_keys, other.id)
    uow.api_keys.revoke(account_id=account.id, key_id=ids[2])

    def walk(**kwargs: Any) -> list[int]:
        seen: list[int] = []
        cursor = None
        while True:
            page = uow.api_keys.list(account_id=account.id, cursor=cursor, limit=2, **kwargs)
            assert len(page.items) <= 2
            seen += [k.id for k in page.items]
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    assert walk() == [ids[4], ids[3], ids[1], ids[0]]
    assert walk(include_revoked=True) == ids[::-1]
    with pytest.raises(InvalidInput) as info:
        uow.api_keys.list(account_id=account.id, cursor="not-a-cursor")
    assert info.value.field == "cursor"


# --- hostile input --------------------------------------------------------------------------

_sql_like = st.sampled_from(
    ["'; DROP TABLE api_keys; --", "' OR '1'='1", "$$", ":name", "%(x)s", "\\x00", "%s"]
)
_good_names = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=200),
    _sql_like,
)
_bad_names = st.one_of(
    st.just(""),
    st.text(min_size=201, max_size=300),
    st.text(st.characters(categories=["Cs", "Co", "Zs", "Cc"]), max_size=5),  # surrogates too
    st.text(max_size=10).map(lambda t: t + "\x00"),
)


def _mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Three draws in four from ``good``, so that enough examples get past validation."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


_names = _mostly(_good_names, _bad_names)
_valid_scope = st.from_regex(r"[a-z][a-z0-9_]{0,8}(:[a-z][a-z0-9_]{0,8}){0,2}", fullmatch=True)
_scopes = _mostly(
    st.one_of(
        st.lists(_valid_scope, max_size=8),
        st.just([f"s{i}:read" for i in range(64)]),  # the most a key may have
    ),
    st.one_of(
        st.integers(65, 70).map(lambda n: [f"s{i}:read" for i in range(n)]),
        st.lists(st.one_of(_valid_scope, st.text(max_size=5), _sql_like), min_size=1, max_size=5),
        st.just("files:read"),  # a string, not a list of scopes
    ),
)
_offsets = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
_expiries = _mostly(
    st.one_of(
        st.none(),
        st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3650)).map(
            lambda d: datetime.now(UTC) + d
        ),
    ),
    st.one_of(
        st.datetimes(),  # naive
        st.datetimes(max_value=datetime(2020, 1, 1), timezones=_offsets),  # past
        st.datetimes(min_value=datetime(9999, 1, 2), timezones=_offsets),  # after 9998 (UTC)
    ),
)
_environments = _mostly(
    st.sampled_from(["live", "test"]), st.sampled_from(["prod", "", "LIVE", "live\x00"])
)
_secrets = st.one_of(st.text(max_size=60), _sql_like, st.binary(max_size=46), st.integers())


def _attempt(call: Callable[[], T]) -> tuple[T | None, InvalidInput | None]:
    """The call's result, or the ``InvalidInput`` it raised; any other error propagates."""
    try:
        return call(), None
    except InvalidInput as exc:
        return None, exc


@settings(max_examples=150, deadline=None)
@given(
    name=_names,
    environment=_environments,
    scopes=_scopes,
    expires_at=_expiries,
    secret=_secrets,
    data=st.data(),
)
def _hostile_round(
    db: Database,
    account: Account,
    outcomes: Counter[str],
    *,
    name: Any,
    environment: Any,
    scopes: Any,
    expires_at: Any,
    secret: Any,
    data: st.DataObject,
) -> None:
    context, refused = _attempt(lambda: db.api_keys.authenticate(secret=secret))
    if isinstance(secret, str):
        assert refused is None
        assert context is None
    else:
        assert refused is not None
        assert refused.field == "secret"
    issued, refused = _attempt(
        lambda: db.api_keys.issue(
            account_id=account.id,
            name=name,
            environment=environment,
            scopes=scopes,
            expires_at=expires_at,
        )
    )
    if refused is not None:
        assert refused.field is not None
        outcomes[f"refused {refused.field.split('.')[0]}"] += 1
        assert refused.field.split(".")[0] in {"name", "environment", "scopes", "expires_at"}
        return
    outcomes["issued"] += 1
    assert isinstance(issued, IssuedKey)
    key = issued.key
    assert (key.name, key.environment) == (name, environment)
    assert key.scopes == tuple(sorted(set(scopes)))
    assert key.expires_at == expires_at
    secret = _secret(issued)
    context = db.api_keys.authenticate(secret=secret)
    assert context is not None
    assert (context.key_id, context.scopes) == (key.id, key.scopes)
    # A random edit of the real secret never authenticates.
    position = data.draw(st.integers(0, len(secret) - 1))
    edited = secret[:position] + data.draw(st.characters(codec="utf-8")) + secret[position + 1 :]
    if edited != secret:
        assert db.api_keys.authenticate(secret=edited) is None
    assert db.api_keys.revoke(account_id=account.id, key_id=key.id).revoked_at is not None
    assert db.api_keys.authenticate(secret=secret) is None


def test_hostile_input_gets_invalid_input_or_a_correct_result_and_the_pool_stays_healthy(
    db: Database,
) -> None:
    account = db.accounts.create(name="Fuzz")
    outcomes: Counter[str] = Counter()
    _hostile_round(db, account, outcomes)
    # The fuzzing reached both ends: refusals, and keys issued, used and revoked.
    assert outcomes["issued"] >= 5
    assert outcomes.total() - outcomes["issued"] >= 5
    stats = db.stats()
    assert stats.get("requests_errors", 0) == 0
    assert stats.get("connections_lost", 0) == 0
    assert stats["pool_available"] == stats["pool_size"]  # every connection came back
    issued = _issue(db.api_keys, account.id)
    assert db.api_keys.authenticate(secret=_secret(issued)) is not None


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE accounts SET status = 'suspended' WHERE id = %s",
        "UPDATE accounts SET status = 'closed' WHERE id = %s",
        "UPDATE accounts SET deleted_at = now() WHERE id = %s",
    ],
)
def test_keys_of_a_suspended_closed_or_deleted_account_do_not_authenticate(
    db: Database, change: str
) -> None:
    account = db.accounts.create(name="Acme")
    issued = db.api_keys.issue(account_id=account.id, name="ci", environment="live", scopes=[])
    secret = issued.secret.get_secret_value()
    assert db.api_keys.authenticate(secret=secret) is not None
    with db.connection() as conn:
        conn.execute(change, (account.id,))  # type: ignore[arg-type]
    assert db.api_keys.authenticate(secret=secret) is None
