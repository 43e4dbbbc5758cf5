"""Connection strings: their parameters, the same server with another database, redaction.

Every function takes a URL (``postgresql://…``, multi-host too) or a libpq
key=value conninfo alike, as psycopg does.

Redaction parses a URL the way libpq does (``fe-connect.c``,
``conninfo_uri_parse_options``): the user information ends at the first ``@``
before any ``/``, so a password may hold ``?``, ``#``, ``&`` or ``=`` as they
are; ``@``, ``/`` and ``%`` must be percent-encoded. A URL that libpq rejects,
or whose parse cannot be what its author meant (an ``@`` in a host or in the
database name, a port that is not a number: an unencoded ``@`` or ``/`` in the
password), is redacted conservatively instead: everything up to its last
``@`` is taken as user information.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = [
    "check_conninfo",
    "check_redis_url",
    "conninfo_params",
    "redact",
    "secrets_in",
    "with_dbname",
    "with_user",
]

MASK = "***"

# Parameters whose values are secrets (libpq 18 adds the OAuth client secret).
_SECRET_KEYS = frozenset({"password", "sslpassword", "oauth_client_secret"})

# The prefixes libpq takes for a URI; anything else is parsed as key=value.
_LIBPQ_SCHEMES = ("postgresql://", "postgres://")

# Any other URL (redis://, postgresql+psycopg://, …) is redacted conservatively.
_OTHER_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_ENCODE_HINT = (
    "percent-encode reserved characters in the user name and password"
    " (a space as %20, % as %25, @ as %40, / as %2F)"
)


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


@dataclass(frozen=True, slots=True)
class _Uri:
    """Where libpq finds the parts of a URI: secret value spans and the raw parts."""

    secrets: list[tuple[int, int]]  # [start, end) of each secret value in the text
    hosts: list[str]
    ports: list[str]
    dbname: str


def _scan_uri(uri: str, start: int) -> _Uri | None:
    """Split ``uri`` (its scheme ends at ``start``) as libpq does; None where libpq fails."""
    n = len(uri)
    secrets: list[tuple[int, int]] = []
    p = start
    while p < n and uri[p] not in "@/":
        p += 1
    if p < n and uri[p] == "@":  # user[:password]@
        colon = uri.find(":", start, p)
        if colon != -1:
            secrets.append((colon + 1, p))
        p += 1
    else:
        p = start
    hosts: list[str] = []
    ports: list[str] = []
    while True:  # host[:port] pairs separated by commas
        if p < n and uri[p] == "[":
            close = uri.find("]", p + 1)
            if close <= p + 1:
                return None
            hosts.append(uri[p + 1 : close])
            p = close + 1
            if p < n and uri[p] not in ":/?,":
                return None
        else:
            first = p
            while p < n and uri[p] not in ":/?,":
                p += 1
            hosts.append(uri[first:p])
        if p < n and uri[p] == ":":
            first = p = p + 1
            while p < n and uri[p] not in "/?,":
                p += 1
            ports.append(uri[first:p])
        if p < n and uri[p] == ",":
            p += 1
            continue
        break
    dbname = ""
    if p < n and uri[p] == "/":
        first = p = p + 1
        while p < n and uri[p] != "?":
            p += 1
        dbname = uri[first:p]
    if p < n:  # "?key=value&key=value"
        for match in re.finditer(r"[^&]+", uri[p + 1 :]):
            key, equals, value = match.group().partition("=")
            if not equals or "=" in value:
                return None
            if unquote(key) in _SECRET_KEYS:
                end = p + 1 + match.end()
                secrets.append((end - len(value), end))
    return _Uri(secrets, hosts, ports, dbname)


def _implausible(uri: _Uri) -> str | None:
    """Why libpq's reading of a URI cannot be what its author meant, if it cannot."""
    if any("@" in host for host in uri.hosts):
        return "an '@' in a host name (an unencoded '@' in the password?)"
    if any(not unquote(port).isdigit() for port in uri.ports if port):
        return "a port that is not a number (an unencoded '/' in the password?)"
    if "@" in uri.dbname:
        return "an '@' in the database name (an unencoded '/' in the password?)"
    return None


def _parse_uri(uri: str) -> tuple[_Uri | None, str | None]:
    """libpq's reading of ``uri`` and why it is refused (None when it is accepted)."""
    scanned = _scan_uri(uri, len(next(s for s in _LIBPQ_SCHEMES if uri.startswith(s))))
    try:
        conninfo_to_dict(uri)
    except Exception:  # libpq's message may quote the password: never pass it on
        return scanned, "not a valid connection URI"
    if scanned is None:
        return None, "not a valid connection URI"
    return scanned, _implausible(scanned)


def _mask(text: str, spans: list[tuple[int, int]]) -> str:
    out: list[str] = []
    last = 0
    for begin, end in sorted(spans):
        if end <= begin:
            continue
        if out and begin <= last:  # overlaps the mask before: one mask for both
            last = max(last, end)
            continue
        out += [text[last:begin], MASK]
        last = end
    out.append(text[last:])
    return "".join(out)


def _loose_spans(url: str, start: int) -> list[tuple[int, int]]:
    """Secret spans of a URL whose structure is in doubt, erring towards hiding more.

    Everything between the first ``:`` and the last ``@`` is a password, and
    so is everything after a secret query argument's ``=``.
    """
    spans: list[tuple[int, int]] = []
    at = url.rfind("@", start)
    if at != -1:
        colon = url.find(":", start, at)
        if colon != -1:
            spans.append((colon + 1, at))
    for match in re.finditer(r"[?&]([^?&=]*)=", url[start:]):
        if unquote(match.group(1)).lower() in _SECRET_KEYS:
            spans.append((start + match.end(), len(url)))
            break
    return spans


def _secret_spans(conninfo: str) -> list[tuple[int, int]] | None:
    """Spans of ``conninfo`` (a URL) that hold secrets; None for a key=value conninfo."""
    if conninfo.startswith(_LIBPQ_SCHEMES):
        uri, problem = _parse_uri(conninfo)
        if uri is not None and problem is None:
            return uri.secrets
        return _loose_spans(conninfo, conninfo.index("://") + 3)
    if scheme := _OTHER_SCHEME.match(conninfo):
        return _loose_spans(conninfo, scheme.end())
    return None


def redact(conninfo: str) -> str:
    """Return ``conninfo`` (a URL or a key=value conninfo) with every secret replaced by ``***``.

    Covers the password of ``user:password@`` and the ``password``,
    ``sslpassword`` and ``oauth_client_secret`` parameters, whatever characters
    they hold, in URLs (multi-host ones too, and other schemes such as
    ``redis://``) and in key=value conninfo strings. Never raises: a key=value
    string libpq cannot parse comes back as ``<unparseable conninfo>``.
    """
    spans = _secret_spans(conninfo)
    if spans is not None:
        return _mask(conninfo, spans)
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:  # libpq's message may quote the password: never pass it on
        return "<unparseable conninfo>"
    for key in _SECRET_KEYS & params.keys():
        params[key] = MASK
    return make_conninfo("", **params)


def secrets_in(conninfo: str) -> list[str]:
    """Every text in ``conninfo`` that may be a secret, as written and as decoded.

    For scrubbing messages that may quote them (libpq quotes the token it
    cannot parse); longest first, so that a secret is replaced before any part
    of it.
    """
    found: set[str] = set()
    spans = _secret_spans(conninfo)
    if spans is not None and conninfo.startswith(_LIBPQ_SCHEMES):
        uri = _scan_uri(conninfo, conninfo.index("://") + 3)  # libpq's reading too
        spans = spans + (uri.secrets if uri is not None else [])
    for begin, end in spans or []:
        found.update({conninfo[begin:end], unquote(conninfo[begin:end])})
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        params = {}
    found.update(str(params[key]) for key in _SECRET_KEYS & params.keys())
    found.discard("")
    return sorted(found, key=len, reverse=True)


def check_conninfo(conninfo: str) -> None:
    """Raise ``ValueError`` when libpq cannot use ``conninfo``, with a message free of secrets.

    Refuses what libpq refuses (its own message may quote the password, so it
    is not repeated) and URLs libpq would read otherwise than their author
    meant: an ``@`` in a host or in the database name, or a port that is not a
    number, which is what an unencoded ``@`` or ``/`` in a password gives.
    """
    if conninfo.startswith(_LIBPQ_SCHEMES):
        _, problem = _parse_uri(conninfo)
        if problem is not None:
            raise ValueError(f"{problem}: {redact(conninfo)}; {_ENCODE_HINT}")
    try:
        params = conninfo_to_dict(conninfo)
    except Exception:
        kind = "URL" if _OTHER_SCHEME.match(conninfo) else "key=value connection string"
        shown = f": {redact(conninfo)}" if kind == "URL" else ""
        raise ValueError(
            f"not a valid PostgreSQL {kind}{shown} (URLs start with postgresql://;"
            " quote key=value values that hold spaces or quotes with '...')"
        ) from None
    # libpq only reads the port when it connects; refuse a bad one now. A multi-host
    # conninfo lists one port per host, or one for all; empty means the default.
    for port in str(params.get("port") or "").split(","):
        if port.strip() and not (port.strip().isdigit() and 1 <= int(port) <= 65535):
            raise ValueError(f"port {port.strip()!r} is not a TCP port (1-65535)")


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` when redis-py cannot use ``url``, with a message free of secrets.

    redis-py's own message may quote a piece of the password (an unencoded
    ``#``, ``/`` or ``?`` in it ends the authority early), so it is not repeated.
    """
    from redis.connection import parse_url  # here: import redis costs ~130 ms (see _lazy)

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        raise ValueError(
            f"is not a Redis URL redis-py can use ({redact(url)}): the scheme must be "
            "redis://, rediss:// or unix://, the port 0-65535, and a password's '#', "
            "'/', '?', '@' and '%' percent-encoded (%23, %2F, %3F, %40, %25)"
        ) from None
