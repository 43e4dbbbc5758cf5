"""The Citus session: the integration suites against a coordinator and two workers.

``DATALAYER_TEST_CITUS=1`` (what ``make test-citus`` and the second half of ``make test``
set) turns a test session into a Citus session:

* **The cluster.** The controller (the process xdist workers are started from, or the only
  process without xdist) starts one Citus 13.2.2 cluster for the whole session with
  ``../shared/citus/cluster.sh`` (``DATALAYER_SHARED_DIR`` names ``shared/`` when it is not
  the repository's sibling; default ``/work/shared`` after that): a coordinator and two
  workers on 127.0.0.1, the first free triple of ports 55470-55478, as the ``postgres`` OS
  user, fsync off, in a temporary directory removed at the end. It points
  ``DATALAYER_TEST_PG_HOST``/``_PORT``/``_USER`` at the coordinator, so every fixture of
  ``conftest.py`` and every ``pg_url``/``app_url`` goes there; xdist workers inherit the
  environment and never start clusters of their own. One cluster shared by the workers,
  each with its own databases, is cheaper than one per worker: a start costs several
  seconds of both cores, and per-worker clusters would run six servers and their
  maintenance daemons on two cores.
* **Databases.** On Citus a database exists on every node, with the extension, and the
  coordinator's copy registers the workers. The controller makes one such empty database
  (``dl_citus_base``) when the cluster starts; each xdist worker clones it on every node
  into its template and migrates that on the coordinator with ``datalayer migrate`` (which
  distributes the tables once the distribution step exists). A fresh database
  (``fresh_dbname``, ``shared_dbname``, ``_clone``) is ``CREATE DATABASE … TEMPLATE`` on
  every node at once, under the same name: Citus keeps its metadata (nodes, shards,
  placements) inside each database, and nodes are found by host and port, so same-name
  clones form a cluster of their own whose shards are the clones' shard tables. A template
  is sealed first (``ALLOW_CONNECTIONS false`` and its sessions ended on every node): the
  Citus maintenance daemon and the coordinator's cached connections to the workers would
  otherwise keep it busy and ``CREATE DATABASE … TEMPLATE`` would refuse it.
* **Which tests.** The command line names the suites (the Makefile's ``CITUS_SUITES``).
  Each test gets ``requires_parts("citus")``: without Citus it is skipped and summed up at
  the end (failed under ``CI=true``). A test that cannot run on Citus for a reason about
  the harness (it starts a server of its own, say) carries
  ``@pytest.mark.not_on_citus("why")`` and is skipped there, with its reason, counted in a
  summary line. Tests marked ``requires_parts("citus")`` need the coordinator (the
  ``citus_cluster`` fixture): a plain session skips them, saying they run in the Citus
  session.

Installing: when Citus is missing and the session runs as root, the ``citus`` part probe
runs ``shared/citus/install.sh`` (under a second); otherwise the part is missing and the
summary says how to install it.

(PYTEST_DONT_REWRITE: conftest imports this module before pytest could rewrite it.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pytest
import servers
from psycopg import sql
from psycopg.conninfo import make_conninfo
from scratch_dirs import scratch_tempdir

SWITCH_VAR = "DATALAYER_TEST_CITUS"  # "1": this session runs against a Citus cluster
SHARDS_VAR = "DATALAYER_TEST_CITUS_SHARD_COUNT"
SHARED_VAR = "DATALAYER_SHARED_DIR"  # the directory holding citus/ (install.sh, cluster.sh)
STARTED_VAR = "_DATALAYER_TEST_CITUS"  # set by the controller: "DIR;PORT,PORT,PORT" or "-;why"
PORT_BASE = 55470  # 55470-55479 are this harness's: three triples, 55470, 55473, 55476
WORKERS = 2
BASE_DB = "dl_citus_base"
REPO = Path(__file__).resolve().parents[1]
NOT_ON_CITUS_PREFIX = "not on Citus: "
CITUS_SESSION_ONLY = "runs in the Citus session only (DATALAYER_TEST_CITUS=1: make test-citus)"


def shard_count() -> int | None:
    """Shards per distributed table of the templates: ``DATALAYER_TEST_CITUS_SHARD_COUNT``,
    default 2 (one per worker: tenant statements route to one of two shards on two nodes,
    cross-tenant ones fan out to both). ``.ci/run`` runs the session again with 4 (two per
    worker, where a fan-out by shard and one by node differ). Measured on two cores: the
    whole session 110 s and 209 CPU-s at 2 shards, 126-143 s and 244-268 CPU-s at 4.
    Citus's default of 32 makes every clone copy sixteen times the shard tables;
    ``default`` uses it."""
    value = os.environ.get(SHARDS_VAR, "2").strip().lower()
    return None if value == "default" else int(value)


def requested() -> bool:
    """Whether this is a Citus session (``DATALAYER_TEST_CITUS=1``)."""
    return os.environ.get(SWITCH_VAR, "").strip().lower() in {"1", "true", "yes"}


def shared_dir() -> Path:
    """``shared/``: ``DATALAYER_SHARED_DIR``, else the repository's sibling, else /work/shared."""
    if os.environ.get(SHARED_VAR):
        return Path(os.environ[SHARED_VAR])
    sibling = REPO.parent / "shared"
    return sibling if (sibling / "citus").is_dir() else Path("/work/shared")


def _installed() -> bool:
    libdir = servers._pg_config("--pkglibdir")
    return libdir is not None and (libdir / "citus.so").exists()


def _probe_citus() -> str | None:
    """The ``citus`` part: in a Citus session, the cluster the controller started (having
    installed Citus when it could). A plain session needs none: it skips the tests that
    need the part, naming the Citus session (``pytest_collection_modifyitems``)."""
    if not requested():
        return None
    if cluster() is None:
        return _why_not_started() or "the Citus session's cluster was not started"
    return None


def _how_to_install() -> str:
    script = shared_dir() / "citus" / "install.sh"
    return (
        f"the Citus extension is not installed: run {script} as root (set {SHARED_VAR} to the "
        "directory holding citus/ when shared/ is elsewhere)"
    )


def _install() -> str | None:
    """``None`` when Citus is installed (installing it first when we are root and may)."""
    if _installed():
        return None
    script = shared_dir() / "citus" / "install.sh"
    how = _how_to_install()
    if not script.exists():
        return f"{how}; {script} does not exist"
    if os.name != "posix" or os.geteuid() != 0:
        return how
    done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or not _installed():
        return f"{script} failed: {(done.stdout + done.stderr).strip()[-500:]}"
    return None


servers.register_part("citus", _probe_citus)


# -- the cluster ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CitusCluster:
    """A running coordinator (``ports[0]``) and its workers, in ``directory``."""

    directory: Path
    ports: tuple[int, ...]

    @property
    def coordinator(self) -> int:
        return self.ports[0]

    @property
    def workers(self) -> tuple[int, ...]:
        return self.ports[1:]

    def url(
        self, dbname: str = "postgres", *, port: int | None = None, user: str = "postgres"
    ) -> str:
        return make_conninfo(
            "", host="127.0.0.1", port=port or self.coordinator, user=user, dbname=dbname
        )

    def on_every_node(self, work: Callable[[psycopg.Connection[Any]], None]) -> None:
        """``work(conn)`` on each node's ``postgres`` database at once (autocommit)."""

        def run(port: int) -> None:
            with psycopg.connect(self.url(port=port), autocommit=True) as conn:
                work(conn)

        with ThreadPoolExecutor(len(self.ports)) as pool:
            for future in [pool.submit(run, port) for port in self.ports]:
                future.result()

    def create_database(self, name: str) -> None:
        """An empty database ``name`` on every node with the extension; workers registered."""
        ident = sql.Identifier(name)

        def create(conn: psycopg.Connection[Any]) -> None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
            with psycopg.connect(self.url(name, port=conn.info.port), autocommit=True) as db:
                db.execute("CREATE EXTENSION citus")

        self.on_every_node(create)
        with psycopg.connect(self.url(name), autocommit=True) as conn:
            conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.coordinator,))
            for port in self.workers:
                conn.execute("SELECT citus_add_node('127.0.0.1', %s)", (port,))

    def seal(self, name: str) -> None:
        """Make ``name`` usable as a template on every node: no one connected, no one may."""
        self.on_every_node(lambda conn: _close(conn, name))

    def clone(self, name: str, template: str) -> None:
        """``CREATE DATABASE name TEMPLATE template`` on every node (``template`` sealed).

        ``STRATEGY FILE_COPY``: the nodes run with fsync off (cluster.sh), where copying
        the files beats WAL-logging every page (tests/clones.py, ``_strategy``).
        """
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        self.on_every_node(lambda conn: _run(conn, statement))

    def drop(self, name: str) -> None:
        """Drop ``name`` everywhere: the coordinator first, so it opens nothing new meanwhile."""
        self._drop_on(self.coordinator, name)
        workers = CitusCluster(self.directory, self.workers)
        workers.on_every_node(lambda conn: self._drop_on(conn.info.port, name))

    def _drop_on(self, port: int, name: str) -> None:
        with psycopg.connect(self.url(port=port), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
            _close(conn, name)
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _close(conn: psycopg.Connection[Any], name: str, seconds: float = 30) -> None:
    """Refuse new connections to ``name`` and end every session in it, waiting until they are gone.

    The sessions include the Citus maintenance daemon, a background worker that
    ``DROP DATABASE … WITH (FORCE)`` does not end. Ended while it waits on a node it
    asked something, it takes its time to notice; meanwhile ``CREATE``/``DROP DATABASE``
    would wait 5 s and give up ("being accessed by other users"). Measured: ending the
    sessions and waiting for them takes 0.1-0.3 s; the drop alone, 5-20 s.
    """
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name))
    )
    deadline = time.monotonic() + seconds
    while True:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()
        if not row or not row[0]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{row[0]} session(s) in {name} did not end within {seconds:.0f} s")
        time.sleep(0.02)


def _run(conn: psycopg.Connection[Any], statement: sql.Composable) -> None:
    conn.execute(statement)


def as_postgres(argv: list[str]) -> list[str]:
    """``argv`` run as the ``postgres`` OS user when we are root (servers refuse root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def cluster_script() -> Path:
    return shared_dir() / "citus" / "cluster.sh"


def start_cluster(port: int, workers: int = WORKERS) -> CitusCluster:
    """Start a new cluster (coordinator on ``port``, workers after it) in a temporary directory.

    ``cluster.sh start DIR PORT 0`` once per node, all at once: it initdbs and starts the
    nodes one after the other, and the initdbs are most of the time (measured under load:
    16 s one after the other, 7.5 s at once).
    """
    directory = scratch_tempdir(f"dl-citus-{port}-")
    directory.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres")
    cluster = CitusCluster(directory, tuple(range(port, port + workers + 1)))
    starts = [
        subprocess.Popen(
            [str(cluster_script()), "start", str(directory), str(node), "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in cluster.ports
    ]
    failed = [
        out for proc in starts if (out := proc.communicate(timeout=120)[0]) and proc.returncode
    ]
    if failed:
        logs = [log.read_text(errors="replace") for log in sorted(directory.glob("node*/log"))]
        stop_cluster(cluster)
        if any("Address already in use" in log for log in logs):
            raise PortTaken(f"a port of {cluster.ports} is taken")
        tails = "".join(log[-800:] for log in logs)
        raise RuntimeError(f"cluster.sh start failed: {''.join(failed)}\n{tails}")
    return cluster


class PortTaken(RuntimeError):
    """A node could not listen on its port (ports of this range are also ephemeral ports)."""


def stop_cluster(cluster: CitusCluster) -> None:
    """Stop every node at once (immediate: the data goes with the directory) and remove it."""
    pg_ctl = servers._pg_config("--bindir")
    program = str(pg_ctl / "pg_ctl") if pg_ctl else "pg_ctl"
    stops = [
        subprocess.Popen(
            as_postgres([program, "-D", str(node), "-m", "immediate", "-w", "stop"]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node in sorted(cluster.directory.glob("node*"))
    ]
    for proc in stops:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    shutil.rmtree(cluster.directory, ignore_errors=True)


def _start_on_free_ports(workers: int = WORKERS) -> CitusCluster:
    """A cluster on the first of the triples 55470, 55473, 55476 it can listen on.

    Nothing may listen there, and a port held by an outgoing connection (these ports are
    in the ephemeral range) makes the start fail: then the next triple, twice round.
    """
    triples = list(range(PORT_BASE, PORT_BASE + 9, workers + 1)) * 2
    for port in triples:
        ports = range(port, port + workers + 1)
        if any(servers._answers("127.0.0.1", p, 0.2) for p in ports):
            continue
        with contextlib.suppress(PortTaken):
            return start_cluster(port, workers)
    raise RuntimeError(f"ports {PORT_BASE}-{PORT_BASE + 8} are all taken (three clusters running?)")


_STARTED: list[CitusCluster] = []


def _stop_started() -> None:
    while _STARTED:
        stop_cluster(_STARTED.pop())


def resolve() -> None:
    """In a Citus session, start the cluster (controller) and point the tests at it.

    Idempotent per process tree, like ``servers.resolve``: the controller exports the
    outcome in ``_DATALAYER_TEST_CITUS``, xdist workers read it. A cluster that cannot
    start (Citus missing, no free ports) is recorded as the reason every test is skipped
    (failed under CI). Call before ``servers.resolve()``.
    """
    if not requested() or os.environ.get(STARTED_VAR):
        return
    why = "left out by DATALAYER_TEST_WITHOUT" if "citus" in servers._left_out() else _install()
    if why is not None:
        os.environ[STARTED_VAR] = f"-;{why}"
        return
    try:
        cluster = _start_on_free_ports()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        os.environ[STARTED_VAR] = f"-;the cluster did not start: {exc}"
        return
    _STARTED.append(cluster)
    atexit.register(_stop_started)  # pytest_unconfigure stops it first, normally
    cluster.create_database(BASE_DB)
    with psycopg.connect(cluster.url(BASE_DB)) as conn:
        found = conn.execute("SELECT citus_version()").fetchone()
    version = str(found[0]).split(" on ")[0] if found else "Citus ?"
    cluster.seal(BASE_DB)
    os.environ[STARTED_VAR] = f"{cluster.directory};{','.join(map(str, cluster.ports))};{version}"
    os.environ.update(
        DATALAYER_TEST_PG_HOST="127.0.0.1",
        DATALAYER_TEST_PG_PORT=str(cluster.coordinator),
        DATALAYER_TEST_PG_USER="postgres",
        DATALAYER_TEST_PG_PASSWORD="",
        DATALAYER_TEST_PG_APP_PASSWORD="",
    )


def cluster() -> CitusCluster | None:
    """This Citus session's cluster; ``None`` in a plain session or when it did not start."""
    where, _, rest = os.environ.get(STARTED_VAR, "").partition(";")
    if not requested() or not where or where == "-":
        return None
    ports = rest.partition(";")[0]
    return CitusCluster(Path(where), tuple(int(p) for p in ports.split(",")))


def active() -> bool:
    """Whether the fixtures of ``conftest.py`` make their databases on a Citus cluster."""
    return cluster() is not None


def _why_not_started() -> str | None:
    where, _, why = os.environ.get(STARTED_VAR, "").partition(";")
    return why if where == "-" else None


# -- databases ----------------------------------------------------------------------------------


class CitusJanitor:
    """``DatabaseJanitor``'s interface (``init``, ``drop``, ``dbname``, a context manager)
    for a same-name clone of ``template`` on every node of the cluster."""

    def __init__(self, cluster: CitusCluster, dbname: str, template: str) -> None:
        self.cluster, self.dbname, self.template_dbname = cluster, dbname, template

    def init(self) -> None:
        self.cluster.clone(self.dbname, self.template_dbname)

    def drop(self) -> None:
        self.cluster.drop(self.dbname)

    def __enter__(self) -> CitusJanitor:
        self.init()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.drop()


@pytest.fixture(scope="session")
def citus_cluster() -> CitusCluster:
    """The Citus session's coordinator and workers (started by the controller for the session)."""
    found = cluster()
    if found is None:  # the marker requires_parts("citus") normally stops the test first
        why = _why_not_started() or CITUS_SESSION_ONLY
        servers.part_missing("citus", why)
    return found


@pytest.fixture(scope="session")
def citus_template(citus_cluster: CitusCluster) -> Iterator[str]:
    """This worker's migrated template: the base cloned on every node, migrated, sealed."""
    from datalayer import Settings
    from datalayer._ops.migrate import migrate

    name = f"datalayer_test_{os.getpid()}"
    citus_cluster.clone(name, BASE_DB)
    try:
        migrate(Settings(database_url=citus_cluster.url(name), citus_shard_count=shard_count()))
        citus_cluster.seal(name)
        yield name
    finally:
        citus_cluster.drop(name)


# -- hooks --------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "not_on_citus(why): skipped in the Citus session (DATALAYER_TEST_CITUS=1), with the "
        "reason, which is about the harness (the test starts a server of its own, say)",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    if not requested():
        return None
    found = cluster()
    if found is None:
        return f"citus: not running ({_why_not_started()})"
    workers = ", ".join(str(p) for p in found.workers)
    version = os.environ[STARTED_VAR].split(";")[2]
    return (
        f"citus: {version} coordinator at 127.0.0.1:{found.coordinator}, "
        f"workers at {workers}, in {found.directory} (removed at the end)"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``-q`` pytest prints no header: say which cluster anyway (controller only)."""
    config = session.config
    quiet = config.get_verbosity() < 0 or config.getoption("no_header", False)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    line = pytest_report_header(config)
    if line and quiet and reporter is not None and not hasattr(config, "workerinput"):
        reporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Citus session: every test needs the part; ``not_on_citus`` ones skip with their reason.
    Plain session: tests that need the coordinator skip, naming the Citus session."""
    citus = requested()
    for item in items:
        needs_citus = any("citus" in m.args for m in item.iter_markers("requires_parts"))
        if citus:
            marker = item.get_closest_marker("not_on_citus")
            if marker is not None:
                why = marker.args[0] if marker.args else "no reason given"
                item.add_marker(pytest.mark.skip(reason=f"{NOT_ON_CITUS_PREFIX}{why}"))
            elif not needs_citus:
                item.add_marker(pytest.mark.requires_parts("citus"))
        elif needs_citus:
            item.add_marker(pytest.mark.skip(reason=CITUS_SESSION_ONLY))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line: the tests the Citus session left out on purpose, by reason."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        message = servers._skip_message(report)
        if message.startswith(NOT_ON_CITUS_PREFIX):
            reason = message.removeprefix(NOT_ON_CITUS_PREFIX)
            counts[reason] = counts.get(reason, 0) + 1
    if counts:
        reasons = "; ".join(
            f"{n} test{'s' * (n != 1)} ({reason})" for reason, n in sorted(counts.items())
        )
        terminalreporter.write_line(f"left out of the Citus session: {reasons}", yellow=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    with contextlib.suppress(Exception):
        _stop_started()  # a no-op in xdist workers, which never start clusters
