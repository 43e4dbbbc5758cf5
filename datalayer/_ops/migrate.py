"""Migrations through yoyo's Python API: create the database, apply, roll back, report."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from .._conninfo import conninfo_params, with_dbname
from .._resources import migrations_dir
from .._settings import Settings
from ..errors import DataLayerError, map_error
from .citus import distribute, has_citus
from .partitions import PARTITIONED_TABLES, ensure_partitions
from .roles import (
    acting_owner,
    admin_url,
    application_user_problem,
    apply_grants,
    connect_admin,
    hand_to_owner,
    prepare_roles,
    set_session_defaults,
)

__all__ = [
    "MigrationStatus",
    "ensure_database",
    "migrate",
    "rollback",
    "schema_version",
    "status",
]

log = logging.getLogger("datalayer")

# pg_advisory_lock key held (on its own connection) while migrating: a session
# lock, so a migrator that dies releases it, unlike yoyo's lock table row.
_MIGRATE_LOCK_KEY = 0x6461_7461_6C61_7972  # "datalayr"


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """One migration and whether it is applied to the database."""

    id: str
    applied: bool


def _yoyo_url(settings: Settings, *, role: str | None = None) -> str:
    """A ``postgresql+psycopg://`` URL (yoyo 9 picks psycopg2 for ``postgresql://``).

    With ``role``, the session runs as that role from its start (``-c role=``),
    so everything the migrations create belongs to it.
    """
    params = conninfo_params(admin_url(settings))
    if role:  # a validated plain identifier (Settings.owner_role)
        params["options"] = f"{params.get('options', '')} -c role={role}".strip()
    user = quote(params.pop("user", ""), safe="")
    password = params.pop("password", None)
    host = params.pop("host", "")
    if host.startswith("/"):  # a Unix socket directory travels as a query argument
        params["host"] = host
        host = ""
    port = params.pop("port", None)
    dbname = quote(params.pop("dbname", ""), safe="")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    netloc = f"{auth}{host}{':' + port if port else ''}"
    query = f"?{urlencode(params)}" if params else ""
    return f"postgresql+psycopg://{netloc}/{dbname}{query}"


def ensure_database(settings: Settings) -> bool:
    """Create the target database when it does not exist; return whether it was created.

    Safe when several processes race: losing the race to create is not an error.
    """
    url = admin_url(settings)
    params = conninfo_params(url)
    dbname = params.get("dbname") or params.get("user") or "postgres"
    try:
        with psycopg.connect(url, connect_timeout=settings.connect_timeout):
            return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise map_error(exc) from exc
    try:
        with psycopg.connect(with_dbname(url, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
        return False  # another process created it first
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    log.info("created database %s", dbname)
    return True


@contextmanager
def _locked(settings: Settings, timeout_s: float) -> Iterator[psycopg.Connection[Any]]:
    """Hold the migration advisory lock (a session lock, released if we die); yield its connection.

    It is polled with pg_try_advisory_lock rather than waited for: a waiting
    statement would hold a snapshot, and a migration running CREATE INDEX
    CONCURRENTLY in the other process waits for every such snapshot, so the
    two would wait on each other.
    """
    with connect_admin(settings) as conn:  # a pooler would share the lock: refused
        deadline = time.monotonic() + timeout_s
        while True:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,)).fetchone()
            if row and row[0]:
                break
            if time.monotonic() > deadline:
                raise DataLayerError(
                    f"another process has been migrating this database for over {timeout_s}s"
                )
            time.sleep(0.2)
        try:
            yield conn
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))


def _backend_and_migrations(
    settings: Settings, directory: Path | None, *, role: str | None = None
) -> tuple[Any, Any]:
    backend = get_backend(_yoyo_url(settings, role=role))
    migrations = read_migrations(str(directory or migrations_dir()))
    return backend, migrations


def migrate(
    settings: Settings,
    *,
    directory: Path | None = None,
    lock_timeout_s: float = 300.0,
    ensure_ahead: int | None = 3,
) -> list[str]:
    """Create the database if missing, apply every pending migration, then ensure partitions.

    Connects with ``admin_url(settings)``. Returns the ids applied (empty when
    up to date). Concurrent callers serialise on an advisory lock; the second
    finds nothing left to do. Each migration runs in its own transaction
    unless it says ``-- transactional: false``; a failing one is rolled back
    and raised. Afterwards the event tables get partitions from last month
    through ``ensure_ahead`` months ahead (``None`` skips this step).

    Roles (README: Security model): missing ``owner_role`` and ``app_role``
    are created when the admin may create roles, the migrations run as the
    owner, the owner is given every object, and the application role gets
    exactly the grants of the policy in ``_ops/roles.py``, on every run. When
    the roles are missing and cannot be created, all of this is skipped with
    a warning and the single-role setup works as before. It also warns when
    ``database_url`` logs in as a role that could change the schema (the
    admin's, say) or lacks the application role's grants. Raises
    ``DataLayerError`` when the admin URL connects as the application role.
    """
    ensure_database(settings)
    with _locked(settings, lock_timeout_s) as conn:
        roles = prepare_roles(conn, settings)
        if roles.skipped:
            log.warning("least privilege skipped: %s", roles.skipped)
        else:
            assert roles.owner is not None
            hand_to_owner(conn, roles.owner)  # so that migrations running as it may alter
        backend, migrations = _backend_and_migrations(settings, directory, role=roles.set_role)
        try:
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        finally:
            backend.connection.close()
        if ensure_ahead is not None and _has_partitioned_tables(conn):
            ensure_partitions(conn, ahead=ensure_ahead)
        if has_citus(conn):  # a Citus coordinator: lay the schema out on the cluster
            distribute(conn, role=roles.set_role, shard_count=settings.citus_shard_count)
        if roles.owner is not None:
            hand_to_owner(conn, roles.owner)
            apply_grants(conn, roles)
            if roles.app:  # what holds behind PgBouncer, which drops startup options
                set_session_defaults(conn, roles.app, settings)
            problem = application_user_problem(conn, roles, settings.database_url)
            if problem:
                log.warning("%s", problem)
    applied = [m.id for m in pending]
    for migration_id in applied:
        log.info("applied migration %s", migration_id)
    return applied


def _has_partitioned_tables(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) = %s FROM pg_class WHERE relname = ANY(%s) AND relkind = 'p'",
        (len(PARTITIONED_TABLES), list(PARTITIONED_TABLES)),
    ).fetchone()
    return bool(row and row[0])


def rollback(
    settings: Settings,
    *,
    count: int | None = 1,
    directory: Path | None = None,
    lock_timeout_s: float = 300.0,
) -> list[str]:
    """Roll back the last ``count`` applied migrations (all when ``None``), newest first.

    Returns the ids rolled back. Runs as the owner role when it exists and the
    admin may act as it.
    """
    with _locked(settings, lock_timeout_s) as conn:
        role = acting_owner(conn, settings)
        backend, migrations = _backend_and_migrations(settings, directory, role=role)
        try:
            applied = backend.to_rollback(migrations)
            chosen = applied if count is None else applied[:count]
            backend.rollback_migrations(chosen)
        finally:
            backend.connection.close()
    return [m.id for m in chosen]


def status(settings: Settings, *, directory: Path | None = None) -> list[MigrationStatus]:
    """Every known migration in apply order, with whether it is applied."""
    backend, migrations = _backend_and_migrations(settings, directory)
    try:
        applied = set(backend.get_applied_migration_hashes())
        return [MigrationStatus(m.id, m.hash in applied) for m in migrations]
    finally:
        backend.connection.close()


def schema_version(conn: psycopg.Connection[Any]) -> str | None:
    """The id of the latest applied yoyo migration (``None`` on an unmigrated database)."""
    if conn.execute("SELECT to_regclass('public._yoyo_migration')").fetchone() == (None,):
        return None
    row = conn.execute(
        "SELECT migration_id FROM _yoyo_migration"
        " ORDER BY applied_at_utc DESC, migration_id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else str(row[0])
