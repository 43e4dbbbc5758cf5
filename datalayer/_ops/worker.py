"""``datalayer worker``: every periodic job, each on its own schedule, in one process.

The jobs (defaults in ``JOBS``; ``DATALAYER_JOBS`` changes the intervals or
turns jobs off):

=============  =======  ==============================================================
job            every    what it does
=============  =======  ==============================================================
partitions     1 h      create event table partitions ``ahead`` months ahead
rollups        1 min    drain the usage and analytics rollup queues
billing        5 min    the billing run: renewals, invoices, finalisation, credit
reservations   1 min    return expired quota reservations
archive        1 day    archive and drop old event partitions (``DATALAYER_ARCHIVE_DIR``)
backup         1 day    ``pg_dump`` with a manifest (``DATALAYER_BACKUP_DIR``)
=============  =======  ==============================================================

How workers share the work. Any number may run. A job runs in one worker at
a time: a worker runs a job only while it holds the job's session advisory
lock, taken with ``pg_try_advisory_lock`` on a connection of its own, and only
when the job's row in ``maintenance_jobs`` says it is due. When a worker dies,
PostgreSQL ends its session and so frees its locks: at once when the process
dies (the kernel closes its socket), within the keepalive bound (about 1 min)
when its host vanishes. Another worker then takes the job at its next poll
(``poll`` seconds), marks the dead worker's run ``interrupted`` and runs the
job again. Each job is itself safe to run twice at once (batches that claim
with ``SKIP LOCKED`` or take a lock, idempotent DDL), so the lock saves work;
it is not what keeps the data right. The worker connects with the admin URL:
partitions, archives and backups need the owner, and the lock needs a direct
connection (never PgBouncer in transaction mode).

Every run is a row in ``maintenance_runs`` (started, finished, outcome, rows
touched, error). A failed run is retried after ``retry_base`` seconds,
doubling per failure in a row up to the job's interval. SIGTERM (or SIGINT)
sets the stop event: a job in progress finishes the batch in hand (every
batch is one transaction) and returns, its run is recorded ``stopped`` and
left due at once for the next worker, and the process exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from .._conninfo import redact
from .._database import Database, _connection_kwargs
from .._pooler import refuse_pooler
from .._settings import Settings
from ..errors import ConcurrencyConflict, DataLayerError, InvalidInput, map_error
from ..models.maintenance import MaintenanceRun, RunOutcome
from .roles import admin_url

__all__ = ["JOBS", "Job", "Worker", "WorkerSettings", "parse_schedule"]

log = logging.getLogger("datalayer.worker")

# pg_try_advisory_lock(LOCK_CLASS, hashtext(job)): the first key keeps these apart
# from any other advisory lock (migrate's, the rollups').
LOCK_CLASS = 0x646C7772  # "dlwr"


@dataclass(frozen=True, slots=True)
class Job:
    """A periodic job: its name, default interval and what it does."""

    name: str
    every: float
    description: str
    run: Callable[[Worker], int]


def _partitions(worker: Worker) -> int:
    from .partitions import ensure_partitions

    with worker.admin_connection() as conn:
        return len(ensure_partitions(conn, ahead=worker.config.partitions_ahead))


def _rollups(worker: Worker) -> int:
    from .rollups import refresh_rollups

    result = refresh_rollups(worker.db, stop=worker.stopping)
    return result.usage_days + result.analytics_days


def _billing(worker: Worker) -> int:
    result = worker.db.billing.run(stop=worker.stopping)
    if result.failed:
        raise DataLayerError(f"billing run: {result.failed} work item(s) failed (logged)")
    return result.generated + result.refreshed + result.finalized + result.renewed


def _reservations(worker: Worker) -> int:
    return worker.db.quotas.expire_reservations()


def _archive(worker: Worker) -> int:
    from .archive import archive_partitions

    out_dir = worker.config.archive_dir
    assert out_dir is not None  # the job is only scheduled with a directory
    with worker.admin_connection() as conn:
        results = archive_partitions(
            conn, older_than_months=worker.config.archive_after_months, out_dir=out_dir
        )
    return sum(r.rows or 0 for r in results if r.dropped)


def _backup(worker: Worker) -> int:
    from .backup import backup

    out_dir = worker.config.backup_dir
    assert out_dir is not None  # the job is only scheduled with a directory
    backup(worker.admin_url, out_dir)
    return 1


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job("partitions", 3600, "create event partitions ahead", _partitions),
        Job("rollups", 60, "drain the rollup queues", _rollups),
        Job("billing", 300, "the billing run", _billing),
        Job("reservations", 60, "return expired quota reservations", _reservations),
        Job("archive", 86400, "archive old event partitions", _archive),
        Job("backup", 86400, "pg_dump with a manifest", _backup),
    )
}
# Jobs that need a directory run only when it is configured.
_NEEDS_DIR = {"archive": "archive_dir", "backup": "backup_dir"}


def parse_schedule(text: str) -> dict[str, float | None]:
    """``"rollups=30,billing=600,archive=off"`` → seconds by job (``None``: off).

    Raises ``InvalidInput`` (field ``DATALAYER_JOBS``) naming the bad item.
    """
    schedule: dict[str, float | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or name not in JOBS:
            known = ", ".join(JOBS)
            raise InvalidInput(f"{item!r}: expected job=seconds or job=off, jobs: {known}",
                               field="DATALAYER_JOBS")  # fmt: skip
        if value.lower() == "off":
            schedule[name] = None
            continue
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not 0.05 <= seconds <= 366 * 86400:  # NaN fails too
            raise InvalidInput(f"{item!r}: seconds must be 0.05 to 31622400, or off",
                               field="DATALAYER_JOBS")  # fmt: skip
        schedule[name] = seconds
    return schedule


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The worker's own settings (``from_env`` reads ``DATALAYER_*``).

    ``schedule``: seconds by job, ``None`` for a job turned off; jobs not named
    keep their default. ``only``: run just these jobs. ``poll``: seconds
    between two looks at the jobs.
    """

    schedule: Mapping[str, float | None]
    only: tuple[str, ...] | None = None
    poll: float = 5.0
    retry_base: float = 5.0
    partitions_ahead: int = 3
    archive_dir: Path | None = None
    archive_after_months: int = 13
    backup_dir: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
        """``DATALAYER_JOBS``, ``DATALAYER_WORKER_POLL``, ``DATALAYER_ARCHIVE_DIR``,
        ``DATALAYER_ARCHIVE_AFTER_MONTHS``, ``DATALAYER_BACKUP_DIR``; ``overrides`` win."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {"schedule": parse_schedule(source.get("DATALAYER_JOBS", ""))}
        if source.get("DATALAYER_WORKER_POLL"):
            values["poll"] = _number(source["DATALAYER_WORKER_POLL"], "DATALAYER_WORKER_POLL")
        for var, field in (("DATALAYER_ARCHIVE_DIR", "archive_dir"),
                           ("DATALAYER_BACKUP_DIR", "backup_dir")):  # fmt: skip
            if source.get(var):
                values[field] = Path(source[var])
        if source.get("DATALAYER_ARCHIVE_AFTER_MONTHS"):
            raw = source["DATALAYER_ARCHIVE_AFTER_MONTHS"]
            if not raw.isdigit() or not 1 <= int(raw) <= 1200:
                raise InvalidInput("must be 1 to 1200", field="DATALAYER_ARCHIVE_AFTER_MONTHS")
            values["archive_after_months"] = int(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        unknown = sorted(set(settings.only or ()) - set(JOBS))
        if unknown:
            raise InvalidInput(f"unknown job(s) {', '.join(unknown)}; jobs: {', '.join(JOBS)}",
                               field="only")  # fmt: skip
        if not 0.1 <= settings.poll <= 3600:  # NaN fails too
            raise InvalidInput("must be 0.1 to 3600 seconds", field="poll")
        return settings

    def interval(self, job: str) -> float | None:
        """Seconds between runs of ``job``, or ``None`` when it does not run."""
        if self.only is not None and job not in self.only:
            return None
        if job in _NEEDS_DIR and getattr(self, _NEEDS_DIR[job]) is None:
            return None
        return self.schedule[job] if job in self.schedule else JOBS[job].every


def _number(raw: str, field: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput("must be a number of seconds", field=field) from None


class Worker:
    """Runs the periodic jobs; ``run()`` until stopped, ``run_once(job)`` for one run now."""

    def __init__(self, settings: Settings, config: WorkerSettings | None = None):
        self.settings = settings
        self.config = config or WorkerSettings.from_env()
        self.admin_url = admin_url(settings)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.jobs = [name for name in JOBS if self.config.interval(name) is not None]
        # Jobs work as the admin: partitions and archives are DDL the application role
        # may not run, and the admin also owns every row the other jobs write.
        self.db = Database(settings.model_copy(update={"database_url": self.admin_url}))
        self._lock_conn: psycopg.Connection[Any] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Worker:
        self.db.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()  # frees every job lock still held
            self._lock_conn = None
        self.db.close()

    def stop(self, *_: object) -> None:
        """Ask the worker to stop after the batch in hand (a signal handler)."""
        self.stopping.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker after the batch in hand."""

        def handler(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: finishing the batch in hand, then exiting", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @contextmanager
    def admin_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection with the admin URL, for DDL jobs."""
        try:
            conn = psycopg.connect(self.admin_url, **_connection_kwargs(self.settings))
            refuse_pooler(conn, f"the admin URL {redact(self.admin_url)}")  # DDL, SETs
        except psycopg.Error as exc:
            raise map_error(exc) from None
        with conn:
            yield conn

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Look at every job every ``poll`` seconds and run those due, until stopped."""
        log.info("worker %s: jobs %s, poll %ss", self.name, ", ".join(self.jobs), self.config.poll)
        while not self.stopping.is_set():
            for job in self.jobs:
                if self.stopping.is_set():
                    break
                try:
                    self.tick(job)
                except DataLayerError as exc:  # the database is away: try again next poll
                    log.warning("worker %s: %s: %s", self.name, job, exc)
                    self._drop_lock_connection()
            self.stopping.wait(self.config.poll)
        log.info("worker %s: stopped", self.name)

    def tick(self, job: str) -> MaintenanceRun | None:
        """Run ``job`` if it is due and no other worker holds it; the run, else ``None``."""
        return self._run(job, force=False)

    def run_once(self, job: str) -> MaintenanceRun:
        """Run ``job`` now, due or not, under its lock; the recorded run.

        Raises ``InvalidInput`` for an unknown job and ``ConcurrencyConflict``
        when another worker is running it.
        """
        if job not in JOBS:
            raise InvalidInput(f"unknown job; jobs: {', '.join(JOBS)}", field="job")
        if job in _NEEDS_DIR and getattr(self.config, _NEEDS_DIR[job]) is None:
            variable = f"DATALAYER_{_NEEDS_DIR[job].upper()}"
            raise InvalidInput(f"the {job} job needs a directory", field=variable)
        run = self._run(job, force=True)
        if run is None:
            raise ConcurrencyConflict(f"job {job} is running in another worker")
        return run

    def _run(self, job: str, *, force: bool) -> MaintenanceRun | None:
        every = self.config.interval(job) or JOBS[job].every
        with self._job_lock(job) as held:
            if not held:
                return None
            now = datetime.now(UTC)
            state = self.db.maintenance._job(job, due=now)
            if not force and state.next_due_at > now:
                return None
            run = self.db.maintenance._begin(
                job, worker=self.name, attempt=state.failures + 1, now=now
            )
            outcome: RunOutcome
            rows: int | None = None
            error: str | None = None
            try:
                rows = JOBS[job].run(self)
            except Exception as exc:
                outcome, error = "failed", _describe(exc, self.admin_url)
                log.warning("worker %s: job %s failed: %s", self.name, job, error)
            else:
                outcome = "stopped" if self.stopping.is_set() else "ok"
            end = datetime.now(UTC)
            failures = state.failures + 1 if outcome == "failed" else 0
            if outcome == "failed":
                due = end + timedelta(
                    seconds=min(every, self.config.retry_base * 2 ** min(state.failures, 30))
                )
            elif outcome == "stopped":
                due = end  # the next worker finishes what this one left
            else:
                due = end + timedelta(seconds=every)
            ok_at = end if outcome != "failed" else None
            finished = self.db.maintenance._end(
                run, outcome=outcome, now=end, rows=rows, error=error
            )
            self.db.maintenance._plan(job, due=due, failures=failures, ok_at=ok_at)
            log.info("worker %s: job %s %s (%s rows)", self.name, job, outcome, rows)
            return finished or run

    @contextmanager
    def _job_lock(self, job: str) -> Iterator[bool]:
        conn = self._lock_connection()
        try:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", [LOCK_CLASS, job]
            ).fetchone()
        except psycopg.Error as exc:
            self._drop_lock_connection()
            raise map_error(exc) from None
        held = bool(row and row[0])
        try:
            yield held
        finally:
            if held:
                try:
                    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [LOCK_CLASS, job])
                except psycopg.Error:  # the session is gone, and the lock with it
                    self._drop_lock_connection()

    def _lock_connection(self) -> psycopg.Connection[Any]:
        if self._lock_conn is None or self._lock_conn.closed:
            kwargs = {**_connection_kwargs(self.settings), "prepare_threshold": None}
            try:
                conn = psycopg.connect(self.admin_url, **kwargs)
                # A session advisory lock through a transaction pooler is no lock at all.
                refuse_pooler(conn, f"the admin URL {redact(self.admin_url)}")
                self._lock_conn = conn
            except psycopg.Error as exc:
                raise map_error(exc) from None
        return self._lock_conn

    def _drop_lock_connection(self) -> None:
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None


def _describe(exc: Exception, url: str) -> str:
    """An error for the runs table: its class and message, with no password, at most 2000
    characters."""
    text = f"{type(exc).__name__}: {exc}"
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text[:2000]


def _secrets(url: str) -> list[str]:
    from .._conninfo import secrets_in

    return [s for s in secrets_in(url) if s]
