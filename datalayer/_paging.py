"""Keyset pagination with opaque cursors, and partial-update parameters.

Pages are ordered by a unique key (``id`` ascending by default) and continue
"after" the last row of the previous page: no OFFSET, so a page costs the same
however deep it is, and rows inserted meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from .errors import InvalidInput

__all__ = ["Page", "PageRequest", "decode_cursor", "encode_cursor", "update_params"]

M = TypeVar("M", bound=BaseModel)
Direction = Literal["asc", "desc"]
_MAX_ID = 2**63 - 1


class Page(BaseModel, Generic[M]):
    """One page of rows and the cursor of the next page (``None`` on the last page)."""

    model_config = ConfigDict(frozen=True)

    items: list[M]
    next_cursor: str | None


def encode_cursor(last_id: int, direction: Direction = "asc") -> str:
    """An opaque cursor continuing after the row with id ``last_id``."""
    raw = json.dumps({"v": 1, "id": last_id, "d": direction}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, direction: Direction = "asc") -> int:
    """The id a cursor continues after; ``InvalidInput`` (field ``cursor``) if it is not ours."""
    if len(cursor) > 200:  # ours are ~40 characters; never parse unbounded input
        raise InvalidInput("not a cursor returned by this listing", field="cursor")
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if (
            not isinstance(data, dict)
            or data.get("v") != 1
            or data.get("d") != direction
            or type(data.get("id")) is not int
            or not 0 <= data["id"] <= _MAX_ID
        ):
            raise ValueError
    except (ValueError, binascii.Error, UnicodeError, RecursionError):
        raise InvalidInput("not a cursor returned by this listing", field="cursor") from None
    return int(data["id"])


@dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated page request: what the page query is asked, and how its rows become a page.

    A keyset page query takes ``:after_id`` (ascending: ``id > :after_id``;
    descending: ``id < :after_id``) and ``:limit``, orders by ``id`` in that
    direction, and returns rows with an ``id``. It is asked for one row more
    than the page holds, to know whether another page follows. Pure: the
    repository runs the query between ``of`` and ``page``.
    """

    after_id: int
    limit: int
    direction: Direction = "asc"

    @classmethod
    def of(cls, cursor: str | None, limit: int, direction: Direction = "asc") -> PageRequest:
        """The request for a page of ``limit`` rows after ``cursor`` (``None``: the first page).

        Raises ``InvalidInput`` (field ``limit`` or ``cursor``) for a limit
        outside 1..1000 or a cursor this listing did not return.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput("must be between 1 and 1000", field="limit")
        if cursor is None:
            after = 0 if direction == "asc" else _MAX_ID
        else:
            after = decode_cursor(cursor, direction)
        return cls(after_id=after, limit=limit, direction=direction)

    @property
    def params(self) -> dict[str, int]:
        """The page query's ``after_id`` and ``limit`` (one more row than the page holds)."""
        return {"after_id": self.after_id, "limit": self.limit + 1}

    def page(self, rows: Sequence[M]) -> Page[M]:
        """The page of the rows the query returned, with the next page's cursor if any."""
        items = list(rows[: self.limit])
        more = len(rows) > self.limit
        last: Any = items[-1] if items else None
        next_cursor = encode_cursor(last.id, self.direction) if more and last is not None else None
        return Page[M](items=items, next_cursor=next_cursor)


def update_params(fields: Mapping[str, Any], allowed: Iterable[str]) -> dict[str, Any]:
    """Parameters of a partial-update query: ``set_<f>`` flags and values for each allowed field.

    The SQL writes ``f = CASE WHEN :set_f THEN :f ELSE f END`` for each field,
    so one static statement updates any subset. Fields given as ``None`` are
    left unchanged. Raises ``InvalidInput`` when nothing is to change.
    """
    allowed = list(allowed)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidInput("cannot be updated", field=unknown[0])
    given = {k: v for k, v in fields.items() if v is not None}
    if not given:
        raise InvalidInput(f"give at least one of {', '.join(allowed)}", field="fields")
    params: dict[str, Any] = {}
    for name in allowed:
        params[f"set_{name}"] = name in given
        params[name] = given.get(name)
    return params
