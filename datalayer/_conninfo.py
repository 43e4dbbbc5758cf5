"""Connection strings: their parameters, the same server with another database, redaction.

Every function takes a URL (``postgresql://…``, multi-host too) or a libpq
key=value conninfo alike, as psycopg does.
"""

from __future__ import annotations

import re

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["conninfo_params", "redact", "with_dbname", "with_user"]


def conninfo_params(url: str) -> dict[str, str]:
    """The connection parameters of ``url`` as strings (libpq names: host, port, dbname, …)."""
    return {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}


def with_dbname(url: str, dbname: str) -> str:
    """A conninfo for the same server, user and options as ``url``, on database ``dbname``."""
    return make_conninfo("", **{**conninfo_params(url), "dbname": dbname})


def with_user(url: str, user: str) -> str:
    """A conninfo for the same server, database and options as ``url``, as ``user``.

    The password of ``url`` is dropped: it belongs to the other role (libpq
    still finds ``user``'s own in ``PGPASSWORD`` or the password file).
    """
    params = {k: v for k, v in conninfo_params(url).items() if k != "password"}
    return make_conninfo("", **{**params, "user": user})


_URL_USERINFO_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:@/?#]*):[^@/?#]*@", re.IGNORECASE)
_URL_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """Return ``url`` (a URL or a key=value conninfo) with any password replaced by ``***``.

    Covers ``user:password@`` and a ``?password=`` query argument in URLs (also
    multi-host ones) and ``password=`` in conninfo strings; never raises.
    """
    if "://" in url:
        url = _URL_USERINFO_PASSWORD.sub(r"\1:***@", url)
        return _URL_QUERY_PASSWORD.sub(r"\1***", url)
    try:
        params = conninfo_to_dict(url)
    except Exception:
        return "<unparseable conninfo>"
    if "password" in params:
        params["password"] = "***"  # noqa: S105 - the redaction marker, not a password
    return make_conninfo("", **params)
