"""Least privilege: one role owns every object; the application's does only what the runtime needs.

``datalayer migrate`` runs ``prepare_roles`` before the migrations (create the
roles when missing and allowed, let the admin act as the owner, hand the owner
every object) and ``apply_grants`` after them (the policy below, idempotent:
a table the policy tightens loses what it no longer needs). Admin code gets
its URL from ``admin_url`` and nowhere else.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from .._conninfo import conninfo_params, redact
from .._pooler import refuse_pooler
from .._settings import Settings
from ..errors import DataLayerError, map_error
from .citus import has_citus
from .partitions import PARTITIONED_TABLES

__all__ = [
    "Roles",
    "acting_owner",
    "admin_url",
    "application_user_problem",
    "apply_grants",
    "apply_roles",
    "connect_admin",
    "excess_privileges",
    "hand_to_owner",
    "prepare_roles",
    "session_defaults",
    "set_session_defaults",
    "table_privileges",
]

log = logging.getLogger("datalayer")

SCHEMA = "public"

# The grants policy: what the application role may do to each table. A
# partition (attached, or detached and awaiting its archive) follows its parent.
# Facts: written once, removed only by `datalayer archive` (admin) with their month.
APPEND_ONLY = frozenset(
    {
        "ledger_transactions",
        "ledger_entries",
        "usage_events",
        "usage_event_keys",
        "analytics_events",
        "usage_cancellations",
        "credit_notes",
        "credit_applications",
    }
)
# Rows the application never removes: deletion is a status or a timestamp.
# (invoice_lines is not here: a draft's lines are deleted and made again. Nor is
# user_emails, the lookup of live users' emails: soft-deleting a user or changing
# its email deletes its row, so it is read-write. api_key_hashes keeps the hash of
# every key, revoked and expired ones too.)
KEPT = frozenset(
    {
        "accounts", "users", "meters", "plans", "plan_meters", "subscriptions",
        "quota_counters", "quota_reservations", "files", "api_keys", "api_key_hashes",
        "invoice_number_counters", "invoices", "payments", "billing_periods",
        "pending_invoice_items", "credit_grants", "refunds",
    }
)  # fmt: skip
# yoyo's bookkeeping: readable (export and backups record the schema version); and the
# maintenance worker's, which it writes with the admin URL: readable for db.health().
BOOKKEEPING = frozenset(
    {
        "_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock",
        "maintenance_jobs", "maintenance_runs",
    }
)  # fmt: skip
# Everything else (work queues, derived rollups, and the tables of later
# migrations, which the owner's default privileges grant as they are created).
READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGES = ("SELECT", "USAGE")  # nextval, never setval (UPDATE)
_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")

_PARTITION_NAME = re.compile(r"^(?P<parent>[a-z_]+)_\d{4}_\d{2}$")


def table_privileges(table: str, *, parent: str | None = None) -> frozenset[str]:
    """What the application role may do to ``table`` (a partition: to its ``parent``)."""
    name = parent or table
    match = _PARTITION_NAME.match(name)
    if parent is None and match and match.group("parent") in PARTITIONED_TABLES:
        name = match.group("parent")  # a detached partition awaiting its archive
    if name in APPEND_ONLY:
        return frozenset({"SELECT", "INSERT"})
    if name in KEPT:
        return frozenset({"SELECT", "INSERT", "UPDATE"})
    if name in BOOKKEEPING:
        return frozenset({"SELECT"})
    return frozenset(READ_WRITE)


def admin_url(settings: Settings) -> str:
    """The URL every admin command connects with: ``DATALAYER_ADMIN_URL``, else ``DATABASE_URL``.

    The one place admin code finds its URL. It must reach PostgreSQL directly
    (not through PgBouncer in transaction mode): migrations take session
    advisory locks and run as the owner role for the whole session.
    """
    return settings.admin_url or settings.database_url


def connect_admin(
    settings: Settings, *, url: str | None = None, autocommit: bool = True
) -> psycopg.Connection[Any]:
    """A direct connection for an admin command, to ``url`` (default ``admin_url(settings)``).

    Prepares statements as ``settings.prepare_threshold`` says. Raises
    ``DataLayerError`` when the URL reaches PostgreSQL through a connection
    pooler (PgBouncer): admin commands keep session state (advisory locks,
    ``SET``, prepared statements) that a transaction pooler would hand to other
    clients, so they need a direct URL (``DATALAYER_ADMIN_URL``).
    """
    target = url or admin_url(settings)
    conn = psycopg.connect(
        target,
        autocommit=autocommit,
        prepare_threshold=settings.prepare_threshold,
        connect_timeout=settings.connect_timeout,
    )
    try:
        refuse_pooler(conn, f"the admin URL {redact(target)}")
    except BaseException:
        conn.close()
        raise
    return conn


@dataclass(frozen=True, slots=True)
class Roles:
    """The roles in use on a database, as ``prepare_roles`` found or made them.

    ``owner`` is ``None`` when roles are not in use (the single-role setup):
    ``skipped`` then says why.
    """

    user: str  # who the admin connection logs in as
    owner: str | None
    app: str | None
    created: tuple[str, ...] = ()
    skipped: str | None = None

    @property
    def set_role(self) -> str | None:
        """The role to switch to for schema changes (``None``: the admin is the owner)."""
        return self.owner if self.owner and self.owner != self.user else None


_ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"


def _one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _can_act_as(conn: psycopg.Connection[Any], role: str) -> bool:
    option = "SET" if conn.info.server_version >= 160000 else "MEMBER"
    return bool(_one(conn, "SELECT pg_has_role(current_user, %s, %s)", (role, option)))


def _owner_logs_in(conn: psycopg.Connection[Any], owner: str) -> None:
    """On Citus, let an existing NOLOGIN ``owner`` log in (see ``prepare_roles``)."""
    if _one(conn, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (owner,)) is not False:
        return
    try:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(sql.Identifier(owner)))
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DataLayerError(
            f"cannot ALTER ROLE {owner} LOGIN: {exc.diag.message_primary}; on Citus the owner "
            "must be able to log in (the coordinator connects to the workers as it): a superuser "
            "must run it once"
        ) from None
    log.info("altered role %s LOGIN: on Citus the coordinator connects to the workers as it", owner)


def _create_role(conn: psycopg.Connection[Any], role: str, *, login: bool) -> bool:
    """Create ``role`` unless it exists; losing a race to another migrator is not an error."""
    if _one(conn, _ROLE_EXISTS, (role,)):
        return False
    statement = sql.SQL("CREATE ROLE {} {}").format(
        sql.Identifier(role), sql.SQL("LOGIN" if login else "NOLOGIN")
    )
    try:
        conn.execute(statement)
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        return False  # created by a concurrent migrate (roles are cluster-wide)
    log.info("created role %s (%s)", role, "LOGIN" if login else "NOLOGIN")
    return True


def _act_as_owner(conn: psycopg.Connection[Any], user: str, owner: str, createrole: bool) -> bool:
    """Whether ``user`` can act as ``owner``, granting itself the membership if it may."""
    if user == owner or _can_act_as(conn, owner):
        return True
    if not createrole:
        return False
    try:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), sql.Identifier(user)))
    except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject):
        pass  # granted by a concurrent migrate
    except psycopg.errors.InsufficientPrivilege:
        return False
    return _can_act_as(conn, owner)


def prepare_roles(conn: psycopg.Connection[Any], settings: Settings) -> Roles:
    """Create missing roles, let the admin act as the owner, give the owner the schema.

    ``conn`` is the admin's autocommit connection. When the roles are missing
    and the admin may not create them, or it cannot act as the owner, nothing
    changes and the result says why (the single-role setup keeps working).
    Raises ``DataLayerError`` when the admin connects as the application role,
    or the application role could change the schema (a superuser, or a member
    of the owner role).
    """
    owner, app = settings.owner_role, settings.app_role
    row = conn.execute(
        "SELECT current_user, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert row is not None
    user, superuser, createrole = str(row[0]), bool(row[1]), bool(row[2])
    if user == app:
        raise DataLayerError(
            f"the admin URL connects as {app}, the application role, which may not change "
            "the schema: set DATALAYER_ADMIN_URL to the owner's or a superuser's URL"
        )
    missing = [r for r in (owner, app) if not _one(conn, _ROLE_EXISTS, (r,))]
    if missing and not (superuser or createrole):
        return Roles(
            user, None, None,
            skipped=f"role(s) {', '.join(missing)} do not exist and {user} may not create "
            f"roles: every object stays owned by {user} and no grants were made",
        )  # fmt: skip
    # The app logs in; the owner does not (the admin acts as it with SET ROLE), except on
    # Citus: the coordinator propagates DDL to the workers over connections it opens as
    # current_user, which during a migration is the owner, so the owner must be allowed to log
    # in. No password is set, so password authentication still refuses it; only what
    # pg_hba.conf trusts (the nodes' own connections, configured by the operator) gets in.
    citus = has_citus(conn)
    created = tuple(r for r in missing if _create_role(conn, r, login=r == app or citus))
    if not _act_as_owner(conn, user, owner, superuser or createrole):
        return Roles(
            user, None, None, created,
            skipped=f"{user} cannot act as {owner} (GRANT {owner} TO {user}): "
            "objects keep their owners and no grants were made",
        )  # fmt: skip
    if citus:
        _owner_logs_in(conn, owner)
    _check_app_role(conn, owner, app)
    _schema_and_database(conn, owner, app)
    return Roles(user, owner, app, created)


def acting_owner(conn: psycopg.Connection[Any], settings: Settings) -> str | None:
    """The owner role to switch to for schema changes, when it exists and the admin may.

    Never creates anything (for ``rollback``); ``None`` when the admin is the
    owner already or roles are not in use.
    """
    owner = settings.owner_role
    user = str(_one(conn, "SELECT current_user"))
    if user == owner or not _one(conn, _ROLE_EXISTS, (owner,)):
        return None
    return owner if _can_act_as(conn, owner) else None


def _check_app_role(conn: psycopg.Connection[Any], owner: str, app: str) -> None:
    row = conn.execute(
        "SELECT rolsuper, pg_has_role(rolname, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s",
        (owner, app),
    ).fetchone()
    if row and row[0]:
        raise DataLayerError(f"the application role {app} is a superuser: it bypasses every grant")
    if row and row[1]:
        raise DataLayerError(
            f"the application role {app} is a member of {owner} and could alter or drop every "
            f"table: REVOKE {owner} FROM {app}"
        )


def _schema_and_database(conn: psycopg.Connection[Any], owner: str, app: str) -> None:
    """The owner may create in the schema; the app may use it, connect and make temp tables."""
    schema, database = sql.Identifier(SCHEMA), sql.Identifier(str(conn.info.dbname))
    steps: list[tuple[str, tuple[Any, ...], sql.Composed]] = [
        (
            "SELECT has_schema_privilege(%s, %s, 'CREATE')",
            (owner, SCHEMA),
            sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(schema, sql.Identifier(owner)),
        ),
        (
            "SELECT has_schema_privilege(%s, %s, 'USAGE')",
            (app, SCHEMA),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, sql.Identifier(app)),
        ),
        (
            # Staging tables of batch ingestion are TEMP tables.
            "SELECT has_database_privilege(%s, current_database(), 'CONNECT')"
            " AND has_database_privilege(%s, current_database(), 'TEMPORARY')",
            (app, app),
            sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(
                database, sql.Identifier(app)
            ),
        ),
    ]
    for check, params, grant in steps:
        if _one(conn, check, params):
            continue
        try:
            conn.execute(grant)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DataLayerError(
                f"cannot {grant.as_string(conn)}: {exc.diag.message_primary}; "
                "a superuser or the database owner must run it once"
            ) from None
        log.info("%s", grant.as_string(conn))
    # Before PostgreSQL 15 every role may create in `public`; 15 revoked that.
    public_creates = _one(
        conn,
        "SELECT EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a"
        " WHERE n.nspname = %s AND a.grantee = 0 AND a.privilege_type = 'CREATE')",
        (SCHEMA,),
    )
    if public_creates:
        try:
            conn.execute(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(schema))
            log.info("revoked CREATE on schema %s from PUBLIC (as PostgreSQL 15 does)", SCHEMA)
        except psycopg.errors.InsufficientPrivilege:
            log.warning(
                "every role may create tables in schema %s, the application role too:"
                " REVOKE CREATE ON SCHEMA %s FROM PUBLIC",
                SCHEMA,
                SCHEMA,
            )


# Objects of the schema not owned by the owner: what ALTER … OWNER TO needs.
# Sequences tied to a column, indexes and partitions' row types follow their table.
_NOT_OWNED = """
SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                      WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                      ELSE 'TABLE' END, c.relname, NULL
FROM pg_class c
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND c.relowner <> %(owner)s::regrole
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
UNION ALL
SELECT 'ROUTINE', p.proname, p.oid::regprocedure::text
FROM pg_proc p
WHERE p.pronamespace = %(schema)s::regnamespace AND p.proowner <> %(owner)s::regrole
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'TYPE', t.typname, NULL
FROM pg_type t
WHERE t.typnamespace = %(schema)s::regnamespace AND t.typowner <> %(owner)s::regrole
  AND (t.typtype IN ('d', 'e', 'r')
       OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


def hand_to_owner(conn: psycopg.Connection[Any], owner: str) -> list[str]:
    """Make ``owner`` own every table, sequence, view, routine and type of the schema.

    Returns what changed hands (nothing when it owns them all already). Each
    change waits at most 10 s for its lock. Raises ``DataLayerError`` when the
    admin may not give an object away (neither a superuser nor its owner).
    """
    moved = []
    for kind, name, signature in conn.execute(
        _NOT_OWNED, {"schema": SCHEMA, "owner": owner}
    ).fetchall():
        # A routine is named by regprocedure's text: the server's own quoted rendering.
        target = sql.SQL(signature) if signature else sql.Identifier(SCHEMA, name)
        statement = sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(kind), target, sql.Identifier(owner)
        )
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '10s'")
                conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise DataLayerError(
                f"cannot give {kind.lower()} {name} to {owner}: {exc.diag.message_primary}"
            ) from None
        except psycopg.Error as exc:
            raise map_error(exc) from exc
        moved.append(f"{kind.lower()} {name}")
    if moved:
        log.info("%s now owns %s", owner, ", ".join(moved))
    return moved


# Every table and sequence of the schema with its root parent (partitions) and
# what the application role holds on it directly, and what PUBLIC holds.
_HELD = """
SELECT c.relname, c.relkind,
       CASE WHEN c.relispartition THEN
           (SELECT r.relname FROM pg_class r WHERE r.oid = pg_partition_root(c.oid)) END,
       coalesce(array(SELECT a.privilege_type FROM aclexplode(c.relacl) a
                      WHERE a.grantee = %(app)s::regrole), '{}'),
       coalesce(array(SELECT a.privilege_type FROM aclexplode(c.relacl) a
                      WHERE a.grantee = 0), '{}')
FROM pg_class c
WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
ORDER BY c.relname
"""


def _wanted(name: str, kind: str, parent: str | None) -> frozenset[str]:
    if kind == "S":
        return frozenset(SEQUENCE_PRIVILEGES)
    if kind in ("v", "m"):
        return frozenset({"SELECT"})
    return table_privileges(name, parent=parent)


def _privileges(names: Iterable[str]) -> sql.Composable:
    known = set(_TABLE_PRIVILEGES) | {"USAGE", "MAINTAIN"}
    return sql.SQL(", ").join(sql.SQL(p) for p in sorted(names) if p in known)


def apply_grants(conn: psycopg.Connection[Any], roles: Roles) -> list[str]:
    """Grant the application role exactly what the policy says, table by table; idempotent.

    Also sets the owner's default privileges, so that a table a later
    migration creates is readable and writable at once (and tightened by the
    policy at the end of that migrate), and revokes anything granted to PUBLIC
    on the schema's tables. Returns the changes made. ``conn`` is the admin's.
    """
    if roles.owner is None or roles.app is None:
        return []
    owner, app = sql.Identifier(roles.owner), sql.Identifier(roles.app)
    schema = sql.Identifier(SCHEMA)
    conn.execute(
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {}"
            " GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(owner, schema, app)
    )
    conn.execute(
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {}"
            " GRANT USAGE, SELECT ON SEQUENCES TO {}"
        ).format(owner, schema, app)
    )
    changes: list[str] = []
    rows = conn.execute(_HELD, {"app": roles.app, "schema": SCHEMA}).fetchall()
    for name, kind, parent, held, public in rows:
        wanted = _wanted(name, kind, parent)
        target = sql.Identifier(SCHEMA, name)
        noun = sql.SQL("SEQUENCE" if kind == "S" else "TABLE")
        revoke, grant = set(held) - wanted, wanted - set(held)
        with conn.transaction():
            if revoke:
                conn.execute(
                    sql.SQL("REVOKE {} ON {} {} FROM {}").format(
                        _privileges(revoke), noun, target, app
                    )
                )
                changes.append(f"revoked {', '.join(sorted(revoke))} on {name}")
            if grant:
                conn.execute(
                    sql.SQL("GRANT {} ON {} {} TO {}").format(_privileges(grant), noun, target, app)
                )
                changes.append(f"granted {', '.join(sorted(grant))} on {name}")
            if public:
                conn.execute(sql.SQL("REVOKE ALL ON {} {} FROM PUBLIC").format(noun, target))
                changes.append(f"revoked {', '.join(sorted(public))} on {name} from PUBLIC")
    for change in changes:
        log.info("%s: %s", roles.app, change)
    for problem in excess_privileges(conn, roles.app):
        log.warning("%s", problem)
    return changes


def apply_roles(conn: psycopg.Connection[Any], settings: Settings) -> Roles:
    """``prepare_roles``, ``hand_to_owner`` and ``apply_grants`` on ``conn``'s database.

    For a database that did not come from ``migrate`` (a restored backup).
    Logs a warning and changes nothing when roles are not in use.
    """
    roles = prepare_roles(conn, settings)
    if roles.owner is None:
        log.warning("least privilege skipped: %s", roles.skipped)
        return roles
    hand_to_owner(conn, roles.owner)
    apply_grants(conn, roles)
    if roles.app:
        set_session_defaults(conn, roles.app, settings)
    return roles


def session_defaults(settings: Settings) -> dict[str, str]:
    """The session settings the pool's startup options give, as the role defaults to store."""
    return {
        "statement_timeout": f"{settings.statement_timeout_ms}ms",
        "lock_timeout": f"{settings.lock_timeout_ms}ms",
        "jit": "on" if settings.jit else "off",
        "TimeZone": "UTC",
    }


def set_session_defaults(conn: psycopg.Connection[Any], role: str, settings: Settings) -> bool:
    """Make ``role``'s sessions on this database start with ``session_defaults(settings)``.

    ``ALTER ROLE … IN DATABASE … SET``: what holds behind PgBouncer, which
    drops or refuses the startup options that set them on a direct
    connection. Returns False (with a warning) when the admin may not alter
    the role. A database cloned from a template does not inherit them.
    """
    database = sql.Identifier(conn.info.dbname)
    try:
        for name, value in session_defaults(settings).items():
            conn.execute(
                sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                    sql.Identifier(role), database, sql.Identifier(name), sql.Literal(value)
                )
            )
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("cannot set the session defaults of %s: %s", role, exc.diag.message_primary)
        return False
    except psycopg.Error as exc:
        raise map_error(exc) from exc
    return True


def application_user_problem(conn: psycopg.Connection[Any], roles: Roles, url: str) -> str | None:
    """What is wrong with the role ``url`` (the application's) logs in as, if anything.

    It should be the application role or a member of it, and no superuser or
    member of the owner. ``None`` when it is, or when it cannot be told.
    """
    user = conninfo_params(url).get("user")
    if roles.owner is None or roles.app is None or not user or user == roles.app:
        return None
    row = conn.execute(
        "SELECT rolsuper OR pg_has_role(rolname, %s, 'USAGE'), pg_has_role(rolname, %s, 'USAGE')"
        " FROM pg_roles WHERE rolname = %s",
        (roles.owner, roles.app, user),
    ).fetchone()
    if row is None:
        return None
    if row[0]:
        return (
            f"the application's DATABASE_URL connects as {user}, which can change the schema,"
            f" disable the ledger's triggers and truncate tables: connect as {roles.app}"
            " (README: Security model)"
        )
    if not row[1]:
        return (
            f"the application's DATABASE_URL connects as {user}, which has none of the grants"
            f" of {roles.app}: connect as {roles.app}, or GRANT {roles.app} TO {user}"
        )
    return None


def excess_privileges(conn: psycopg.Connection[Any], app: str) -> list[str]:
    """What ``app`` can do beyond the policy, through any grant or membership, table by table.

    Empty when least privilege holds. Ownership counts: an owner may do anything.
    """
    problems = []
    rows = conn.execute(
        """
        SELECT c.relname, c.relkind,
               CASE WHEN c.relispartition THEN
                   (SELECT r.relname FROM pg_class r WHERE r.oid = pg_partition_root(c.oid)) END,
               pg_has_role(%(app)s, c.relowner, 'USAGE'),
               CASE WHEN c.relkind = 'S' THEN
                   array(SELECT p FROM unnest(ARRAY['SELECT', 'USAGE', 'UPDATE']) p
                         WHERE has_sequence_privilege(%(app)s, c.oid, p))
               ELSE
                   array(SELECT p FROM unnest(%(privileges)s::text[]) p
                         WHERE has_table_privilege(%(app)s, c.oid, p))
               END
        FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
        ORDER BY c.relname
        """,
        {"app": app, "schema": SCHEMA, "privileges": list(_TABLE_PRIVILEGES)},
    ).fetchall()
    for name, kind, parent, owns, held in rows:
        if owns:
            problems.append(f"{app} owns (or acts as the owner of) {name}")
            continue
        extra = set(held) - _wanted(name, kind, parent)
        if extra:
            problems.append(f"{app} may {', '.join(sorted(extra))} on {name}, beyond the policy")
    return problems
