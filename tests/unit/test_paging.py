"""Keyset paging and partial updates without a database."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import BaseModel, ValidationError

from datalayer import InvalidInput
from datalayer._paging import PageRequest, decode_cursor, encode_cursor, update_params


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


def _cursor_of(data: object, *, pad_to: int = 0) -> str:
    raw = json.dumps(data, separators=(",", ":"))
    raw = raw[:-1] + " " * max(0, pad_to - len(raw)) + raw[-1:]
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("last_id", [0, 1, 2**63 - 1])
def test_a_cursor_holds_any_id_from_zero_to_the_largest_bigint(last_id: int) -> None:
    assert decode_cursor(encode_cursor(last_id)) == last_id
    assert decode_cursor(_cursor_of({"v": 1, "id": last_id, "d": "asc"})) == last_id


@pytest.mark.parametrize(
    "data",
    [
        {"v": 1, "id": -1, "d": "asc"},
        {"v": 1, "id": 2**63, "d": "asc"},
        {"v": 2, "id": 5, "d": "asc"},
        {"v": 1, "id": "5", "d": "asc"},
        {"v": 1, "id": True, "d": "asc"},
        {"v": 1, "id": 5.0, "d": "asc"},
        {"v": 1, "id": 5},
        [1, 5, "asc"],
    ],
)
def test_a_cursor_that_is_not_ours_is_refused(data: object) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_cursor(_cursor_of(data))
    assert info.value.field == "cursor"


def test_a_cursor_of_200_characters_is_read_and_one_of_201_is_not() -> None:
    exactly = next(
        c
        for n in range(100, 200)
        if len(c := _cursor_of({"v": 1, "id": 9, "d": "asc"}, pad_to=n)) == 200
    )
    assert decode_cursor(exactly) == 9
    longer = exactly + "A"
    with pytest.raises(InvalidInput):
        decode_cursor(longer)


def test_pages_are_immutable() -> None:
    page = PageRequest.of(None, 2).page(rows(5))
    with pytest.raises(ValidationError):
        page.next_cursor = "x"  # type: ignore[misc]


def test_a_descending_page_continues_below_its_last_row() -> None:
    request = PageRequest.of(None, 2, "desc")
    page = request.page(rows(9, 7, 5))
    assert page.next_cursor is not None
    assert PageRequest.of(page.next_cursor, 2, "desc").params == {"after_id": 7, "limit": 3}


# -- partial updates --------------------------------------------------------------------------


def test_an_update_sets_the_given_fields_and_flags_the_others_unset() -> None:
    assert update_params({"name": "x", "email": None}, ["name", "email", "age"]) == {
        "set_name": True,
        "name": "x",
        "set_email": False,
        "email": None,
        "set_age": False,
        "age": None,
    }


def test_falsy_values_other_than_none_are_updates() -> None:
    params = update_params({"age": 0, "name": ""}, ("name", "age"))
    assert params == {"set_name": True, "name": "", "set_age": True, "age": 0}


def test_an_update_of_nothing_is_refused_naming_the_fields() -> None:
    with pytest.raises(InvalidInput, match="give at least one of name, age") as info:
        update_params({"name": None}, ["name", "age"])
    assert info.value.field == "fields"
    with pytest.raises(InvalidInput):
        update_params({}, ["name"])


def test_an_unknown_field_is_refused_naming_the_first_in_order() -> None:
    with pytest.raises(InvalidInput, match="cannot be updated") as info:
        update_params({"zeta": 1, "alpha": 2, "name": "x"}, iter(["name"]))
    assert info.value.field == "alpha"
