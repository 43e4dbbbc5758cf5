"""Keyset paging without a database: the request a page query gets, and the page it makes."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from datalayer import InvalidInput
from datalayer._paging import PageRequest, decode_cursor, encode_cursor


class Row(BaseModel):
    id: int


def rows(*ids: int) -> list[Row]:
    return [Row(id=i) for i in ids]


def test_a_first_page_asks_for_ids_after_zero_ascending_and_one_row_more() -> None:
    assert PageRequest.of(None, 3).params == {"after_id": 0, "limit": 4}


def test_a_first_descending_page_asks_for_ids_below_the_largest_bigint() -> None:
    assert PageRequest.of(None, 3, "desc").params == {"after_id": 2**63 - 1, "limit": 4}


def test_a_cursor_continues_after_the_last_row_of_the_page_it_came_from() -> None:
    page = PageRequest.of(None, 2).page(rows(5, 7, 9))
    assert [r.id for r in page.items] == [5, 7]
    assert page.next_cursor is not None
    assert PageRequest.of(page.next_cursor, 2).params == {"after_id": 7, "limit": 3}


def test_the_last_page_has_no_cursor() -> None:
    assert PageRequest.of(None, 2).page(rows(5, 7)).next_cursor is None
    assert PageRequest.of(None, 2).page(rows(5)).next_cursor is None
    assert PageRequest.of(None, 2).page([]).items == []


def test_a_descending_cursor_is_refused_by_an_ascending_listing() -> None:
    cursor = encode_cursor(10, "desc")
    assert decode_cursor(cursor, "desc") == 10
    with pytest.raises(InvalidInput) as info:
        PageRequest.of(cursor, 5, "asc")
    assert info.value.field == "cursor"


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.0, "5"])
def test_a_limit_outside_one_to_a_thousand_or_not_an_int_is_refused(limit: object) -> None:
    with pytest.raises(InvalidInput) as info:
        PageRequest.of(None, limit)  # type: ignore[arg-type]
    assert info.value.field == "limit"


@pytest.mark.parametrize("limit", [1, 1000])
def test_the_limits_bounds_are_accepted(limit: int) -> None:
    assert PageRequest.of(None, limit).params["limit"] == limit + 1
