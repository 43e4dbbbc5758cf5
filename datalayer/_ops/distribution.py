"""``datalayer check-distribution``: what would not distribute on Citus, sharded by account.

Read on plain PostgreSQL, from the catalog and the named queries, with the
layout Citus would give the schema:

* **distributed** by ``account_id``: every table with that column, and
  ``accounts`` by its ``id`` (the account id), all colocated;
* **reference**: the small shared tables without it (the price book, meters,
  invoice number counters), and the global lookups (``user_emails``,
  ``api_key_hashes``: a key across accounts -> its account), which carry
  ``account_id`` but are keyed without it;
* **local** (on the coordinator only): the maintenance worker's bookkeeping and
  yoyo's.

It reports, with the file and line that defines the object or the query:

* a primary key or unique constraint of a distributed table without the
  distribution column (Citus cannot enforce it across shards);
* an identity column on a distributed table that is not ``bigint`` (Citus
  gives each node its own range of a bigint identity; "cannot complete
  operation on a table with identity column" otherwise, and also when a table
  with one became a "Citus local" table first: ``_ops/citus.py`` avoids that);
* a trigger on a distributed or reference table (Citus refuses to distribute a
  table with triggers unless ``citus.enable_unsafe_triggers``, which is no
  answer), statement triggers with transition tables above all;
* a foreign key from a reference or local table to a distributed one, or
  between distributed tables without the distribution column on both sides;
* a query that locks rows (``FOR UPDATE``/``SKIP LOCKED``) of a distributed
  table without pinning one account (``account_id = :param``): a cross-tenant
  claim, which Citus runs only within one shard;
* an ``UPDATE`` or ``DELETE`` of a distributed table that does not pin one
  account: a multi-shard write.

Exit status 1 when it finds anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg

from .._loader import Query
from .._repository import Repository
from .._resources import migrations_dir

__all__ = [
    "ACCEPTED_QUERIES",
    "DISTRIBUTION_COLUMN",
    "PLAIN_ONLY_TRIGGERS",
    "REFERENCE_TABLES",
    "Finding",
    "check_distribution",
    "table_layout",
]

# Shared tables that would be replicated to every node, and the coordinator's own. The
# global lookups name an account in each row but are keyed by what is unique across
# accounts (migrations/0019_global_lookups.sql): reference tables, not distributed ones.
REFERENCE_TABLES = frozenset(
    {"meters", "plans", "plan_meters", "plan_seals", "plan_meter_seals", "plan_archivals",
     "invoice_number_counters", "user_emails", "api_key_hashes"}
)  # fmt: skip
LOCAL_TABLES = frozenset(
    {"maintenance_jobs", "maintenance_runs", "_yoyo_migration", "_yoyo_log", "_yoyo_version",
     "yoyo_lock"}
)  # fmt: skip
DISTRIBUTION_COLUMN = "account_id"

_EVENTS_KEPT = (
    "dropped on Citus by the distribution step (_ops/citus.py); the application role may only "
    "SELECT and INSERT events there (grants), as everywhere"
)
_LEDGER_KEPT = (
    "dropped on Citus by the distribution step; the application role may only SELECT and "
    "INSERT the ledger (grants), and the library books through book_ledger_transaction, which "
    "refuses unbalanced entries (migration 0020)"
)
# The plain layout's triggers that Citus refuses, by table: the distribution
# step drops them, and each guarantee holds on the cluster by the means given.
PLAIN_ONLY_TRIGGERS: dict[str, dict[str, str]] = {
    "usage_events": {"usage_events_append_only": _EVENTS_KEPT},
    "analytics_events": {"analytics_events_append_only": _EVENTS_KEPT},
    "ledger_transactions": {
        "ledger_transactions_append_only": _LEDGER_KEPT,
        "ledger_transactions_no_truncate": _LEDGER_KEPT,
    },
    "ledger_entries": {
        "ledger_entries_append_only": _LEDGER_KEPT,
        "ledger_entries_no_truncate": _LEDGER_KEPT,
        "ledger_entries_balanced": _LEDGER_KEPT,
    },
}
# Named queries that do not distribute on purpose, and why.
ACCEPTED_QUERIES: dict[str, str] = {
    "billing.finalize_invoice": (
        "invoice numbers are gap-free per year, so finalising takes the year's counter row: on "
        "Citus a reference-table write (to every node) per finalisation (README: Scaling out "
        "with Citus, for its cost)"
    ),
}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that would not distribute, and where it is defined.

    ``accepted`` says why a finding is left as it is on purpose (the
    distribution step handles it, or the design needs it); ``None`` for a defect.
    """

    where: str  # path:line
    subject: str  # a table, constraint, trigger or query
    problem: str
    accepted: str | None = None

    def __str__(self) -> str:
        line = f"{self.where}: {self.subject}: {self.problem}"
        return line if self.accepted is None else f"{line} [accepted: {self.accepted}]"


def _distribution_column(table: str) -> str:
    return "id" if table == "accounts" else DISTRIBUTION_COLUMN


class _Sources:
    """Where a table, constraint, index or trigger is created in the migrations."""

    def __init__(self, directory: Path):
        self.lines: list[tuple[Path, int, str]] = []
        for path in sorted(directory.glob("*.sql")):
            if path.name.endswith(".rollback.sql"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                self.lines.append((path, number, line))

    def find(self, *patterns: str) -> str:
        """``path:line`` of the first line matching any pattern (in migration order)."""
        for pattern in patterns:
            regex = re.compile(pattern, re.IGNORECASE)
            for path, number, line in self.lines:
                if regex.search(line):
                    return f"{path.parent.name}/{path.name}:{number}"
        return "migrations/?"


def table_layout(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Every ordinary or partitioned table of the schema (not partitions), by its layout."""
    rows = conn.execute(
        "SELECT c.relname,"
        "       EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid"
        "               AND a.attname = 'account_id' AND NOT a.attisdropped)"
        " FROM pg_class c"
        " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
        "   AND NOT c.relispartition"
    ).fetchall()
    layout = {}
    for name, has_account in rows:
        if name in LOCAL_TABLES:
            layout[name] = "local"
        elif name in REFERENCE_TABLES:
            layout[name] = "reference"
        elif name == "accounts" or has_account:
            layout[name] = "distributed"
        else:
            layout[name] = "local"
    return layout


def _catalog_findings(conn: psycopg.Connection[Any], sources: _Sources) -> list[Finding]:
    layout = table_layout(conn)
    distributed = {t for t, kind in layout.items() if kind == "distributed"}
    findings: list[Finding] = []
    for table, name, kind, columns in conn.execute(
        "SELECT c.relname, k.conname, k.contype::text,"
        "       array(SELECT a.attname::text FROM unnest(k.conkey) AS n"
        "             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = n)"
        " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND k.contype IN ('p', 'u')"
        "   AND NOT c.relispartition AND k.conparentid = 0"
        " ORDER BY 1, 2"
    ).fetchall():
        if table in distributed and _distribution_column(table) not in columns:
            what = "primary key" if kind == "p" else "unique constraint"
            findings.append(
                Finding(
                    sources.find(rf"\b{name}\b", rf"CREATE TABLE {table}\b"),
                    f"{table}.{name}",
                    f"{what} ({', '.join(columns)}) lacks {_distribution_column(table)}: "
                    "not enforceable across shards",
                )
            )
    for table, name, columns, definition in conn.execute(
        "SELECT c.relname, i.relname,"
        "       array(SELECT a.attname::text FROM unnest(x.indkey) AS n"
        "             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = n),"
        "       pg_get_indexdef(x.indexrelid)"
        " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_class c ON c.oid = x.indrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND x.indisunique"
        "   AND NOT c.relispartition"
        "   AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)"
        " ORDER BY 1, 2"
    ).fetchall():
        if table in distributed and _distribution_column(table) not in columns:
            findings.append(
                Finding(
                    sources.find(rf"INDEX {name}\b"),
                    f"{table}.{name}",
                    f"unique index {definition.split(' USING ')[-1].removeprefix('btree ')} lacks "
                    f"{_distribution_column(table)}: "
                    "not enforceable across shards",
                )
            )
    for table, column in conn.execute(
        "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND a.attidentity <> ''"
        "   AND a.atttypid <> 'bigint'::regtype"
        "   AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1, 2"
    ).fetchall():
        if table in distributed:
            findings.append(
                Finding(
                    sources.find(rf"CREATE TABLE {table}\b"),
                    f"{table}.{column}",
                    "identity column that is not bigint: Citus distributes bigint ones only",
                )
            )
    for table, trigger, transition in conn.execute(
        "SELECT c.relname, t.tgname, (t.tgoldtable IS NOT NULL OR t.tgnewtable IS NOT NULL)"
        " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal"
        "   AND NOT c.relispartition ORDER BY 1, 2"
    ).fetchall():
        kind = layout.get(table, "local")
        if kind in ("distributed", "reference"):
            extra = " with transition tables" if transition else ""
            findings.append(
                Finding(
                    sources.find(rf"CREATE (CONSTRAINT )?TRIGGER {trigger}\b"),
                    f"{table}.{trigger}",
                    f"trigger{extra} on a {kind} table: Citus refuses to distribute it",
                    PLAIN_ONLY_TRIGGERS.get(table, {}).get(trigger),
                )
            )
    for table, name, target, columns, target_columns in conn.execute(
        "SELECT c.relname, k.conname, f.relname,"
        "       array(SELECT a.attname::text FROM unnest(k.conkey) AS n"
        "             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = n),"
        "       array(SELECT a.attname::text FROM unnest(k.confkey) AS n"
        "             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = n)"
        " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
        " JOIN pg_class f ON f.oid = k.confrelid"
        " WHERE c.relnamespace = current_schema()::regnamespace AND k.contype = 'f'"
        "   AND NOT c.relispartition AND k.conparentid = 0 ORDER BY 1, 2"
    ).fetchall():
        source, goal = layout.get(table, "local"), layout.get(target, "local")
        problem = None
        if goal == "distributed" and source != "distributed":
            problem = f"foreign key from a {source} table to the distributed {target}"
        elif source == goal == "distributed":
            mine, theirs = _distribution_column(table), _distribution_column(target)
            pairs = dict(zip(columns, target_columns, strict=True))
            if pairs.get(mine) != theirs:
                problem = f"foreign key to {target} without {mine} -> {theirs}: not colocated"
        if problem:
            findings.append(
                Finding(
                    sources.find(rf"\b{name}\b", rf"CREATE TABLE {table}\b"),
                    f"{table}.{name}",
                    problem,
                )
            )
    return findings


_PINNED = re.compile(rf"\b{DISTRIBUTION_COLUMN}\s*=\s*(:\w+|\$\d+)", re.IGNORECASE)
_PINNED_ACCOUNT = re.compile(r"\bid\s*=\s*(:\w+|\$\d+)", re.IGNORECASE)  # accounts.id
_INSERT = re.compile(r"\bINSERT\s+INTO\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)
_LOCKING = re.compile(r"\bFOR\s+(UPDATE|NO\s+KEY\s+UPDATE|SHARE)\b", re.IGNORECASE)
_WRITE = re.compile(r"\b(UPDATE|DELETE\s+FROM)\s+(ONLY\s+)?([a-z_][a-z0-9_]*)", re.IGNORECASE)
_SELECT = re.compile(r"\bSELECT\b", re.IGNORECASE)
_NOISE = re.compile(r"--[^\n]*|'(?:[^']|'')*'")


def _segment_start(sql: str, end: int) -> int:
    """Where the SELECT whose clause ends at ``end`` starts: the last SELECT at depth 0
    when walking back from ``end`` (parentheses balanced)."""
    depth = 0
    for i in range(end - 1, -1, -1):
        ch = sql[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            if depth == 0:
                return i + 1
            depth -= 1
        elif depth == 0 and _SELECT.match(sql, i) and (i == 0 or not sql[i - 1].isalnum()):
            return i
    return 0


def _statement_end(sql: str, start: int) -> int:
    """The end of the clause that starts at ``start``: the closing parenthesis at its depth."""
    depth = 0
    for i in range(start, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            if depth == 0:
                return i
            depth -= 1
    return len(sql)


def _outside_subqueries(sql: str) -> str:
    """``sql`` with every parenthesised subquery (``(SELECT …)``) blanked out."""
    out = list(sql)
    starts: list[int] = []
    for i, ch in enumerate(sql):
        if ch == "(":
            starts.append(i)
        elif ch == ")" and starts:
            start = starts.pop()
            if _SELECT.match(sql[start + 1 : i].lstrip()):
                out[start : i + 1] = " " * (i + 1 - start)
    return "".join(out)


def _query_findings(query: Query, distributed: set[str]) -> list[Finding]:
    sql = _NOISE.sub(lambda m: " " * len(m.group(0)), query.positional_sql)
    where = f"{_relative(query.path)}:{query.line}"
    subject = f"{query.aggregate}.{query.name}"
    findings = []
    for match in _LOCKING.finditer(sql):
        segment = sql[_segment_start(sql, match.start()) : match.start()]
        tables = {t for t in distributed if re.search(rf"\b{t}\b", segment)}
        if tables and not _PINNED.search(segment):
            findings.append(
                Finding(
                    where,
                    subject,
                    f"locks rows of {', '.join(sorted(tables))} across accounts "
                    f"(FOR {match.group(1).upper()} without {DISTRIBUTION_COLUMN} = :param): "
                    "Citus locks within one shard only",
                )
            )
    # A write is pinned only by its own WHERE: one joined on account_id to rows of a
    # CTE or subquery pinned to one account is not. Citus plans the pinned part as a
    # subplan and sends the write itself to every shard (EXPLAIN of touch_api_key and
    # settle_quota_reservation on Citus 13.2 showed a one-task subplan, then 32 tasks).
    for match in _WRITE.finditer(sql):
        table = match.group(3)
        if table not in distributed:
            continue
        segment = _outside_subqueries(sql[match.start() : _statement_end(sql, match.end())])
        pinned = _PINNED.search(segment)
        if table == "accounts":
            pinned = pinned or _PINNED_ACCOUNT.search(segment)
        if not pinned:
            verb = match.group(1).split()[0].upper()
            findings.append(
                Finding(
                    where,
                    subject,
                    f"{verb} of {table} not pinned to one account "
                    f"({DISTRIBUTION_COLUMN} = :param): a multi-shard write",
                )
            )
    written = {m.group(1) for m in _INSERT.finditer(sql)} | {
        m.group(3) for m in _WRITE.finditer(sql)
    }
    for table in sorted(written & REFERENCE_TABLES):
        if written & distributed:  # a tenant's operation that also writes the shared row
            findings.append(
                Finding(
                    where,
                    subject,
                    f"writes the reference table {table} with tenant rows: every write goes "
                    "to every node, and each such transaction waits on the shared row",
                )
            )
    return findings


def _relative(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def check_distribution(
    conn: psycopg.Connection[Any], repositories: tuple[type[Repository], ...]
) -> list[Finding]:
    """Everything of the migrated schema (``conn``) and the named queries that would not
    distribute by account on Citus; empty when all would. Findings left on purpose
    carry ``accepted`` (their reason)."""
    sources = _Sources(migrations_dir())
    findings = _catalog_findings(conn, sources)
    distributed = {t for t, kind in table_layout(conn).items() if kind == "distributed"}
    seen: set[str] = set()
    for repo in repositories:
        for ref in repo.query_refs.values():
            query = ref.query or ref.bound_query()
            if query.name in seen:
                continue
            seen.add(query.name)
            findings += _query_findings(query, distributed)
    return [
        replace(f, accepted=ACCEPTED_QUERIES[f.subject]) if f.subject in ACCEPTED_QUERIES else f
        for f in findings
    ]
