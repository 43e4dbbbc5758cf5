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
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from scratch_dirs import scratch_tempdir

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
    path = scratch_tempdir(prefix)
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
    bouncer = Bouncer("127.0.0.1", port, directory)
    try:
        # Ports of this range are also ephemeral client ports: move on when one is taken.
        for _ in range(5):
            server = (server_host, server_port)
            _write_pgbouncer_ini(directory, server, bouncer.port, pool_size, extra)
            if os.geteuid() == 0:
                for child in directory.iterdir():
                    shutil.chown(child, "postgres", "postgres")
            subprocess.run(
                as_postgres([program, "-d", "-q", str(directory / "pgbouncer.ini")]),
                check=True,
                capture_output=True,
                timeout=30,
            )
            time.sleep(0.1)
            log = (directory / "pgbouncer.log").read_text(errors="replace")
            if "nowhere to listen" not in log:
                break
            (directory / "pgbouncer.log").unlink()
            bouncer.port = bouncer.port + 2 if (bouncer.port % 10) + 2 < 10 else bouncer.port - 8
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


def _write_pgbouncer_ini(
    directory: Path, server: tuple[str, int], port: int, pool_size: int, extra: str
) -> None:
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server[0]} port={server[1]}

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


# -- PostgreSQL clusters of their own: a primary and its streaming replica --------------------

PRIMARY_PORT_BASE = 55420  # + the xdist worker number
REPLICA_PORT_BASE = 55430


def pg_bindir() -> Path:
    """Where the server binaries are (``pg_config --bindir``, else Debian's 15)."""
    with suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    fallback = Path("/usr/lib/postgresql/15/bin")
    if not (fallback / "initdb").exists():
        message = "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return fallback


@dataclass
class Cluster:
    """A PostgreSQL server of the tests' own, in ``directory/data``, trusting local users."""

    port: int
    directory: Path

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, dbname: str = "postgres", *, user: str = "postgres", **extra: Any) -> str:
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user=user, dbname=dbname, **extra
        )

    def pg_ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            as_postgres([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), *args]),
            check=check,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        """Start; when the port is taken (ports of this range are also ephemeral client
        ports), move to the next free one of its decade for this worker."""
        log = self.directory / "server.log"
        for _ in range(5):
            try:
                self.pg_ctl("-l", str(log), "-w", "-t", "30", "start")
                return
            except subprocess.CalledProcessError:
                if "Address already in use" not in log.read_text(errors="replace"):
                    raise
            taken = self.port
            self.port = self.port + 2 if (self.port % 10) + 2 < 10 else self.port - 8
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(f"\nport = {self.port}  # {taken} was taken\n")
        raise RuntimeError(f"no free port for the cluster in {self.directory}")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("-m", mode, "-w", "-t", "30", "stop", check=False)


_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{directory}'
fsync = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 60
wal_level = replica
max_wal_senders = 6
wal_keep_size = 64MB
hot_standby = on
max_standby_streaming_delay = -1
wal_receiver_status_interval = 1s
timezone = 'UTC'
{extra}
"""


def make_primary(port: int, *, extra: str = "") -> Cluster:
    """A new, stopped primary cluster (initdb as ``postgres``) listening on ``port``."""
    cluster = Cluster(port, owned_tempdir(f"dl-primary-{port}-"))
    subprocess.run(
        as_postgres(
            [str(pg_bindir() / "initdb"), "-D", str(cluster.data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"]
        ),
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with (cluster.data / "postgresql.conf").open("a") as conf:
        conf.write(_CONF.format(port=port, directory=cluster.directory, extra=extra))
    return cluster


def make_standby(primary: Cluster, port: int, *, extra: str = "") -> Cluster:
    """A streaming standby of the running ``primary`` (``pg_basebackup -R``), not yet started."""
    standby = Cluster(port, owned_tempdir(f"dl-standby-{port}-"))
    subprocess.run(
        as_postgres(
            [str(pg_bindir() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
             "-U", "postgres", "-D", str(standby.data), "-R", "-X", "stream", "--no-sync",
             "-c", "fast"]
        ),
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    with (standby.data / "postgresql.conf").open("a") as conf:
        conf.write(f"\nport = {port}\nunix_socket_directories = '{standby.directory}'\n{extra}\n")
    (standby.directory).chmod(0o700)
    return standby


def destroy(*clusters: Cluster) -> None:
    for cluster in clusters:
        cluster.stop("immediate")
        shutil.rmtree(cluster.directory, ignore_errors=True)


@dataclass
class ReplicatedDatabase:
    """A migrated database ``datalayer`` on ``primary``, streamed to ``replica``."""

    primary: Cluster
    replica: Cluster
    dbname: str = "datalayer"

    def app_url(self, cluster: Cluster) -> str:
        from conftest import APP_ROLE

        return cluster.url(self.dbname, user=APP_ROLE)


@pytest.fixture(scope="session")
def replicated() -> Iterator[ReplicatedDatabase]:
    """A primary with the migrated schema and a streaming replica of it, for the session."""
    from datalayer import Settings
    from datalayer._ops.migrate import migrate

    n = worker_number()
    primary = make_primary(PRIMARY_PORT_BASE + n)
    replica: Cluster | None = None
    try:
        primary.start()
        migrate(Settings(database_url=primary.url("datalayer")), ensure_ahead=1)
        replica = make_standby(primary, REPLICA_PORT_BASE + n)
        replica.start()
        wait_until_connectable(replica.url("datalayer"))
        yield ReplicatedDatabase(primary, replica)
    finally:
        destroy(*([replica] if replica else []), primary)
