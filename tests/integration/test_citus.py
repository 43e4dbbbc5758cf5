"""On a Citus coordinator: ``datalayer migrate`` and the harness that clones databases.

These tests need the coordinator (``citus_cluster``), so they run in the Citus session
(``make test-citus``; ``tests/citus_servers.py``) and a plain session skips them.

Migrations run as the owner role (``SET ROLE``), and Citus propagates DDL to the workers
over connections it opens as ``current_user``: the owner must be able to log in there
(``datalayer/_ops/roles.py``). The harness's fresh databases are same-name clones on every
node; the last test shows they form a cluster of their own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from citus_servers import BASE_DB, CitusCluster
from psycopg import sql

from datalayer import Database, Settings
from datalayer._ops.migrate import migrate

pytestmark = pytest.mark.requires_parts("citus")

Conn = psycopg.Connection[Any]


def on_each_node(cluster: CitusCluster, query: str, params: Any = None) -> list[Any]:
    """``query``'s first row on every node, coordinator first."""
    rows = []
    for port in cluster.ports:
        with psycopg.connect(cluster.url(port=port), autocommit=True) as conn:
            rows.append(conn.execute(query, params).fetchone())
    return rows


@pytest.fixture
def scratch(citus_cluster: CitusCluster) -> Iterator[Callable[[], tuple[Settings, str]]]:
    """A Citus database (workers registered) and role names of this test's; dropped after."""
    tag = uuid.uuid4().hex[:10]
    made: list[str] = []

    def make() -> tuple[Settings, str]:
        name = f"dl_citus_{tag}"
        citus_cluster.clone(name, BASE_DB)
        made.append(name)
        settings = Settings(
            database_url=citus_cluster.url(name),
            owner_role=f"dl_owner_{tag}",
            app_role=f"dl_app_{tag}",
        )
        return settings, name

    yield make
    for name in made:
        citus_cluster.drop(name)
    # Every node, each for itself: Citus propagates role commands only from a database
    # with the extension, and the scratch database is gone.
    drop = sql.SQL("DROP ROLE IF EXISTS {}, {}").format(
        sql.Identifier(f"dl_app_{tag}"), sql.Identifier(f"dl_owner_{tag}")
    )
    citus_cluster.on_every_node(lambda conn: conn.execute(drop) and None)


def test_the_sessions_template_was_migrated_by_an_owner_that_logs_in_on_every_node(
    citus_cluster: CitusCluster, template_dbname: str
) -> None:
    owner = Settings().owner_role
    query = "SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = %s"
    assert on_each_node(citus_cluster, query, (owner,)) == [(True, False)] * 3
    with psycopg.connect(citus_cluster.url(user=owner)) as conn:  # trust: no password here
        assert conn.execute("SELECT current_user").fetchone() == (owner,)


@pytest.mark.first  # migrates from nothing on three nodes (~15 s): overlapping the rest
def test_migrate_on_a_coordinator_lets_an_existing_nologin_owner_log_in_and_says_so(
    citus_cluster: CitusCluster,
    scratch: Callable[[], tuple[Settings, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings, dbname = scratch()
    owner, app = settings.owner_role, settings.app_role
    # From the Citus database: Citus propagates CREATE ROLE only from a database with the
    # extension (the postgres database has none).
    with psycopg.connect(citus_cluster.url(dbname), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
    login = "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s"
    assert on_each_node(citus_cluster, login, (owner,)) == [(False,)] * 3  # propagated

    with caplog.at_level(logging.INFO, logger="datalayer"):
        applied = migrate(settings)

    assert "0001_accounts_users" in applied
    assert any(r.getMessage().startswith(f"altered role {owner} LOGIN") for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert on_each_node(citus_cluster, login, (owner,)) == [(True,)] * 3
    assert on_each_node(citus_cluster, login, (app,)) == [(True,)] * 3
    app_settings = Settings(database_url=citus_cluster.url(dbname, user=app))
    with Database(app_settings, pool_min_size=1, pool_max_size=1) as db:
        account = db.accounts.create(name="On Citus")
        assert db.accounts.get(account_id=account.id) == account
    with caplog.at_level(logging.INFO, logger="datalayer"):
        caplog.clear()
        assert migrate(settings) == []  # a second run changes nothing, the role included
    assert not any("altered role" in r.getMessage() for r in caplog.records)


def test_same_name_clones_on_every_node_form_a_cluster_of_their_own(
    citus_cluster: CitusCluster, fresh_admin_url: str, fresh_dbname: str, shared_dbname: str
) -> None:
    with psycopg.connect(fresh_admin_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE harness_probe (account_id bigint NOT NULL, n int NOT NULL)")
        conn.execute("SELECT create_distributed_table('harness_probe', 'account_id')")
        conn.execute("INSERT INTO harness_probe SELECT g, g FROM generate_series(1, 200) g")
        placed = conn.execute(
            "SELECT nodeport, count(*) FROM citus_shards"
            " WHERE table_name = 'harness_probe'::regclass GROUP BY nodeport ORDER BY nodeport"
        ).fetchall()
        assert [port for port, _ in placed] == list(citus_cluster.workers)
        assert conn.execute("SELECT count(*), sum(n) FROM harness_probe").fetchone() == (
            200,
            20100,
        )
        routed = conn.execute("EXPLAIN SELECT n FROM harness_probe WHERE account_id = 7")
        assert "Task Count: 1" in "\n".join(str(r[0]) for r in routed.fetchall())
    # The rows live in shard tables of the same-name database on the workers.
    stored = 0
    for port in citus_cluster.workers:
        url = citus_cluster.url(fresh_dbname, port=port)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET citus.override_table_visibility = false")  # shards are hidden
            shards = conn.execute(
                "SELECT relname FROM pg_class WHERE relname ~ '^harness_probe_[0-9]+$'"
                " AND relkind = 'r'"
            ).fetchall()
            assert shards, f"no shard of harness_probe on the worker at {port}"
            for (shard,) in shards:
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(shard))
                row = conn.execute(query).fetchone()
                stored += int(row[0]) if row else 0
    assert stored == 200
    # Another clone of the same template has none of it.
    with psycopg.connect(citus_cluster.url(shared_dbname), autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('harness_probe')").fetchone() == (None,)
