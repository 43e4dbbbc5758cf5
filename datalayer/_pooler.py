"""Connection poolers (PgBouncer): detecting one, and keeping session settings behind it.

Behind PgBouncer in transaction mode a client's statements run on whichever
server connection is free at each transaction, so nothing may rely on session
state: prepared statements (another client's ``_pg3_0`` runs in place of
ours), ``SET``, session advisory locks, and startup ``options`` (refused, or
dropped with ``ignore_startup_parameters = options``). README: Scaling out on
PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ._settings import Settings
from .errors import DataLayerError

__all__ = [
    "BACKEND_PID",
    "DIRECT_URL_NEEDED",
    "LOCAL_SETTINGS",
    "behind_pooler",
    "local_settings",
    "options_refused",
    "pid_differs",
    "refuse_pooler",
]

# What admin commands say when their URL reaches a pooler.
DIRECT_URL_NEEDED = (
    "reaches PostgreSQL through a connection pooler (PgBouncer): admin commands take session "
    "advisory locks, SET session settings and prepare statements, which a transaction pooler "
    "would share with other clients. Give them a direct URL to the server with "
    "DATALAYER_ADMIN_URL (or --admin-url)"
)

# The session settings a unit of work re-applies for its transaction behind a pooler,
# where startup options never reach the server (one round trip, parameters only).
LOCAL_SETTINGS = (
    "SELECT set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true),"
    " set_config('jit', %s, true), set_config('timezone', 'UTC', true)"
)


# The pid of the server process that runs the client's statements.
BACKEND_PID = "SELECT pg_backend_pid()"


def pid_differs(row: Any, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``BACKEND_PID``'s ``row`` is not the pid ``conn`` was told at startup (a pooler)."""
    return row is None or row[0] != conn.info.backend_pid


def behind_pooler(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn`` reaches PostgreSQL through a pooler such as PgBouncer.

    A pooler hands its client a cancellation key of its own (PgBouncer: random
    bytes), so the backend pid the client was told differs from the pid of the
    server process that runs its statements. A direct connection, or a TCP
    proxy such as HAProxy, passes the server's own. One round trip, never
    prepared; raises psycopg errors as they are.
    """
    return pid_differs(conn.execute(BACKEND_PID, prepare=False).fetchone(), conn)


def options_refused(exc: BaseException) -> bool:
    """Whether a failed connection attempt is PgBouncer refusing the startup ``options``."""
    return isinstance(exc, psycopg.OperationalError) and (
        "unsupported startup parameter" in str(exc) and "options" in str(exc)
    )


def local_settings(settings: Settings) -> tuple[str, str, str]:
    """The parameters of ``LOCAL_SETTINGS``: the session settings ``settings`` asks for."""
    return (
        f"{settings.statement_timeout_ms}ms",
        f"{settings.lock_timeout_ms}ms",
        "on" if settings.jit else "off",
    )


def refuse_pooler(conn: psycopg.Connection[Any], what: str) -> None:
    """Raise ``DataLayerError`` (and close ``conn``) when ``conn`` goes through a pooler.

    ``what`` names the URL in the message (never the URL itself: it may hold a
    password).
    """
    if behind_pooler(conn):
        conn.close()
        raise DataLayerError(f"{what} {DIRECT_URL_NEEDED}")
