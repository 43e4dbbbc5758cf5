"""Passwords never show, whatever characters they hold: not in errors, logs or the CLI.

Each password is tried in every place a connection string can hold it
(``conftest.urls_with_password``), against a port nothing listens on (so every
call fails and every failure path runs) and against the real, trust-auth server
(so what is accepted really connects). Hundreds of pools wait on timeouts, so
the cases run on a few threads at once.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
from conftest import LEAKY_PASSWORDS, PG_HOST, PG_PORT, password_fragments, urls_with_password
from psycopg.conninfo import conninfo_to_dict

from datalayer import Database, InvalidInput, Settings, Unavailable


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _format(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def _settings(url: str, pool_timeout: float = 0.1) -> Settings | InvalidInput:
    try:
        return Settings.from_env(
            {},
            database_url=url,
            application_name=f"dl_secret_{uuid.uuid4().hex[:12]}",
            pool_min_size=1,
            pool_max_size=1,
            pool_timeout=pool_timeout,
            connect_timeout=1,
        )
    except InvalidInput as exc:
        return exc


def _failing_use(url: str) -> list[str]:
    """Everything a user sees around opening and using a Database that cannot connect."""
    settings = _settings(url)
    if isinstance(settings, InvalidInput):
        return _format(settings)
    texts = [repr(settings), settings.safe_database_url]
    with Database(settings) as db:
        texts.append(repr(db))
        for use in (lambda: db.accounts.get(account_id=1), db.unit_of_work().__enter__):
            try:
                use()
            except Unavailable as exc:
                texts += _format(exc)
            else:
                raise AssertionError("a call succeeded against a closed port")
    with closing(Database(settings)) as db:
        try:
            db.open(wait=True)
        except Unavailable as exc:
            texts += _format(exc)
        else:
            raise AssertionError("open(wait=True) succeeded against a closed port")
    return texts


def _working_use(url: str) -> list[str]:
    """Everything a user sees around using a Database that connects (trust auth)."""
    settings = _settings(url, pool_timeout=10)
    if isinstance(settings, InvalidInput):
        return _format(settings)
    with Database(settings) as db:
        assert db.accounts.get(account_id=1) is None
        return [repr(settings), repr(db)]


def _records(caplog: pytest.LogCaptureFixture) -> list[str]:
    texts = []
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    return texts


def test_no_password_holding_any_printable_character_shows_in_errors_or_logs(
    caplog: pytest.LogCaptureFixture, fresh_dbname: str
) -> None:
    for logger in ("datalayer", "psycopg", "psycopg.pool"):
        caplog.set_level(logging.DEBUG, logger=logger)
    closed = _closed_port()
    jobs = []
    for password in LEAKY_PASSWORDS:
        for url in urls_with_password(password, host="127.0.0.1", port=closed, dbname="x").values():
            jobs.append((password, _failing_use, url))
        # Pasted as it is; when accepted, it must work.
        working = urls_with_password(password, host=PG_HOST, port=PG_PORT, dbname=fresh_dbname)
        jobs.append((password, _working_use, working["userinfo"]))

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda job: (job[0], job[1](job[2])), jobs))

    leaks = [
        (password, text)
        for password, texts in results
        for text in texts
        if any(f in text for f in password_fragments(password))
    ]
    assert leaks == []
    records = _records(caplog)
    assert any("error connecting" in r for r in records)  # psycopg_pool's warnings were seen
    assert any("pool open" in r for r in records)
    every_fragment = {f for password in LEAKY_PASSWORDS for f in password_fragments(password)}
    assert [r for r in records if any(f in r for f in every_fragment)] == []


def test_every_password_written_correctly_is_accepted_and_connects(fresh_dbname: str) -> None:
    # The other side of refusing malformed URLs: nothing well-formed is refused.
    for password in LEAKY_PASSWORDS:
        urls = urls_with_password(password, host=PG_HOST, port=PG_PORT, dbname=fresh_dbname)
        for form in ("userinfo-encoded", "multi-host", "query-encoded", "keyword"):
            assert conninfo_to_dict(urls[form])["password"] == password
            assert not isinstance(_settings(urls[form]), InvalidInput), (password, form)
    # And one of them really connects through a Database.
    assert _working_use(urls["userinfo-encoded"])


def test_the_cli_never_prints_a_password_in_errors_or_log_lines() -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "DATALAYER_POOL_TIMEOUT": "0.3",
        "DATALAYER_CONNECT_TIMEOUT": "1",
        "DATALAYER_POOL_MIN_SIZE": "1",
    }
    env.pop("DATABASE_URL", None)

    def url(password: str) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{port}/x"

    # Refused before connecting (a bare '%', unencoded '@' and '/'), and accepted but
    # unreachable: from --database-url and from DATABASE_URL, with -v showing the
    # pool's own warnings; and a second connection string, restore's --into.
    runs: list[tuple[str, list[str], dict[str, str]]] = [
        ("Zqp%zzXw9", ["--database-url", url("Zqp%zzXw9"), "status"], env),
        ("Zqa?b#cXw9", ["--database-url", url("Zqa?b#cXw9"), "status"], env),
        ("Zqa?b#cXw9", ["-v", "rollups", "refresh"], {**env, "DATABASE_URL": url("Zqa?b#cXw9")}),
        ("Zq@:/Xw9", ["-v", "rollups", "refresh"], {**env, "DATABASE_URL": url("Zq@:/Xw9")}),
        ("Zq%Xw9", ["restore", "none.dump", "--into", "postgresql://u:Zq%Xw9@127.0.0.1/x"], env),
    ]
    procs = [
        (
            password,
            args,
            subprocess.Popen(
                [sys.executable, "-m", "datalayer", *args],
                env=run_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for password, args, run_env in runs
    ]
    for password, args, proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, err)
        assert err.strip(), args  # the failure is explained
        fragments = password_fragments(password)
        assert [f for f in fragments if f in out + err] == [], (args, err)
