"""Least privilege: the application role reads and writes rows and can do nothing else.

``datalayer migrate`` makes an owner role own every object and grants the
application role only what the runtime needs (``datalayer/_ops/roles.py``).
The rest of the suite runs every repository call as that role (conftest), so
what it needs is shown to be enough; these tests show what it is refused, and
how migrate creates, repairs and skips the roles. Tests that create roles use
names of their own and drop them: roles are shared by every database of the
server.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import APP_ROLE, app_url, pg_url
from psycopg import sql

from datalayer import Database, DataLayerError, PermissionDenied, Settings
from datalayer._cli import main
from datalayer._ops.migrate import migrate
from datalayer._ops.partitions import add_months, ensure_partitions, month_start
from datalayer._ops.roles import excess_privileges, prepare_roles, table_privileges
from datalayer._resources import migrations_dir
from datalayer.errors import map_error

Conn = psycopg.Connection[Any]
OWNER_ROLE = Settings().owner_role
REPO = Path(__file__).resolve().parents[2]


def refused(conn: Conn, statement: sql.Composable | str) -> PermissionDenied:
    """Run ``statement`` in a savepoint; return the PermissionDenied it must raise."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info, conn.transaction():
        conn.execute(statement)  # type: ignore[arg-type]
    error = map_error(info.value)
    assert isinstance(error, PermissionDenied)
    return error


def tables(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p') ORDER BY relname"
    ).fetchall()
    return [str(r[0]) for r in rows]


def this_months(parent: str) -> str:
    return f"{parent}_{month_start(datetime.now(UTC)):%Y_%m}"


# -- what the application role is refused ----------------------------------------------------


def test_the_runtime_fixtures_connect_as_the_application_role(conn: Conn, db: Database) -> None:
    assert conn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
    with db.connection() as pooled:
        assert pooled.execute("SELECT current_user").fetchone() == (APP_ROLE,)


def test_the_application_role_is_refused_truncate_on_every_table(conn: Conn) -> None:
    names = tables(conn)
    assert {"accounts", "ledger_entries", "usage_rollup_queue", this_months("usage_events")} <= (
        set(names)
    )
    for table in names:
        error = refused(conn, sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        assert error.sqlstate == "42501"


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM ledger_entries",
        "UPDATE ledger_entries SET amount_minor = 0",
        "DELETE FROM ledger_transactions",
        "UPDATE ledger_transactions SET description = 'edited'",
        "DELETE FROM usage_events",
        "UPDATE usage_events SET quantity = 0",
        "DELETE FROM usage_event_keys",
        "DELETE FROM analytics_events",
    ],
)
def test_the_application_role_may_not_change_or_delete_ledger_or_event_rows(
    conn: Conn, statement: str
) -> None:
    refused(conn, statement)


def test_the_application_role_may_not_delete_events_through_a_partition_either(
    conn: Conn,
) -> None:
    for parent in ("usage_events", "analytics_events"):
        partition = sql.Identifier(this_months(parent))
        refused(conn, sql.SQL("DELETE FROM {}").format(partition))
        refused(conn, sql.SQL("UPDATE {} SET received_at = now()").format(partition))


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM accounts",
        "DELETE FROM invoices",
        "DELETE FROM payments",
        "DELETE FROM invoice_number_counters",
        "DELETE FROM api_key_hashes",
    ],
)
def test_the_application_role_may_not_hard_delete_rows_it_only_ever_marks(
    conn: Conn, statement: str
) -> None:
    refused(conn, statement)


@pytest.mark.parametrize(
    ("table", "trigger"),
    [
        ("ledger_entries", "ledger_entries_append_only"),
        ("ledger_transactions", "ledger_transactions_no_truncate"),
        ("usage_events", "usage_events_append_only"),
        ("plans", "plans_published_immutable"),
    ],
)
def test_the_application_role_may_not_disable_a_trigger(
    conn: Conn, table: str, trigger: str
) -> None:
    refused(
        conn,
        sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
            sql.Identifier(table), sql.Identifier(trigger)
        ),
    )
    refused(conn, sql.SQL("ALTER TABLE {} DISABLE TRIGGER ALL").format(sql.Identifier(table)))


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE probe (id bigint)",
        "CREATE SCHEMA probe",
        "DROP TABLE accounts",
        "DROP TABLE ledger_entries",
        "ALTER TABLE accounts ADD COLUMN probe text",
        "ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_amount_check",
        "CREATE INDEX probe_idx ON accounts (name)",
        "CREATE TRIGGER probe BEFORE DELETE ON accounts"
        " FOR EACH ROW EXECUTE FUNCTION refuse_change('x')",
        "CREATE OR REPLACE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NULL; END $$",
        "SELECT setval('usage_events_id_seq', 1)",
    ],
)
def test_the_application_role_may_not_change_the_schema(conn: Conn, statement: str) -> None:
    refused(conn, statement)


def test_the_application_role_owns_nothing_and_is_no_member_of_the_owner(conn: Conn) -> None:
    owned = conn.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
        " AND pg_has_role(%s, c.relowner, 'USAGE')",
        (APP_ROLE,),
    ).fetchall()
    assert owned == []
    row = conn.execute(
        "SELECT pg_has_role(%s, %s, 'MEMBER'), rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
        " FROM pg_roles WHERE rolname = %s",
        (APP_ROLE, OWNER_ROLE, APP_ROLE),
    ).fetchone()
    assert row == (False, False, False, False, False)
    conn.execute("GRANT DELETE ON ledger_entries TO PUBLIC")  # only a warning: nothing granted
    assert excess_privileges(conn, APP_ROLE) == []


def test_the_owner_role_owns_every_table_sequence_and_function(admin_conn: Conn) -> None:
    others = admin_conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace"
        " AND relkind IN ('r', 'p', 'S', 'v', 'm') AND relowner <> %s::regrole"
        " UNION ALL SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        " AND proowner <> %s::regrole",
        (OWNER_ROLE, OWNER_ROLE),
    ).fetchall()
    assert others == []


def test_the_policy_allows_appending_to_the_ledger_and_events_but_nothing_more() -> None:
    for table in ("ledger_entries", "usage_events", "usage_events_2031_07", "analytics_events"):
        assert table_privileges(table) == {"SELECT", "INSERT"}
    assert table_privileges("usage_events_2031_07", parent="usage_events") == {"SELECT", "INSERT"}
    assert table_privileges("accounts") == {"SELECT", "INSERT", "UPDATE"}
    assert table_privileges("usage_rollup_queue") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    # The global lookups: a key's hash is kept for good; a live email moves with its user.
    assert table_privileges("api_key_hashes") == {"SELECT", "INSERT", "UPDATE"}
    assert table_privileges("user_emails") == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert table_privileges("a_table_of_a_later_migration") == {
        "SELECT", "INSERT", "UPDATE", "DELETE",
    }  # fmt: skip


# -- admin URL and commands ----------------------------------------------------------------


def test_migrate_refuses_to_run_as_the_application_role_and_says_what_to_set(
    fresh_dbname: str,
) -> None:
    with pytest.raises(DataLayerError, match="DATALAYER_ADMIN_URL"):
        migrate(Settings(database_url=app_url(fresh_dbname)))
    done = subprocess.run(
        [sys.executable, "-m", "datalayer", "--database-url", app_url(fresh_dbname), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={
            k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATALAYER_ADMIN_URL")
        },
    )
    assert done.returncode == 2
    assert "application role" in done.stderr
    assert "DATALAYER_ADMIN_URL" in done.stderr


def test_admin_commands_use_the_admin_url_and_runtime_commands_the_database_url(
    fresh_url: str,
    fresh_admin_url: str,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = db.accounts.create(name="Exported")
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", fresh_url)
    monkeypatch.setenv("DATALAYER_ADMIN_URL", fresh_admin_url)
    for args in (
        ["migrate"],
        ["status"],
        ["check-sql"],
        ["partitions", "ensure", "--ahead", "4"],
        ["rollups", "refresh"],
        ["export-account", str(account.id), "--out", str(tmp_path / "a.tar.gz")],
    ):
        assert main(args) == 0, (args, capsys.readouterr().err)
    # The same admin commands, pointed at the application role, are refused.
    monkeypatch.setenv("DATALAYER_ADMIN_URL", fresh_url)
    capsys.readouterr()
    assert main(["migrate"]) == 2
    assert main(["partitions", "ensure", "--ahead", "5"]) == 2
    assert "permission denied" in capsys.readouterr().err.lower()


# -- roles of their own: creation, races, repair, the single-role setup --------------------


@pytest.fixture
def scratch() -> Iterator[Callable[..., tuple[Settings, str]]]:
    """Make databases and roles named for this test; drop them all afterwards."""
    tag = uuid.uuid4().hex[:10]
    databases: list[str] = []
    roles: list[str] = []

    def make(*, owner: str = "owner", app: str = "app", db: str = "db") -> tuple[Settings, str]:
        names = (f"dl_{db}_{tag}", f"dl_{owner}_{tag}", f"dl_{app}_{tag}")
        databases.append(names[0])
        roles.extend(names[1:])
        settings = Settings(database_url=pg_url(names[0]), owner_role=names[1], app_role=names[2])
        return settings, names[0]

    def role(name: str) -> str:
        """A LOGIN role with no other attribute, as a DBA would create one."""
        full = f"dl_{name}_{tag}"
        roles.append(full)
        with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(full)))
        return full

    make.role = role  # type: ignore[attr-defined]
    yield make
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        for name in databases:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        for name in dict.fromkeys(roles):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def role_exists(name: str) -> bool:
    with psycopg.connect(pg_url("postgres")) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() == (1,)


def as_role(url: str, role: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{**params, "user": role})


@pytest.mark.not_on_citus("on a coordinator the owner logs in (test_citus.py says why)")
def test_on_plain_postgresql_the_owner_role_cannot_log_in(template_dbname: str) -> None:
    # template_dbname: the session's template is migrated, so migrate made or kept the owner.
    with psycopg.connect(pg_url("postgres")) as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (OWNER_ROLE,)
        ).fetchone()
    assert row == (False,)  # the admin acts as it (SET ROLE); no one logs in as it


def test_migrate_creates_the_roles_and_the_application_role_can_work_but_not_truncate(
    scratch: Callable[..., tuple[Settings, str]],
) -> None:
    settings, _ = scratch()
    migrate(settings)
    assert role_exists(settings.owner_role)
    assert role_exists(settings.app_role)
    app = settings.model_copy(
        update={"database_url": as_role(settings.database_url, settings.app_role)}
    )
    with Database(app, pool_min_size=1, pool_max_size=1) as db:
        with db.unit_of_work() as uow:
            account = uow.accounts.create(name="Least")
            assert uow.connection.execute("SELECT current_user").fetchone() == (settings.app_role,)
            refused(uow.connection, "TRUNCATE accounts")
        assert db.accounts.get(account_id=account.id) == account
    with psycopg.connect(settings.database_url) as conn:
        assert excess_privileges(conn, settings.app_role) == []
    assert migrate(settings) == []  # a second run: nothing to apply, nothing to change


def test_two_migrators_creating_the_same_roles_at_once_both_succeed(
    scratch: Callable[..., tuple[Settings, str]],
) -> None:
    first, _ = scratch(db="one")
    second, _ = scratch(db="two")
    third, _ = scratch(db="three")
    for settings in (first, second, third):
        with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {}").format(
                    sql.Identifier(
                        psycopg.conninfo.conninfo_to_dict(settings.database_url)["dbname"]
                    )
                )
            )
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def prepare(settings: Settings) -> None:
        try:
            with psycopg.connect(settings.database_url, autocommit=True) as conn:
                barrier.wait()
                assert prepare_roles(conn, settings).owner == settings.owner_role
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(s,)) for s in (first, second, third)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # And two whole migrations at once, on two databases sharing the roles.
    threads = [threading.Thread(target=lambda s=s: migrate(s)) for s in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for settings in (first, second):
        with psycopg.connect(settings.database_url) as conn:
            assert excess_privileges(conn, settings.app_role) == []
            assert conn.execute("SELECT to_regclass('ledger_entries')").fetchone() != (None,)


def test_without_the_right_to_create_roles_migrate_keeps_the_single_role_setup_and_warns(
    scratch: Callable[..., tuple[Settings, str]], caplog: pytest.LogCaptureFixture
) -> None:
    settings, dbname = scratch()
    user = scratch.role("plain")  # type: ignore[attr-defined]
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(user)
            )
        )
    single = settings.model_copy(update={"database_url": as_role(settings.database_url, user)})
    with caplog.at_level(logging.WARNING, logger="datalayer"):
        applied = migrate(single)
    assert "0001_accounts_users" in applied
    assert any("may not create roles" in r.getMessage() for r in caplog.records)
    assert not role_exists(settings.owner_role)
    assert not role_exists(settings.app_role)
    with Database(single, pool_min_size=1, pool_max_size=1) as db:
        assert db.accounts.create(name="Single").name == "Single"
    with psycopg.connect(single.database_url) as conn:
        owners = conn.execute(
            "SELECT DISTINCT relowner::regrole::text FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
        ).fetchall()
    assert owners == [(user,)]

    # Later a superuser migrates: the roles appear and take over the existing objects.
    migrate(settings)
    with psycopg.connect(settings.database_url) as conn:
        owners = conn.execute(
            "SELECT DISTINCT relowner::regrole::text FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'S')"
        ).fetchall()
        assert owners == [(settings.owner_role,)]
        assert excess_privileges(conn, settings.app_role) == []


def test_the_dba_recipe_of_the_readme_works_with_an_owner_that_logs_in(
    scratch: Callable[..., tuple[Settings, str]],
) -> None:
    settings, dbname = scratch()
    owner = scratch.role("owner")  # type: ignore[attr-defined]
    app = scratch.role("app")  # type: ignore[attr-defined]
    with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(owner)
            )
        )
    admin = as_role(settings.database_url, owner)
    production = settings.model_copy(
        update={"admin_url": admin, "database_url": as_role(settings.database_url, app)}
    )
    assert "0008_billing" in migrate(production)
    with Database(production, pool_min_size=1, pool_max_size=1) as db:
        account = db.accounts.create(name="Prod")
        with db.unit_of_work() as uow:
            refused(uow.connection, "DELETE FROM ledger_entries")
        assert db.accounts.get(account_id=account.id) == account
    with psycopg.connect(admin, autocommit=True) as conn:
        # A month created later by the owner: its default privileges would allow
        # DELETE; the partition takes its parent's grants instead.
        assert len(ensure_partitions(conn, ahead=9)) == 12
        assert excess_privileges(conn, app) == []


def test_migrate_takes_back_privileges_beyond_the_policy(fresh_admin_url: str, conn: Conn) -> None:
    with psycopg.connect(fresh_admin_url, autocommit=True) as admin:
        admin.execute(f"GRANT DELETE, TRUNCATE, TRIGGER ON ledger_entries TO {APP_ROLE}")
        admin.execute("GRANT UPDATE ON usage_events TO PUBLIC")
        admin.execute(f"GRANT UPDATE ON SEQUENCE usage_events_id_seq TO {APP_ROLE}")
        assert len(excess_privileges(admin, APP_ROLE)) == 3
        migrate(Settings(database_url=fresh_admin_url))
        assert excess_privileges(admin, APP_ROLE) == []
        held = admin.execute(
            "SELECT has_table_privilege(%s, 'ledger_entries', 'INSERT'),"
            " has_sequence_privilege(%s, 'usage_events_id_seq', 'UPDATE')",
            (APP_ROLE, APP_ROLE),
        ).fetchone()
        assert held == (True, False)


def test_the_application_role_books_the_ledger_through_the_balancing_function(
    db: Database,
) -> None:
    account = db.accounts.create(name="Ledger").id
    with db.connection() as conn:
        booked = conn.execute(
            "SELECT id, jsonb_array_length(entries) FROM book_ledger_transaction("
            "%s, 'adjustment', 'fn', NULL, NULL, '', NULL, 'EUR', %s, %s)",
            [account, ["cash", "revenue"], [250, -250]],
        ).fetchone()
        assert booked is not None
        assert booked[1] == 2
        with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
            conn.execute(
                "SELECT * FROM book_ledger_transaction("
                "%s, 'adjustment', 'fn2', NULL, NULL, '', NULL, 'EUR', %s, %s)",
                [account, ["cash", "revenue"], [250, -249]],
            )


def test_a_table_of_a_later_migration_is_granted_to_the_application_role(
    fresh_dbname: str, fresh_admin_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), directory)
    (directory / "0099_journal.sql").write_text(
        "-- depends: 0011_index_review\n"
        "CREATE TABLE cache_journal (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " cache_key text NOT NULL);\n"
    )
    (directory / "0099_journal.rollback.sql").write_text("DROP TABLE cache_journal;\n")
    settings = Settings(database_url=fresh_admin_url)
    assert migrate(settings, directory=directory) == ["0099_journal"]
    with psycopg.connect(app_url(fresh_dbname), autocommit=True) as app:
        app.execute("INSERT INTO cache_journal (cache_key) VALUES ('k')")
        assert app.execute("DELETE FROM cache_journal").rowcount == 1
        refused(app, "TRUNCATE cache_journal")
        refused(app, "DROP TABLE cache_journal")
    # Created by the owner outside migrate, a table is granted by default privileges.
    with psycopg.connect(fresh_admin_url, autocommit=True) as admin:
        admin.execute(f"SET ROLE {OWNER_ROLE}")
        admin.execute("CREATE TABLE by_hand (id bigint PRIMARY KEY)")
    with psycopg.connect(app_url(fresh_dbname), autocommit=True) as app:
        app.execute("INSERT INTO by_hand VALUES (1)")
        refused(app, "TRUNCATE by_hand")


def test_a_partition_created_later_takes_its_parents_owner_and_grants(
    fresh_admin_url: str, db: Database
) -> None:
    month = add_months(month_start(datetime.now(UTC)), 7)
    done = subprocess.run(
        [sys.executable, "-m", "datalayer", "--database-url", fresh_admin_url,
         "partitions", "ensure", "--ahead", "7"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = f"usage_events_{month:%Y_%m}"
    assert f"created {name}" in done.stdout
    with psycopg.connect(fresh_admin_url) as admin:
        owner = admin.execute(
            "SELECT relowner::regrole::text FROM pg_class WHERE relname = %s", (name,)
        )
        assert owner.fetchone() == (OWNER_ROLE,)
        assert excess_privileges(admin, APP_ROLE) == []
        admin.execute(
            "INSERT INTO meters (code, name, unit, aggregation)"
            " VALUES ('api_calls', 'API calls', 'call', 'sum')"
        )
    account = db.accounts.create(name="Later")
    with db.unit_of_work() as uow:  # writes reach the new month through the parent
        uow.connection.execute(
            "INSERT INTO usage_events (account_id, meter_code, quantity, occurred_at,"
            " idempotency_key) VALUES (%s, 'api_calls', %s, %s, 'future')",
            (account.id, Decimal(1), month),
        )
        assert uow.connection.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name))
        ).fetchone() == (1,)
        refused(uow.connection, sql.SQL("DELETE FROM {}").format(sql.Identifier(name)))


def test_a_restored_backup_gets_the_roles_grants_afresh(
    fresh_admin_url: str, db: Database, tmp_path: Path
) -> None:
    account = db.accounts.create(name="Backed up")
    target = f"dl_restored_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DATALAYER_ADMIN_URL")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "datalayer", "--database-url", fresh_admin_url, *args],
            capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
        )  # fmt: skip

    try:
        made = run("backup", "--out", str(tmp_path))
        assert made.returncode == 0, made.stderr
        dump = next(tmp_path.glob("*.dump"))
        restored = run("restore", str(dump), "--into", target)
        assert restored.returncode == 0, restored.stderr
        assert f"{OWNER_ROLE} owns every object" in restored.stdout
        with Database(Settings(database_url=app_url(target)), pool_min_size=1) as copy:
            assert copy.accounts.get(account_id=account.id) == account
        with psycopg.connect(pg_url(target)) as conn:
            assert excess_privileges(conn, APP_ROLE) == []
    finally:
        with psycopg.connect(pg_url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target))
            )


def test_a_unit_of_work_refused_a_privilege_raises_permission_denied(db: Database) -> None:
    with pytest.raises(PermissionDenied) as info, db.unit_of_work() as uow:
        uow.connection.execute("TRUNCATE usage_rollup_queue")  # the block's errors are mapped
    assert info.value.sqlstate == "42501"


def test_migrate_warns_when_the_application_would_connect_as_a_role_that_can_change_the_schema(
    fresh_dbname: str,
    fresh_admin_url: str,
    fresh_url: str,
    scratch: Callable[..., tuple[Settings, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stranger = scratch.role("stranger")  # type: ignore[attr-defined]

    def warnings(database_url: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="datalayer"):
            migrate(Settings(database_url=database_url, admin_url=fresh_admin_url))
        return [r.getMessage() for r in caplog.records if r.name == "datalayer"]

    assert warnings(fresh_url) == []
    [superuser] = warnings(fresh_admin_url)  # one URL for everything, as before the roles
    assert "can change the schema" in superuser
    [ungranted] = warnings(as_role(fresh_url, stranger))
    assert f"GRANT {APP_ROLE} TO {stranger}" in ungranted
