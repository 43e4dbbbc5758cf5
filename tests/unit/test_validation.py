"""``validated``'s fast path for ids and limits agrees with pydantic; ``gc_paused`` restores."""

from __future__ import annotations

import gc

import pytest

from datalayer._validation import Id, Limit, gc_paused, validated
from datalayer.errors import InvalidInput


class _Lookups:
    @validated
    def get(self, *, account_id: Id, limit: Limit) -> tuple[int, int]:
        return account_id, limit


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"account_id": 0, "limit": 1}, "account_id"),
        ({"account_id": 2**63, "limit": 1}, "account_id"),
        ({"account_id": True, "limit": 1}, "account_id"),
        ({"account_id": "1", "limit": 1}, "account_id"),
        ({"account_id": 1.0, "limit": 1}, "account_id"),
        ({"account_id": 1, "limit": 1001}, "limit"),
        ({"account_id": 1, "limit": 1, "extra": 1}, "extra"),
    ],
)
def test_the_fast_path_for_ids_rejects_exactly_what_pydantic_rejects(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        _Lookups().get(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_a_missing_argument_goes_to_pydantic_which_names_it() -> None:
    with pytest.raises(InvalidInput, match="Missing required") as caught:
        _Lookups().get(account_id=1)  # type: ignore[call-arg]
    assert caught.value.field == "limit"


def test_the_fast_path_passes_good_ids_and_an_int_subclass_goes_through_pydantic() -> None:
    assert _Lookups().get(account_id=2**63 - 1, limit=1000) == (2**63 - 1, 1000)

    class MyInt(int):
        pass

    assert _Lookups().get(account_id=MyInt(5), limit=5) == (5, 5)  # pydantic's strict int


def test_gc_paused_pauses_the_collector_and_restores_it_even_after_an_error() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_gc_paused_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
