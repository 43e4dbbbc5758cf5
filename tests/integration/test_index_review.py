"""Every index exists for a named query and none duplicates another: catalog vs. migrations.

Every index of the migrated ``public`` schema (for a partitioned table, the
parent's index only) is documented in a migration (``migrations/*.sql``, not
the rollbacks), in one of two forms:

- directly above its ``CREATE [UNIQUE] INDEX``, a comment line
  ``-- used by: query_a, query_b (note)``, continued on comment lines indented
  by two spaces or more;
- for the indexes of PRIMARY KEY and UNIQUE constraints, one block per table:
  ``-- indexes:`` then one ``--   <index> used by <entries>`` line per index,
  continued on lines indented deeper.

An entry is a named query of ``sql/*.sql`` (as the loader reads them), or
``FK <constraint>`` for an index that serves a foreign key of its own table,
or a ``datalayer/....py`` file running ad-hoc SQL; each may carry a note in
parentheses. The check fails, naming the index, for an undocumented index, an
entry naming a query that does not exist, an FK the index does not cover, or
a missing file.

No two indexes of a table are duplicates: same access method and predicate,
the key columns (with operator class, collation and ordering) of one a leading
prefix of the other's, where the shorter one is not unique. A unique index is
not redundant; two unique indexes on the same key are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from datalayer._loader import Query, load_sql_dir
from datalayer._resources import migrations_dir, sql_dir

Conn = psycopg.Connection[Any]

REPO = migrations_dir().parent


@pytest.fixture
def conn(admin_conn: Conn) -> Conn:
    """The rolled-back test transaction, as the admin: the probes create indexes."""
    return admin_conn


_USED_BY = re.compile(r"^--\s*used by:\s*(?P<rest>.*)$")
_INDEXES = re.compile(r"^--\s*indexes:\s*(?P<rest>.*)$")
_CONTINUED = re.compile(r"^--\s{2,}(?P<rest>\S.*)$")
_ITEM = re.compile(r"^(?P<index>[a-z_][a-z0-9_]*) used by (?P<rest>.*)$")
_CREATE_INDEX = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>\w+)",
    re.IGNORECASE,
)
_ENTRY = re.compile(r"^(?P<fk>FK\s+)?(?P<target>[A-Za-z0-9_./]+)(?:\s*\((?P<note>.*)\))?$")
_QUERY_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Doc:
    """What a migration says serves one index."""

    where: str
    entries: tuple[str, ...]


@dataclass(frozen=True)
class Index:
    """One index as the catalog describes it."""

    name: str
    table: str
    method: str
    predicate: str | None
    unique: bool
    primary: bool
    # Per key column (INCLUDE columns left out): definition, opclass, collation.
    keys: tuple[tuple[str, int, int], ...]
    # Per key column: indoption (bit 1 DESC, bit 2 NULLS FIRST).
    options: tuple[int, ...]


def _entries(text: str) -> tuple[str, ...]:
    """Split at the commas outside parentheses."""
    parts, current, depth = [], "", 0
    for char in text:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return tuple(parts)


def parse_index_docs(text: str, source: str) -> dict[str, list[Doc]]:
    """The documented indexes of one migration's text, by index name."""
    docs: dict[str, list[Doc]] = {}
    used_by: tuple[int, list[str]] | None = None  # awaiting its CREATE INDEX
    items: list[tuple[int, str, list[str]]] = []  # of the open "-- indexes:" block
    mode: str | None = None  # what an indented comment line continues

    def close_block() -> None:
        for line, index, parts in items:
            docs.setdefault(index, []).append(Doc(f"{source}:{line}", _entries(" ".join(parts))))
        items.clear()

    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        continued = _CONTINUED.match(line)
        if match := _USED_BY.match(line):
            close_block()
            used_by, mode = (number, [match["rest"]]), "used_by"
        elif match := _INDEXES.match(line):
            close_block()
            mode = "indexes"
            if item := _ITEM.match(match["rest"]):
                items.append((number, item["index"], [item["rest"]]))
        elif continued and mode == "used_by" and used_by is not None:
            used_by[1].append(continued["rest"])
        elif continued and mode == "indexes":
            if item := _ITEM.match(continued["rest"]):
                items.append((number, item["index"], [item["rest"]]))
            elif items:
                items[-1][2].append(continued["rest"])
        elif line.startswith("--"):
            close_block()
            mode = None  # a plain comment line: a pending "used by" still waits
        else:
            close_block()
            mode = None
            if (match := _CREATE_INDEX.match(line)) and used_by is not None:
                docs.setdefault(match["name"], []).append(
                    Doc(f"{source}:{used_by[0]}", _entries(" ".join(used_by[1])))
                )
            used_by = None  # only a comment directly above counts
    close_block()
    return docs


def migration_docs(directory: Path | None = None) -> dict[str, list[Doc]]:
    """The documented indexes of every forward migration, by index name.

    A later migration that rebuilds an index (0018 re-keys the rollup queues'
    primary keys) documents it anew: its entry replaces the earlier ones. Twice
    in one migration is still twice.
    """
    directory = directory or migrations_dir()
    docs: dict[str, list[Doc]] = {}
    for path in sorted(directory.glob("*.sql")):
        if path.name.endswith(".rollback.sql"):
            continue
        for index, found in parse_index_docs(path.read_text(), path.name).items():
            docs[index] = list(found)
    return docs


def catalog_indexes(conn: Conn) -> list[Index]:
    """Every index of the public schema; of a partitioned table, the parent's only."""
    rows = conn.execute(
        """
        SELECT ic.relname, tc.relname, am.amname, pg_get_expr(i.indpred, i.indrelid),
               i.indisunique, i.indisprimary,
               ARRAY(SELECT pg_get_indexdef(i.indexrelid, k, true)
                     FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k),
               i.indclass::oid[], i.indcollation::oid[], i.indoption::int2[]
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_am am ON am.oid = ic.relam
        WHERE tc.relnamespace = 'public'::regnamespace
          AND NOT ic.relispartition
          AND NOT starts_with(tc.relname, '_yoyo_')
          AND tc.relname <> 'yoyo_lock'
        ORDER BY tc.relname, ic.relname
        """
    ).fetchall()
    return [
        Index(
            name=name,
            table=table,
            method=method,
            predicate=predicate,
            unique=unique,
            primary=primary,
            keys=tuple(zip(columns, opclasses, collations, strict=True)),
            options=tuple(options),
        )
        for (
            name,
            table,
            method,
            predicate,
            unique,
            primary,
            columns,
            opclasses,
            collations,
            options,
        ) in rows
    ]


def _foreign_key_columns(conn: Conn, table: str, constraint: str) -> list[str] | None:
    row = conn.execute(
        """
        SELECT array(SELECT a.attname FROM unnest(c.conkey) AS k(attnum)
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum)
        FROM pg_constraint c
        WHERE c.conrelid = %s::regclass AND c.conname = %s AND c.contype = 'f'
        """,
        [table, constraint],
    ).fetchone()
    return None if row is None else list(row[0])


def _serves_foreign_key(index: Index, columns: list[str]) -> bool:
    """Its leading key columns are the FK's, and any predicate is "<fk column> IS NOT NULL"."""
    leading = {definition for definition, _, _ in index.keys[: len(columns)]}
    return leading == set(columns) and (
        index.predicate is None or index.predicate in {f"({c} IS NOT NULL)" for c in columns}
    )


def review_problems(
    conn: Conn, docs: Mapping[str, list[Doc]], queries: Mapping[str, Query]
) -> list[str]:
    """What is wrong with the documentation of each catalog index, each naming the index."""
    problems = []
    for index in catalog_indexes(conn):
        found = docs.get(index.name, [])
        if not found:
            problems.append(
                f"{index.name} (on {index.table}) has no '-- used by:' comment above its"
                " CREATE INDEX and no '-- indexes:' entry in any migration"
            )
            continue
        if len(found) > 1:
            places = ", ".join(d.where for d in found)
            problems.append(f"{index.name} is documented more than once ({places})")
        for doc in found:
            if not any(doc.entries):
                problems.append(f"{index.name} ({doc.where}): 'used by' names nothing")
                continue
            for entry in doc.entries:
                problem = _entry_problem(conn, index, entry, queries)
                if problem:
                    problems.append(f"{index.name} ({doc.where}): {problem}")
    return problems


def _entry_problem(
    conn: Conn, index: Index, entry: str, queries: Mapping[str, Query]
) -> str | None:
    match = _ENTRY.match(entry)
    if match is None:
        return f"cannot read the entry {entry!r}"
    target = match["target"]
    if match["fk"]:
        columns = _foreign_key_columns(conn, index.table, target)
        if columns is None:
            return f"{target} is not a foreign key of {index.table}"
        if not _serves_foreign_key(index, columns):
            return f"does not cover the columns of {target} ({', '.join(columns)})"
        return None
    if target.startswith("datalayer/") and target.endswith(".py"):
        return None if (REPO / target).is_file() else f"{target} does not exist"
    if not _QUERY_NAME.match(target):
        return f"cannot read the entry {entry!r}"
    return None if target in queries else f"names {target}, which no sql/*.sql query is"


def _served_by(short: Index, long: Index) -> bool:
    """``long`` serves every scan ``short`` does: same method and predicate, leading keys."""
    n = len(short.keys)
    if (short.method, short.predicate) != (long.method, long.predicate) or n > len(long.keys):
        return False
    if short.keys != long.keys[:n]:
        return False
    # A backward scan flips both DESC and NULLS FIRST of every column.
    flipped = tuple(option ^ 3 for option in short.options)
    return long.options[:n] in (short.options, flipped)


def _rank(index: Index) -> tuple[bool, bool, str]:
    return (index.primary, index.unique, index.name)


def duplicate_pairs(indexes: Iterable[Index]) -> list[str]:
    """Each redundant index with the one that makes it so."""
    by_table: dict[str, list[Index]] = {}
    for index in indexes:
        by_table.setdefault(index.table, []).append(index)
    problems = []
    for table, group in sorted(by_table.items()):
        for short in group:
            for long in group:
                if short is long or not _served_by(short, long):
                    continue
                same_keys = len(short.keys) == len(long.keys)
                if same_keys and _rank(short) > _rank(long):
                    continue  # reported once: the one to drop is the less constraining
                if short.unique and not same_keys:
                    continue  # a unique prefix enforces what the longer one cannot
                problems.append(
                    f"{short.name} duplicates {long.name} on {table}: its key columns "
                    f"({', '.join(k[0] for k in short.keys)}) lead {long.name}"
                )
    return problems


@pytest.fixture(scope="module")
def queries() -> dict[str, Query]:
    return load_sql_dir(sql_dir())


@pytest.fixture(scope="module")
def docs() -> dict[str, list[Doc]]:
    return migration_docs()


# -- the schema as migrated -------------------------------------------------------------------


def test_the_review_sees_the_indexes_of_every_kind(conn: Conn) -> None:
    """Guard against a vacuous catalog query: plain, unique, primary and partitioned parents."""
    names = {index.name for index in catalog_indexes(conn)}
    assert {
        "accounts_pkey",
        "users_email_key",
        "files_claim_idx",
        "usage_events_pkey",
        "usage_events_account_meter_time_idx",
    } <= names
    assert not {n for n in names if n.startswith("usage_events_20")}, "no partition's index"
    assert not {n for n in names if "yoyo" in n}


def test_every_index_is_documented_with_the_named_queries_that_use_it(
    conn: Conn, docs: dict[str, list[Doc]], queries: dict[str, Query]
) -> None:
    problems = review_problems(conn, docs, queries)
    assert problems == [], "\n".join(problems)


def test_every_documented_index_exists(conn: Conn, docs: dict[str, list[Doc]]) -> None:
    """A comment about an index that is gone (dropped, renamed) is out of date."""
    existing = {index.name for index in catalog_indexes(conn)}
    stale = [f"{name} ({found[0].where})" for name, found in docs.items() if name not in existing]
    assert stale == [], f"documented but not in the schema: {stale}"


def test_no_index_duplicates_another(conn: Conn) -> None:
    problems = duplicate_pairs(catalog_indexes(conn))
    assert problems == [], "\n".join(problems)


# -- the review can fail ----------------------------------------------------------------------


def test_an_undocumented_index_fails_the_review(
    conn: Conn, docs: dict[str, list[Doc]], queries: dict[str, Query]
) -> None:
    conn.execute("CREATE INDEX review_probe_idx ON accounts (name)")
    problems = review_problems(conn, docs, queries)
    assert len(problems) == 1
    assert problems[0].startswith("review_probe_idx (on accounts) has no '-- used by:'")


def test_an_index_on_a_partitioned_table_is_reviewed_once_not_per_partition(
    conn: Conn, docs: dict[str, list[Doc]], queries: dict[str, Query]
) -> None:
    conn.execute("CREATE INDEX review_probe_idx ON usage_events (api_key_id)")
    problems = review_problems(conn, docs, queries)
    assert [p.split(" ", 1)[0] for p in problems] == ["review_probe_idx"]


@pytest.mark.parametrize(
    ("comment", "problem"),
    [
        ("-- used by: get_account, get_acount", "names get_acount, which no sql/*.sql query is"),
        ("-- used by: FK users_account_id_fkey", "users_account_id_fkey is not a foreign key"),
        ("-- used by: FK files_uploaded_by_fkey", "does not cover the columns of"),
        ("-- used by: datalayer/_nowhere.py (pruning)", "datalayer/_nowhere.py does not exist"),
        ("-- used by: Get Account", "cannot read the entry 'Get Account'"),
        ("-- used by:", "'used by' names nothing"),
    ],
)
def test_a_used_by_comment_that_is_not_true_fails_the_review(
    conn: Conn, docs: dict[str, list[Doc]], queries: dict[str, Query], comment: str, problem: str
) -> None:
    conn.execute("CREATE INDEX review_probe_idx ON files (account_id, content_type)")
    sql = f"{comment}\nCREATE INDEX review_probe_idx ON files (account_id, content_type);\n"
    probe = parse_index_docs(sql, "9999_probe.sql")
    problems = review_problems(conn, {**docs, **probe}, queries)
    assert len(problems) == 1
    assert problems[0].startswith("review_probe_idx (9999_probe.sql:1): ")
    assert problem in problems[0]


def test_a_true_used_by_comment_passes_the_review(
    conn: Conn, docs: dict[str, list[Doc]], queries: dict[str, Query]
) -> None:
    conn.execute("CREATE INDEX review_probe_idx ON files (account_id, uploaded_by)")
    sql = (
        "-- A probe.\n"
        "-- used by: get_file (a note, with a comma), FK files_uploaded_by_fkey,\n"
        "--   datalayer/_ops/export.py (export)\n"
        "CREATE INDEX review_probe_idx ON files (account_id, uploaded_by);\n"
    )
    probe = parse_index_docs(sql, "9999_probe.sql")
    assert probe["review_probe_idx"][0].entries == (
        "get_file (a note, with a comma)",
        "FK files_uploaded_by_fkey",
        "datalayer/_ops/export.py (export)",
    )
    assert review_problems(conn, {**docs, **probe}, queries) == []


def test_a_used_by_comment_counts_only_directly_above_its_create_index() -> None:
    sql = "-- used by: get_file\n\nCREATE INDEX review_probe_idx ON files (account_id);\n"
    assert parse_index_docs(sql, "9999_probe.sql") == {}


def test_an_indexes_block_documents_each_constraint_index_on_its_own_line() -> None:
    sql = (
        "-- indexes:\n"
        "--   probe_pkey used by get_file, list_files,\n"
        "--     delete_file (by key)\n"
        "--   probe_key used by create_file (uniqueness)\n"
        "CREATE TABLE probe (id bigint PRIMARY KEY);\n"
    )
    docs = parse_index_docs(sql, "9999_probe.sql")
    assert {name: [d.entries for d in found] for name, found in docs.items()} == {
        "probe_pkey": [("get_file", "list_files", "delete_file (by key)")],
        "probe_key": [("create_file (uniqueness)",)],
    }
    assert docs["probe_key"][0].where == "9999_probe.sql:4"


@pytest.mark.parametrize(
    ("ddl", "duplicated"),
    [
        ("CREATE INDEX review_probe_idx ON users (account_id)", "users_pkey"),
        ("CREATE INDEX review_probe_idx ON users (account_id DESC)", "users_pkey"),
        ("CREATE INDEX review_probe_idx ON files (account_id, status)", "files_account_status_idx"),
        ("CREATE UNIQUE INDEX review_probe_idx ON users (account_id, id)", "users_pkey"),
    ],
)
def test_a_leading_prefix_duplicate_fails_the_review(conn: Conn, ddl: str, duplicated: str) -> None:
    conn.execute(ddl.encode())
    problems = duplicate_pairs(catalog_indexes(conn))
    assert len(problems) == 1
    assert "review_probe_idx" in problems[0]
    assert duplicated in problems[0]


@pytest.mark.parametrize(
    "ddl",
    [
        # unique: enforces what the longer index cannot
        "CREATE UNIQUE INDEX review_probe_idx ON users (account_id)",
        # another predicate
        "CREATE INDEX review_probe_idx ON users (account_id) WHERE deleted_at IS NULL",
        # another access method
        "CREATE INDEX review_probe_idx ON users USING hash (account_id)",
        # another operator class
        "CREATE INDEX review_probe_idx ON files (account_id, status text_pattern_ops)",
        # mixed ordering no scan direction of the longer index gives
        "CREATE INDEX review_probe_idx ON users (account_id, id DESC)",
    ],
)
def test_an_index_that_differs_from_a_longer_one_is_not_a_duplicate(conn: Conn, ddl: str) -> None:
    conn.execute(ddl.encode())
    assert duplicate_pairs(catalog_indexes(conn)) == []
