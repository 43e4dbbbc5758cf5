"""Lexing of one query body: ``:name`` parameters found outside literals and comments.

PostgreSQL SQL is written as-is in ``sql/*.sql``; parameters are ``:name``.
The lexer turns a body into two forms of the same statement:

* psycopg's form, ``%(name)s`` placeholders with every literal ``%`` doubled
  (psycopg reads ``%`` everywhere in the text, even inside string literals);
* PostgreSQL's own form, ``$1``, ``$2`` … in order of first appearance, used by
  ``check-sql`` to PREPARE the statement.

It understands what can hide a colon or a percent sign: ``--`` and nested
``/* */`` comments, ``'…'`` strings (``''`` escapes, ``E'…'`` backslash
escapes), ``"…"`` identifiers, ``$tag$…$tag$`` dollar quotes and ``::`` casts.
A ``:`` preceded by an identifier character (``arr[1:n]``) is not a parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["LexError", "Lexed", "has_code", "lex"]

_IDENT_START = re.compile(r"[A-Za-z_]")
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_POSITIONAL = re.compile(r"\$[0-9]+")


class LexError(ValueError):
    """The body cannot be lexed; ``offset`` is where the problem starts."""

    def __init__(self, message: str, offset: int):
        self.offset = offset
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Lexed:
    """A query body in psycopg's and PostgreSQL's placeholder forms."""

    psycopg_sql: str
    positional_sql: str
    params: tuple[str, ...]


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def lex(body: str) -> Lexed:
    """Lex one SQL statement; raise ``LexError`` for what PostgreSQL would not parse.

    Refused: unterminated strings, identifiers, comments or dollar quotes; a
    second statement after ``;``; ``$1``-style parameters (use ``:name``).
    A trailing ``;`` is dropped.
    """
    named: list[str] = []
    positional: list[str] = []
    params: list[str] = []
    i = 0
    n = len(body)

    def copy(text: str) -> None:
        named.append(text.replace("%", "%%"))
        positional.append(text)

    while i < n:
        ch = body[i]
        if ch == "-" and body.startswith("--", i):
            end = body.find("\n", i)
            end = n if end == -1 else end
            copy(body[i:end])
            i = end
        elif ch == "/" and body.startswith("/*", i):
            end = _block_comment_end(body, i)
            copy(body[i:end])
            i = end
        elif ch == "'":
            backslashes = (
                i > 0 and body[i - 1] in "Ee" and (i < 2 or not _is_ident_char(body[i - 2]))
            )
            end = _quoted_end(body, i, "'", backslashes)
            copy(body[i:end])
            i = end
        elif ch == '"':
            end = _quoted_end(body, i, '"', False)
            copy(body[i:end])
            i = end
        elif ch == "$" and (i == 0 or not _is_ident_char(body[i - 1])):
            tag = _DOLLAR_TAG.match(body, i)
            if tag:
                close = body.find(tag.group(), tag.end())
                if close == -1:
                    raise LexError(f"unterminated dollar quote {tag.group()}", i)
                end = close + len(tag.group())
                copy(body[i:end])
                i = end
            elif _POSITIONAL.match(body, i):
                raise LexError("positional parameters ($1) are not allowed; use :name", i)
            else:
                copy(ch)
                i += 1
        elif ch == ":":
            if body.startswith("::", i):
                copy("::")
                i += 2
                continue
            prev = body[i - 1] if i > 0 else ""
            param = _PARAM.match(body, i + 1)
            if param and not (prev and (_is_ident_char(prev) or prev == ":")):
                name = param.group()
                if name not in params:
                    params.append(name)
                named.append(f"%({name})s")
                positional.append(f"${params.index(name) + 1}")
                i = param.end()
            else:
                copy(ch)
                i += 1
        elif ch == ";":
            rest = body[i + 1 :]
            try:
                more = has_code(rest)
            except LexError as exc:
                raise LexError(str(exc), i + 1 + exc.offset) from None
            if more:
                raise LexError("more than one statement; a named query holds exactly one", i)
            copy(rest)
            i = n
        else:
            # Plain text up to the next character that may start something.
            j = i + 1
            while j < n and body[j] not in "-/'\"$:;":
                j += 1
            copy(body[i:j])
            i = j
    return Lexed("".join(named).rstrip(), "".join(positional).rstrip(), tuple(params))


def _block_comment_end(body: str, start: int) -> int:
    depth = 0
    i = start
    n = len(body)
    while i < n:
        if body.startswith("/*", i):
            depth += 1
            i += 2
        elif body.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    raise LexError("unterminated /* comment", start)


def _quoted_end(body: str, start: int, quote: str, backslashes: bool) -> int:
    i = start + 1
    n = len(body)
    while i < n:
        ch = body[i]
        if backslashes and ch == "\\":
            i += 2
        elif ch == quote:
            if i + 1 < n and body[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    what = "string literal" if quote == "'" else "quoted identifier"
    raise LexError(f"unterminated {what}", start)


def has_code(text: str) -> bool:
    """True when ``text`` holds anything but whitespace and comments."""
    i = 0
    n = len(text)
    while i < n:
        if text[i].isspace():
            i += 1
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            i = _block_comment_end(text, i)
        else:
            return True
    return False
