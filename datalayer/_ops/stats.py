"""``datalayer stats``: PostgreSQL's own statistics (``pg_stat_statements``) by query name.

PostgreSQL speaks in query ids. Each named query is mapped to its id the way
the server computes it: the query is prepared (``$n`` parameters, as the
library sends it) and ``EXPLAIN (VERBOSE) EXECUTE`` prints its ``Query
Identifier`` (``compute_query_id`` must be on, as ``pg_stat_statements`` sets
it by default). Utility statements (``COPY``, the staging ``CREATE TEMP
TABLE``) cannot be prepared; PostgreSQL identifies those by their text, so
they are matched by it. The statistics of a query id are summed over the
roles that ran it, in the current database.

``--save FILE`` writes the figures as a baseline; ``--compare FILE`` prints
the change against one: calls since, and the mean time then and now.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg

from .._loader import Query
from .._repository import Repository
from ..errors import DataLayerError, InvalidInput

__all__ = ["Change", "QueryStats", "collect_stats", "compare", "load", "query_ids", "save"]

_UTILITY = re.compile(r"^\s*(COPY|CREATE|DROP|TRUNCATE|LOCK)\b", re.IGNORECASE)
_TEMP_DDL = re.compile(r"^\s*CREATE\s+TEMP", re.IGNORECASE)

_MISSING = (
    "pg_stat_statements is not available in this database: the server needs "
    "shared_preload_libraries = 'pg_stat_statements' (a restart), then, in the database, "
    "CREATE EXTENSION pg_stat_statements"
)


@dataclass(frozen=True, slots=True)
class QueryStats:
    """One named query's figures since the statistics were last reset (0 calls: never run)."""

    name: str
    queryid: int | None
    calls: int
    total_ms: float
    mean_ms: float
    rows: int
    shared_blks_hit: int
    shared_blks_read: int

    @property
    def hit_pct(self) -> float | None:
        blocks = self.shared_blks_hit + self.shared_blks_read
        return None if not blocks else 100 * self.shared_blks_hit / blocks


def _queries(repositories: tuple[type[Repository], ...]) -> list[Query]:
    found: dict[str, Query] = {}
    for repo in repositories:
        for ref in repo.query_refs.values():
            query = ref.query or ref.bound_query()
            found[f"{query.aggregate}.{query.name}"] = query
    return [found[name] for name in sorted(found)]


def query_ids(
    conn: psycopg.Connection[Any], repositories: tuple[type[Repository], ...]
) -> dict[str, int]:
    """The query id PostgreSQL gives each preparable named query, by ``aggregate.name``.

    Runs in a transaction that is rolled back (the staging tables some queries
    read are created in it first). Raises ``DataLayerError`` when the server
    computes no query ids (``compute_query_id = off``).
    """
    ids: dict[str, int] = {}
    queries = _queries(repositories)
    with conn.transaction(force_rollback=True):
        try:  # our own probes are not statistics (a superuser's setting)
            with conn.transaction():
                conn.execute("SET LOCAL pg_stat_statements.track = 'none'")
        except psycopg.Error:
            pass
        for query in queries:
            if _TEMP_DDL.match(query.positional_sql) and not query.params:
                conn.execute(query.positional_sql)
        for number, query in enumerate(queries):
            if _UTILITY.match(query.positional_sql):
                continue
            name = f"dl_stats_{number}"
            conn.pgconn.prepare(name.encode(), query.positional_sql.encode())
            args = ", ".join(["NULL"] * len(query.params))
            execute = f"EXECUTE {name}({args})" if args else f"EXECUTE {name}"
            row = conn.execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {execute}").fetchone()
            plan = row[0][0] if row else {}
            queryid = plan.get("Query Identifier")
            if queryid is None:
                raise DataLayerError(
                    "the server computes no query ids: set compute_query_id = on (or auto with "
                    "pg_stat_statements loaded)"
                )
            ids[f"{query.aggregate}.{query.name}"] = int(queryid)
            conn.execute(f"DEALLOCATE {name}")
    return ids


def collect_stats(
    conn: psycopg.Connection[Any], repositories: tuple[type[Repository], ...]
) -> list[QueryStats]:
    """Every named query's ``pg_stat_statements`` figures in this database, busiest first.

    ``conn`` is an autocommit connection whose role may read every role's
    statistics (a superuser or ``pg_read_all_stats``). Raises ``DataLayerError``
    saying what to set up when the extension is not there.
    """
    installed = conn.execute(
        "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
    ).fetchone()
    if installed is None:
        raise DataLayerError(_MISSING)
    ids = query_ids(conn, repositories)
    try:
        rows = conn.execute(
            "SELECT queryid, query, sum(calls)::bigint, sum(total_exec_time), sum(rows)::bigint,"
            " sum(shared_blks_hit)::bigint, sum(shared_blks_read)::bigint"
            " FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " GROUP BY queryid, query"
        ).fetchall()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        raise DataLayerError(_MISSING) from None
    by_text: dict[str, list[tuple[int, list[Any]]]] = {}
    by_id: dict[int, list[Any]] = {}
    for queryid, text, *figures in rows:
        by_text.setdefault(_normal(str(text)), []).append((queryid, figures))
        by_id[queryid] = figures
    claimed = set(ids.values())
    result = []
    for query in _queries(repositories):
        name = f"{query.aggregate}.{query.name}"
        queryid = ids.get(name)
        # The entry of the id the statement has when prepared as we prepare it; and, for a
        # statement with parameters (a parameter sent as another type, e.g. int2 for a small
        # int, gives another id) or one not found so, the entries of the same text, but none
        # that is another named query's id.
        entries: dict[int, list[Any]] = {}
        if queryid is not None and queryid in by_id:
            entries[queryid] = by_id[queryid]
        if query.params or not entries:
            for other_id, figures in by_text.get(_normal(query.positional_sql), []):
                if other_id not in claimed or other_id == queryid:
                    entries[other_id] = figures
        acc = [0, 0.0, 0, 0, 0]
        for figures in entries.values():
            _add(acc, figures)
        calls, total, nrows, hit, read = acc
        result.append(
            QueryStats(
                name=name,
                queryid=queryid,
                calls=int(calls),
                total_ms=round(float(total), 3),
                mean_ms=round(float(total) / calls, 4) if calls else 0.0,
                rows=int(nrows),
                shared_blks_hit=int(hit),
                shared_blks_read=int(read),
            )
        )
    return sorted(result, key=lambda s: (-s.total_ms, s.name))


# What pg_stat_statements replaces by $n in the text it keeps: literals (and our own $n).
_CONSTANT = re.compile(r"'(?:[^']|'')*'|\$\d+|\b\d+(?:\.\d+)?\b|\b(?:true|false|null)\b", re.I)


def _normal(sql: str) -> str:
    """``sql`` with every constant and parameter as ``?`` and whitespace collapsed."""
    return " ".join(_CONSTANT.sub("?", sql).split())


def _add(into: list[Any], figures: list[Any]) -> None:
    for i, value in enumerate(figures):
        into[i] += value or 0


def save(stats: list[QueryStats], path: Path) -> None:
    """Write ``stats`` as a JSON baseline."""
    path.write_text(json.dumps({"queries": [asdict(s) for s in stats]}, indent=2))


def load(path: Path) -> dict[str, QueryStats]:
    """A baseline written by ``save``; ``InvalidInput`` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
        return {item["name"]: QueryStats(**item) for item in data["queries"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{path}: not a stats baseline ({exc})", field="--compare") from None


@dataclass(frozen=True, slots=True)
class Change:
    """A query's figures now against the baseline's."""

    name: str
    calls: int
    mean_ms_before: float
    mean_ms_after: float

    @property
    def mean_change_pct(self) -> float | None:
        if not self.mean_ms_before:
            return None
        return 100 * (self.mean_ms_after - self.mean_ms_before) / self.mean_ms_before


def compare(now: list[QueryStats], before: dict[str, QueryStats]) -> list[Change]:
    """Calls since the baseline and the mean time of the calls since (when any), by query.

    The mean of the calls made since the baseline is (total now - total then) /
    (calls now - calls then), so old calls do not dilute a regression.
    """
    changes = []
    for stats in now:
        then = before.get(stats.name)
        calls_then = then.calls if then else 0
        total_then = then.total_ms if then else 0.0
        calls = stats.calls - calls_then
        if calls < 0:  # the statistics were reset since the baseline
            calls, total_then, calls_then = stats.calls, 0.0, 0
        mean_after = (stats.total_ms - total_then) / calls if calls else 0.0
        changes.append(
            Change(stats.name, calls, then.mean_ms if then else 0.0, round(mean_after, 4))
        )
    return changes
