"""Reading ``sql/*.sql`` into named, parsed queries; strict, with file and line in every error."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, LiteralString, cast, get_args

from ._sqlparse import LexError, has_code, lex
from .errors import SQLLoadError

__all__ = ["Cardinality", "Query", "load_file", "load_sql_dir", "parse_sql"]

Cardinality = Literal["one", "many", "exec", "execrows", "scalar", "copy"]
_CARDINALITIES: frozenset[str] = frozenset(get_args(Cardinality))

# Any comment line that tries to be a header; it must then match _HEADER exactly.
# "-- name: …", or "-- name get_x :one" with its colon forgotten; a doc line such
# as "-- name of the account" is neither.
_HEADER_LIKE = re.compile(r"^\s*--\s*name\b\s*(?::|\S+\s+:\w+\s*$)", re.IGNORECASE)
_HEADER = re.compile(r"^--\s?name:\s+(?P<name>\S+)\s+:(?P<card>\S+)\s*$")
_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$")


@dataclass(frozen=True, slots=True)
class Query:
    """One named query as loaded from a SQL file.

    ``sql`` is what psycopg executes (``%(name)s`` placeholders);
    ``positional_sql`` is the same statement with ``$n`` placeholders, for PREPARE.
    ``params`` are the parameter names in order of first appearance.
    ``writes``: whether the SQL names INSERT, UPDATE, DELETE or MERGE (it runs on
    the primary); ``account_param``: the parameter naming the account it is about
    (``id`` on the accounts table, else ``account_id``).
    """

    name: str
    cardinality: Cardinality
    doc: str
    text: str
    sql: LiteralString
    positional_sql: str
    params: tuple[str, ...]
    path: Path
    line: int
    writes: bool
    account_param: str
    param_set: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def aggregate(self) -> str:
        """The aggregate the query belongs to: its file's stem (``sql/users.sql`` → ``users``)."""
        return self.path.stem

    @property
    def location(self) -> str:
        """``path:line`` of the query's header."""
        return f"{self.path}:{self.line}"


def parse_sql(text: str, path: Path | str) -> list[Query]:
    """Parse the text of one SQL file into its queries.

    Raises ``SQLLoadError`` naming file and line for: SQL before the first
    header, a malformed header, an unknown cardinality, a name that is not
    ``verb_noun`` snake case, a header with no SQL under it, a body the lexer
    refuses, or a name used twice in the file.
    """
    path = Path(path)
    # Only \n ends a line: str.splitlines() would also split on form feeds and
    # other separators that may sit inside a string literal.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    queries: list[Query] = []
    seen: dict[str, int] = {}
    header: tuple[str, Cardinality, int] | None = None
    doc: list[str] = []
    body: list[str] = []
    body_start = 0
    in_doc = False

    def finish() -> None:
        if header is None:
            return
        name, card, line = header
        body_text = "\n".join(body).strip()
        try:
            lexed = lex(body_text)
        except LexError as exc:
            offset_line = body_start + body_text[: exc.offset].count("\n")
            raise SQLLoadError(f"query {name}: {exc}", path=path, line=offset_line) from None
        if not has_code(lexed.positional_sql):
            raise SQLLoadError(f"query {name} has no SQL under its header", path=path, line=line)
        # The only place SQL text becomes a LiteralString: it comes from the
        # project's own SQL files, never from user input.
        sql = cast(LiteralString, lexed.psycopg_sql)  # type: ignore[redundant-cast, unused-ignore]
        queries.append(
            Query(
                name=name,
                cardinality=card,
                doc="\n".join(doc).strip(),
                text=body_text,
                sql=sql,
                positional_sql=lexed.positional_sql,
                params=lexed.params,
                path=path,
                line=line,
                param_set=frozenset(lexed.params),
                writes=_WRITE.search(sql) is not None,
                account_param="id" if path.stem == "accounts" else "account_id",
            )
        )

    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if _HEADER_LIKE.match(raw):
            finish()
            match = _HEADER.match(stripped)
            if not match:
                raise SQLLoadError(
                    f"malformed header {stripped!r}; expected '-- name: verb_noun :cardinality'",
                    path=path,
                    line=number,
                )
            name, card = match.group("name"), match.group("card")
            if not _NAME.match(name):
                raise SQLLoadError(
                    f"query name {name!r} is not verb_noun snake case", path=path, line=number
                )
            if card not in _CARDINALITIES:
                raise SQLLoadError(
                    f"unknown cardinality :{card} for {name}; expected one of "
                    + ", ".join(f":{c}" for c in sorted(_CARDINALITIES)),
                    path=path,
                    line=number,
                )
            if name in seen:
                raise SQLLoadError(
                    f"duplicate query name {name} (first defined on line {seen[name]})",
                    path=path,
                    line=number,
                )
            seen[name] = number
            header = (name, cast(Cardinality, card), number)
            doc, body, in_doc = [], [], True
            body_start = number + 1
        elif header is None:
            if stripped and not stripped.startswith("--"):
                raise SQLLoadError("SQL before the first '-- name:' header", path=path, line=number)
        elif in_doc and stripped.startswith("--"):
            doc.append(stripped[2:].strip())
            body_start = number + 1
        else:
            if in_doc and not stripped:
                body_start = number + 1
                continue
            in_doc = False
            body.append(raw)
    finish()
    return queries


def load_file(path: Path) -> list[Query]:
    """Read and parse one SQL file (UTF-8); raise ``SQLLoadError`` on any defect."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SQLLoadError(f"cannot read: {exc}", path=path) from exc
    return parse_sql(text, path)


def load_sql_dir(directory: Path | str) -> dict[str, Query]:
    """Load every ``*.sql`` file of ``directory``; names must be unique across files.

    Returns the queries by name. Raises ``SQLLoadError`` for a missing
    directory, any file defect, or a name defined in two files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise SQLLoadError("SQL directory not found", path=directory)
    return merge(load_file(p) for p in sorted(directory.glob("*.sql")))


def merge(groups: Iterable[Iterable[Query]]) -> dict[str, Query]:
    """Index queries by name; a name defined twice is a ``SQLLoadError``."""
    catalog: dict[str, Query] = {}
    for group in groups:
        for query in group:
            other = catalog.get(query.name)
            if other is not None:
                raise SQLLoadError(
                    f"duplicate query name {query.name} (also at {other.location})",
                    path=query.path,
                    line=query.line,
                )
            catalog[query.name] = query
    return catalog


def by_aggregate(catalog: Mapping[str, Query]) -> dict[str, list[Query]]:
    """Group a catalog by SQL file stem."""
    groups: dict[str, list[Query]] = {}
    for query in catalog.values():
        groups.setdefault(query.aggregate, []).append(query)
    return groups
