"""Servers for the scale-out tests: PgBouncer in front of the test server, run as ``postgres``.

Each pytest-xdist worker runs its own on a port of 55400-55499 (the range kept
for these tests on shared machines), from a temporary directory removed at
teardown. Under ``CI=true`` a missing ``pgbouncer`` fails the tests; elsewhere
it skips them, naming the package to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

BOUNCER_PORT_BASE = 55410  # + the xdist worker number


def worker_number() -> int:
    """0 for ``gw0`` or a run without xdist, 1 for ``gw1``, …"""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker.removeprefix("gw") or 0)


def require(program: str, package: str) -> str:
    """The path of ``program``; under CI a missing one fails, elsewhere it skips."""
    path = shutil.which(program) or next(
        (str(p) for p in (Path("/usr/sbin") / program, Path("/usr/bin") / program) if p.exists()),
        None,
    )
    if path is None:
        message = f"{program} is not installed (apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` OS user (servers refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def owned_tempdir(prefix: str) -> Path:
    """A new temporary directory that the ``postgres`` OS user owns (when we are root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    path.chmod(0o700)
    return path


def wait_until_connectable(conninfo: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with psycopg.connect(conninfo, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class Bouncer:
    """A running PgBouncer in transaction mode in front of ``server_host:server_port``."""

    host: str
    port: int
    directory: Path

    def url(self, dbname: str, *, user: str, password: str = "") -> str:
        """A conninfo through the bouncer, to ``dbname`` as ``user``."""
        params: dict[str, Any] = {"host": self.host, "port": self.port, "user": user}
        params["dbname"] = dbname
        if password:
            params["password"] = password
        return make_conninfo("", **params)

    def pid(self) -> int | None:
        with suppress(OSError, ValueError):
            return int((self.directory / "pgbouncer.pid").read_text().strip())
        return None


@contextmanager
def running_pgbouncer(
    *,
    server_host: str,
    server_port: int,
    users: dict[str, str],
    port: int,
    pool_size: int = 4,
    extra: str = "",
) -> Iterator[Bouncer]:
    """PgBouncer (pool_mode = transaction, Debian's defaults otherwise) for the block."""
    program = require("pgbouncer", "pgbouncer")
    directory = owned_tempdir("dl-pgbouncer-")
    userlist = "".join(f'"{user}" "{password}"\n' for user, password in users.items())
    (directory / "userlist.txt").write_text(userlist)
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 400
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
{extra}
"""
    )
    if os.geteuid() == 0:
        for child in directory.iterdir():
            shutil.chown(child, "postgres", "postgres")
    bouncer = Bouncer("127.0.0.1", port, directory)
    try:
        subprocess.run(
            as_postgres([program, "-d", "-q", str(directory / "pgbouncer.ini")]),
            check=True,
            capture_output=True,
            timeout=30,
        )
        user = next(iter(users))
        wait_until_connectable(bouncer.url("postgres", user=user, password=users[user]))
        yield bouncer
    finally:
        pid = bouncer.pid()
        if pid is not None:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # PgBouncer: shut down at once
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def pgbouncer(_server_reachable: None) -> Iterator[Bouncer]:
    """PgBouncer 1.18 (Debian) in transaction mode in front of the test server, 4 server
    connections per database and user: clients share them, as in production."""
    from conftest import APP_PASSWORD, APP_ROLE, PG_HOST, PG_PASSWORD, PG_PORT, PG_USER

    with running_pgbouncer(
        server_host=PG_HOST,
        server_port=PG_PORT,
        users={PG_USER: PG_PASSWORD, APP_ROLE: APP_PASSWORD},
        port=BOUNCER_PORT_BASE + worker_number(),
    ) as bouncer:
        yield bouncer
