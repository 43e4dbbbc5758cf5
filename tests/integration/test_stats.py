"""``datalayer stats``: pg_stat_statements by named query, on a server of the tests' own that
preloads the extension (the shared test server does not), and its refusal where it is absent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import APP_ROLE, pg_url
from scaleout_servers import Cluster, destroy, make_primary, worker_number

from datalayer import Database, Settings
from datalayer._cli import main
from datalayer._ops.migrate import migrate
from datalayer._ops.stats import collect_stats, query_ids
from datalayer.repositories import REPOSITORIES

# Needs a part a bare machine may lack: skipped there, a failure under CI (tests/servers.py).
pytestmark = pytest.mark.requires_parts("replica")

STATS_PORT_BASE = 55460  # + the xdist worker number


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    server = make_primary(
        STATS_PORT_BASE + worker_number(),
        extra="shared_preload_libraries = 'pg_stat_statements'\ncompute_query_id = on",
    )
    try:
        server.start()
        migrate(Settings(database_url=server.url("datalayer")))
        with psycopg.connect(server.url("datalayer"), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
        yield server
    finally:
        destroy(server)


def reset(server: Cluster) -> None:
    with psycopg.connect(server.url("datalayer"), autocommit=True) as conn:
        conn.execute("SELECT pg_stat_statements_reset()")


def cli(server: Cluster, *args: str) -> int:
    return main(
        ["--database-url", server.url("datalayer", user=APP_ROLE),
         "--admin-url", server.url("datalayer"), "stats", *args]
    )  # fmt: skip


def test_every_preparable_named_query_is_mapped_to_its_query_id(cluster: Cluster) -> None:
    with psycopg.connect(cluster.url("datalayer"), autocommit=True) as conn:
        ids = query_ids(conn, REPOSITORIES)
    named = {
        f"{ref.query.aggregate}.{ref.query.name}"
        for repo in REPOSITORIES
        for ref in repo.query_refs.values()
        if ref.query is not None
    }
    utility = {n for n in named if n not in ids}
    assert utility == {
        "analytics.copy_analytics_staging", "analytics.create_analytics_staging",
        "analytics.drop_analytics_staging", "usage.copy_usage_event_keys",
        "usage.copy_usage_events", "usage.copy_usage_staging", "usage.create_usage_staging",
        "usage.drop_usage_staging",
    }  # fmt: skip
    assert len(set(ids.values())) == len(ids)  # no two queries share an id


def test_calls_are_counted_per_named_query_whatever_types_the_parameters_were_sent_as(
    cluster: Cluster,
) -> None:
    reset(cluster)
    settings = Settings(database_url=cluster.url("datalayer", user=APP_ROLE), pool_min_size=1)
    with Database(settings) as db:
        small = db.accounts.create(name="Small")
        for _ in range(7):  # past the prepare threshold (5): prepared and unprepared calls
            db.accounts.get(account_id=small.id)
        db.accounts.get(account_id=2**40)  # an int8 parameter where the others were int2
    with psycopg.connect(cluster.url("datalayer"), autocommit=True) as conn:
        stats = {s.name: s for s in collect_stats(conn, REPOSITORIES)}
    assert stats["accounts.get_account"].calls == 8
    assert stats["accounts.get_account"].rows == 7
    assert stats["accounts.create_account"].calls == 1
    assert stats["accounts.get_account"].shared_blks_hit > 0
    assert stats["users.create_user"].calls == 0


def test_the_command_prints_saves_and_compares_against_a_baseline(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reset(cluster)
    settings = Settings(database_url=cluster.url("datalayer", user=APP_ROLE), pool_min_size=1)
    with Database(settings) as db:
        account = db.accounts.create(name="Baseline")
        for _ in range(3):
            db.accounts.get(account_id=account.id)
        baseline = tmp_path / "baseline.json"
        assert cli(cluster, "--save", str(baseline)) == 0
        out = capsys.readouterr().out
        [line] = [line for line in out.splitlines() if line.startswith("accounts.get_account ")]
        assert line.split()[1] == "3"
        saved = {q["name"]: q for q in json.loads(baseline.read_text())["queries"]}
        assert saved["accounts.get_account"]["calls"] == 3
        for _ in range(4):
            db.accounts.get(account_id=account.id)
    assert cli(cluster, "--compare", str(baseline)) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("accounts.get_account ")]
    assert line.split()[1] == "4"  # calls since the baseline
    assert not any(line.startswith("accounts.create_account ") for line in out.splitlines())


def test_without_the_extension_the_command_says_what_to_set_up(
    shared_dbname: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--database-url", pg_url(shared_dbname), "stats"])
    assert code == 2
    err = capsys.readouterr().err
    assert "shared_preload_libraries = 'pg_stat_statements'" in err
    assert "CREATE EXTENSION pg_stat_statements" in err


def test_a_baseline_that_is_not_one_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    code = main(["--database-url", "postgresql://postgres@127.0.0.1:1/x", "stats", "--compare",
                 str(bogus)])  # fmt: skip
    assert code == 2
    assert "not a stats baseline" in capsys.readouterr().err
