"""The integration tests of the repositories, the unit of work, batch ingestion and the cache,
run again through PgBouncer in transaction mode.

The tests are those of their own modules, adopted here unchanged; this module
only points their connection fixtures at the bouncer (``pgbouncer`` in
``tests/scaleout_servers.py``): ``conn``/``uow`` on a shared connection through
it (nothing prepared, session settings per transaction, as a unit of work does
behind a pooler), ``db``/``cdb`` a ``Database`` with the default settings,
which must find the bouncer by itself. Slow cache tests about Redis outages
say nothing about the bouncer and stay in their own module.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import psycopg
import pytest
import test_cache
import test_repositories
import test_unit_of_work
import test_usage_batch
from conftest import APP_PASSWORD, APP_ROLE, _clone, pg_url
from scaleout_servers import Bouncer

from datalayer import Settings
from datalayer._ops.roles import set_session_defaults
from datalayer._pooler import LOCAL_SETTINGS, local_settings

# Needs a part a bare machine may lack: skipped there, a failure under CI (tests/servers.py).
pytestmark = pytest.mark.requires_parts("pgbouncer")

# Retries of conflicts and deadlocks: about PostgreSQL's locks, not the bouncer (and slow).
_RETRIES = ("run_in_transaction_retries", "gives_up_after")
# Cache tests about Redis outages, signing, TTLs and races between readers: nothing there
# goes through the bouncer that the invalidation tests kept here do not exercise already.
_NOT_ABOUT_THE_BOUNCER = (
    "rotation",
    "rotating",
    "archiving",
    "suspending",
    "unknown_key",
    "issuing_a_key",
    "negative_ttl",
    "a_value_built_before",
    "reader_that_read_the_old",
    "without_redis",
    "redis_killed",
    "breaker",
    "cannot_reach_redis",
    "planted_in_redis",
    "expire",
    "expires",
    "signing_keys",
    "namespaced",
    "genuine_value",
    "slow_reader",
    "write_back",
    "after_a_redis_error",
    "never_finishes",
    "fifty_concurrent",
    "malformed_key",
)


def _adopt(module: ModuleType, *, skip: tuple[str, ...] = ()) -> None:
    """Make ``module``'s tests and fixtures this module's."""
    for name, value in vars(module).items():
        is_fixture = hasattr(value, "_fixture_function_marker") or hasattr(
            value, "_pytestfixturefunction"
        )
        is_test = name.startswith("test_") and callable(value)
        if (is_test and not any(word in name for word in skip)) or is_fixture:
            globals()[name] = value


_adopt(test_repositories)
_adopt(test_unit_of_work, skip=_RETRIES)
_adopt(test_usage_batch)
_adopt(test_cache, skip=_NOT_ABOUT_THE_BOUNCER)


def _through(bouncer: Bouncer, dbname: str) -> str:
    """The application role's URL to ``dbname`` through ``bouncer``, with the role's
    session defaults set there as ``datalayer migrate`` sets them (clones lack them)."""
    with psycopg.connect(pg_url(dbname), autocommit=True) as admin:
        assert set_session_defaults(admin, APP_ROLE, Settings())
    return bouncer.url(dbname, user=APP_ROLE, password=APP_PASSWORD)


@pytest.fixture(scope="module")
def _shared_conn(shared_dbname: str, pgbouncer: Bouncer) -> Iterator[psycopg.Connection[Any]]:
    # Nothing prepared and no session SET: either would land on a server connection
    # that other clients of the bouncer get next.
    url = pgbouncer.url(shared_dbname, user=APP_ROLE, password=APP_PASSWORD)
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        yield conn


@pytest.fixture
def conn(_shared_conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    with _shared_conn.transaction(force_rollback=True):
        _shared_conn.execute(LOCAL_SETTINGS, local_settings(Settings()))
        yield _shared_conn


@pytest.fixture
def fresh_url(fresh_dbname: str, pgbouncer: Bouncer) -> str:
    return _through(pgbouncer, fresh_dbname)


@pytest.fixture(scope="module")
def cache_db_url(template_dbname: str, pgbouncer: Bouncer) -> Iterator[str]:
    janitor = _clone(template_dbname)
    with janitor:
        yield _through(pgbouncer, janitor.dbname)


def test_the_adopted_tests_are_here_and_each_database_fixture_goes_through_the_bouncer(
    fresh_url: str, pgbouncer: Bouncer
) -> None:
    adopted = [name for name in globals() if name.startswith("test_")]
    assert len(adopted) > 40
    assert f"port={pgbouncer.port}" in fresh_url
    with psycopg.connect(fresh_url, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        assert row[0] != conn.info.backend_pid
