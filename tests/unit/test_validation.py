"""Argument validation without a database: the fast path, instants, batches, properties."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import threading
import traceback
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, TypeAdapter

from datalayer import _validation
from datalayer._validation import (
    EARLIEST,
    LATEST,
    MAX_BATCH,
    PROPERTIES_MAX_BYTES,
    PROPERTIES_MAX_DEPTH,
    RUN_HORIZON_DAYS,
    Id,
    Limit,
    Name,
    Properties,
    Reason,
    _batch_shape,
    _fast_kinds,
    escape_like,
    gc_paused,
    in_range,
    no_nul,
    properties_refusal,
    validate_batch,
    validated,
    within_horizon,
)
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
        # Named like the generated wrapper's own parameters (its _self is positional-only):
        # one more unexpected argument each, never Python's "multiple values" TypeError.
        ({"self": 1, "account_id": 1, "limit": 1}, "self"),
        ({"_self": 1, "account_id": 1, "limit": 1}, "_self"),
        ({"args": (1,), "account_id": 1, "limit": 1}, "args"),
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


# -- the fast path's own edges ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"account_id": 1, "limit": 0}, "limit"),
        ({"account_id": 1, "limit": -1}, "limit"),
        ({"account_id": 1, "limit": True}, "limit"),
        ({"account_id": 1, "limit": False}, "limit"),
        ({"account_id": 1, "limit": "5"}, "limit"),
        ({"account_id": -1, "limit": 5}, "account_id"),
        ({"account_id": 1, "limit": None}, "limit"),
    ],
)
def test_the_fast_path_refuses_a_limit_of_zero_a_negative_or_a_bool(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        _Lookups().get(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_when_every_argument_is_bad_the_first_one_is_named() -> None:
    with pytest.raises(InvalidInput) as caught:
        _Lookups().get(account_id=0, limit=0)
    assert caught.value.field == "account_id"
    with pytest.raises(InvalidInput) as caught:
        _Lookups().get(account_id=True, limit=True)
    assert caught.value.field == "account_id"


def test_an_argument_of_another_name_never_passes_the_fast_path() -> None:
    with pytest.raises(InvalidInput) as caught:
        _Lookups().get(account_id=1, other=5)  # type: ignore[call-arg]
    assert caught.value.field in ("limit", "other")


def test_a_positional_argument_goes_through_pydantic() -> None:
    class Positional:
        @validated
        def get(self, account_id: Id) -> int:
            return account_id

    assert Positional().get(5) == 5
    with pytest.raises(InvalidInput, match="greater than or equal to 1"):
        Positional().get(0)
    with pytest.raises(InvalidInput, match="positional"):  # an id given by position
        _Lookups().get(1, account_id=1, limit=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(1, True), (2**63 - 1, True), (0, False), (-1, False), (2**63, False), (True, False),
     (1.0, False), ("1", False), (None, False)],
)  # fmt: skip
def test_the_fast_id_check_accepts_exactly_a_positive_bigint(
    value: object, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pydantic(monkeypatch)

    class Ids:
        @validated
        def get(self, *, account_id: Id) -> object:
            return account_id

    if accepted:
        assert Ids().get(account_id=value) == value  # type: ignore[arg-type]
    else:
        with pytest.raises(AssertionError, match="pydantic"):
            Ids().get(account_id=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(1, True), (1000, True), (500, True), (0, False), (-1, False), (1001, False),
     (True, False), (False, False), (1.0, False)],
)  # fmt: skip
def test_the_fast_limit_check_accepts_exactly_one_to_a_thousand(
    value: object, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_pydantic(monkeypatch)

    class Limits:
        @validated
        async def page(self, *, limit: Limit = 50) -> object:
            return limit

    if accepted:
        assert asyncio.run(Limits().page(limit=value)) == value  # type: ignore[arg-type]
    else:
        with pytest.raises(AssertionError, match="pydantic"):
            asyncio.run(Limits().page(limit=value))  # type: ignore[arg-type]
    assert asyncio.run(Limits().page()) == 50  # the default, through the fast path


def _no_pydantic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of pydantic's validate_call fail: only the fast path may run."""

    def refuse(**_: object) -> object:
        raise AssertionError("pydantic was asked")

    monkeypatch.setattr(_validation, "validate_call", refuse)


def test_a_fast_wrapper_shows_its_generated_source_in_tracebacks() -> None:
    class Ids:
        @validated
        def get(self, *, account_id: Id) -> None:
            raise RuntimeError("inside")

    lines = inspect.getsource(Ids.get.__code__).splitlines()
    assert lines[0] == "def get(_self, /, *args, account_id=_MISSING, **extra):"
    assert lines[2] == "        return _func(_self, account_id=account_id)"
    with pytest.raises(RuntimeError) as caught:
        Ids().get(account_id=1)
    shown = "".join(traceback.format_exception(caught.value))
    assert "<validated" in shown
    assert "return _func(_self, account_id=account_id)" in shown


def test_fast_kinds_exist_only_when_every_argument_is_a_keyword_only_id_or_limit() -> None:
    def ids(self: object, *, account_id: Id, limit: Limit) -> None: ...
    def positional(self: object, account_id: Id) -> None: ...
    def other(self: object, *, account_id: Id, name: str) -> None: ...
    def nothing(self: object) -> None: ...
    def unresolvable(self: object, *, account_id: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821
    def spread(self: object, *, account_id: Id, **more: Id) -> None: ...
    def dotted(self: object, *, account_id: _validation.Id) -> None: ...
    def clashing(self: object, *, args: Id, given: Limit) -> None: ...

    assert _fast_kinds(ids) == (("account_id", "id"), ("limit", "limit"))
    for none in (positional, other, nothing, unresolvable, spread, dotted, clashing):
        assert _fast_kinds(none) == (), none.__name__


def test_every_repository_lookup_on_ids_alone_has_its_fast_path() -> None:
    # The spelling _fast_kinds reads (a bare Id or Limit) is the one the repositories use:
    # each method whose resolved hints are all keyword-only Id/Limit has a fast wrapper.
    from typing import get_type_hints

    from datalayer.repositories import REPOSITORIES
    from datalayer.repositories._registry_async import ASYNC_REPOSITORIES

    seen = 0
    for repository in (*REPOSITORIES, *ASYNC_REPOSITORIES):
        for name, method in vars(repository).items():
            if not getattr(method, "__validated__", False):
                continue
            func = method.__wrapped__
            params = list(inspect.signature(func).parameters.values())[1:]
            hints = get_type_hints(func, include_extras=True)
            eligible = bool(params) and all(
                p.kind is p.KEYWORD_ONLY and hints.get(p.name) in (Id, Limit) for p in params
            )
            fast = method.__code__.co_filename.startswith("<validated")
            assert fast is eligible, f"{repository.__name__}.{name}"
            seen += eligible
    assert seen >= 10


def test_a_method_without_fast_checks_is_validated_by_pydantic_every_call() -> None:
    class Named:
        @validated
        def rename(self, *, account_id: Id, name: Name) -> str:
            return f"{account_id}:{name}"

    assert Named().rename(account_id=1, name="x") == "1:x"
    with pytest.raises(InvalidInput) as caught:
        Named().rename(account_id=1, name="")
    assert caught.value.field == "name"
    assert getattr(Named.rename, "__validated__", False) is True


# -- instants, text, batches ----------------------------------------------------------------


def test_instants_lie_from_1900_up_to_but_not_including_9000() -> None:
    assert in_range(EARLIEST) == EARLIEST
    assert in_range(LATEST - timedelta(microseconds=1)) == LATEST - timedelta(microseconds=1)
    for bad in (LATEST, EARLIEST - timedelta(microseconds=1)):
        with pytest.raises(ValueError, match="from 1900-01-01 up to"):
            in_range(bad)


def test_a_run_may_be_told_it_is_at_most_five_years_past_the_clock() -> None:
    clock = datetime(2000, 2, 29, tzinfo=UTC)
    edge = datetime(2005, 3, 4, tzinfo=UTC)  # 1,830 days on
    assert RUN_HORIZON_DAYS == 1830
    for fine in (edge, edge - timedelta(days=3000), EARLIEST):
        assert within_horizon(fine, clock=clock) == fine
    with pytest.raises(ValueError, match="at most 1830 days"):
        within_horizon(edge + timedelta(microseconds=1), clock=clock)
    # Without a clock, the machine's: five years from now is refused, next year is not.
    soon = datetime.now(UTC) + timedelta(days=365)
    assert within_horizon(soon) == soon
    with pytest.raises(ValueError, match="five years"):
        within_horizon(datetime.now(UTC) + timedelta(days=1831))


def test_no_nul_refuses_a_nul_anywhere() -> None:
    assert no_nul("abc") == "abc"
    assert no_nul("") == ""
    for bad in ("\x00", "a\x00", "\x00b"):
        with pytest.raises(ValueError, match="NUL"):
            no_nul(bad)


def test_like_wildcards_and_the_escape_character_are_escaped() -> None:
    assert escape_like(r"50%_off\now") == r"50\%\_off\\now"
    assert escape_like("plain") == "plain"


def test_a_batch_is_a_list_or_tuple_of_at_most_a_million() -> None:
    assert _batch_shape([]) == []
    assert _batch_shape((1, 2)) == (1, 2)
    for bad, kind in (("ab", "str"), ({"a": 1}, "dict"), ({1}, "set"), (None, "NoneType")):
        with pytest.raises(ValueError, match=f"must be a list of events, not {kind}"):
            _batch_shape(bad)
    exactly = [0] * MAX_BATCH
    assert _batch_shape(exactly) is exactly
    with pytest.raises(ValueError, match="at most 1,000,000 events per batch"):
        _batch_shape([0] * (MAX_BATCH + 1))


class _Event(BaseModel):
    model_config = ConfigDict(strict=True)
    n: int
    tag: str = "x"


def test_a_valid_batch_is_validated_in_one_pass_and_a_bad_one_event_by_event() -> None:
    adapter = TypeAdapter(list[_Event])
    good, bad = validate_batch(_Event, adapter, [{"n": 1}, _Event(n=2)])
    assert (good, bad) == ([_Event(n=1), _Event(n=2)], [])
    models, bad = validate_batch(_Event, adapter, [{"n": 1}, {"n": "2"}, {"tag": "y"}, {"n": 4}])
    assert models == [_Event(n=1), None, None, _Event(n=4)]
    assert bad == [(1, "bad n: Input should be a valid integer"), (2, "bad n: Field required")]


def test_a_nested_field_is_named_by_its_path() -> None:
    class Outer(BaseModel):
        inner: _Event

    models, bad = validate_batch(Outer, TypeAdapter(list[Outer]), [{"inner": {"n": "x"}}])
    assert models == [None]
    assert bad == [(0, "bad inner.n: Input should be a valid integer")]


# -- event properties -------------------------------------------------------------------------


def _jsonb_size(value: object) -> int:
    """Bytes of the JSON text jsonb renders for simple values (", " and ": " separators)."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


@pytest.mark.parametrize(
    "value",
    [{}, {"a": None}, {"a": True}, {"a": False}, {"n": -12345}, {"f": 1.5}, {"s": "é\\\"x"},
     {"l": [1, "two", None, [True]]}, {"d": {"e": {"f": []}}}, {"t": (1, 2)}, {"a": 1, "b": 2}],
)  # fmt: skip
def test_json_values_are_accepted_as_properties(value: dict[str, object]) -> None:
    assert properties_refusal(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([], "must be a JSON object"),
        (None, "must be a JSON object"),
        ({1: "a"}, "has a key that is not a str"),
        ({"a": {2: "b"}}, "has a key that is not a str"),
        ({"a": float("nan")}, "NaN or an infinity"),
        ({"a": [float("inf")]}, "NaN or an infinity"),
        ({"a": "x\x00"}, "NUL character"),
        ({"a\x00": 1}, "NUL character"),
        ({"a": "\ud800"}, "unpaired surrogate"),
        ({"\udfff": 1}, "unpaired surrogate"),
        ({"a": Decimal(1)}, "holds a Decimal"),
        ({"a": b"x"}, "holds a bytes"),
        ({"a": {1, 2}}, "holds a set"),
    ],
)
def test_what_is_not_json_is_refused_with_the_reason(value: object, reason: str) -> None:
    refusal = properties_refusal(value)
    assert refusal is not None
    assert reason in refusal


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_properties_nest_at_most_32_deep() -> None:
    assert properties_refusal(_nested(PROPERTIES_MAX_DEPTH)) is None
    assert properties_refusal(_nested(PROPERTIES_MAX_DEPTH + 1)) == "nested deeper than 32 levels"
    deep_list: list[object] = []
    value: dict[str, object] = {"a": deep_list}
    for _ in range(PROPERTIES_MAX_DEPTH - 2):
        inner: list[object] = []
        deep_list.append(inner)
        deep_list = inner
    assert properties_refusal(value) is None
    deep_list.append([])
    assert properties_refusal(value) == "nested deeper than 32 levels"


@pytest.mark.parametrize(
    "make",
    [
        lambda n: {"s": "x" * n},
        lambda n: {"s": "é" * (n // 2) + "x" * (n % 2)},
        lambda n: {"k" * n: 1},
        lambda n: {"l": [1] * n},
        lambda n: {"n": int("9" * min(n, 3999))},
        lambda n: {"b": [True] * n},
        lambda n: {"b": [False] * n},
        lambda n: {"z": [None] * n},
        lambda n: {"d": {f"k{i:04d}": 1 for i in range(n)}},
        lambda n: {"f": [0.5] * n},
        lambda n: {"t": ([1, [2, {"x": None}]],) * n},
    ],
)
def test_properties_are_refused_exactly_above_4096_bytes_of_json_text(make: Any) -> None:
    # The largest n whose JSON text fits, by bisection with the json module as the oracle.
    low, high = 0, 5000
    assert _jsonb_size(make(high)) > PROPERTIES_MAX_BYTES or make(high) == make(high - 1)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (
            (middle, high)
            if _jsonb_size(make(middle)) <= PROPERTIES_MAX_BYTES
            else (
                low,
                middle,
            )
        )
    fits, too_big = make(low), make(high)
    assert _jsonb_size(fits) <= PROPERTIES_MAX_BYTES
    assert properties_refusal(fits) is None
    if _jsonb_size(too_big) > PROPERTIES_MAX_BYTES:
        assert properties_refusal(too_big) == "larger than 4096 bytes of JSON text"


def test_an_integer_of_3999_digits_fits_and_the_text_counts_its_sign() -> None:
    assert properties_refusal({"n": int("9" * 3999)}) is None  # 4006 bytes
    assert properties_refusal({"n": -int("9" * 3999)}) is None  # 4007 bytes
    assert properties_refusal({"n": int("9" * 3999), "m": -int("9" * 82)}) is None  # 4096
    refusal = properties_refusal({"n": int("9" * 3999), "m": -int("9" * 83)})  # 4097
    assert refusal == "larger than 4096 bytes of JSON text"


def test_a_huge_integer_is_refused_without_printing_it() -> None:
    assert properties_refusal({"n": 10**5000}) == "larger than 4096 bytes of JSON text"
    assert properties_refusal({"n": -(10**5000)}) == "larger than 4096 bytes of JSON text"


# -- which path a call takes ------------------------------------------------------------------


class _Spied:
    """A class decorated while pydantic's validate_call is counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = _validation.validate_call

        def counting(**config: Any) -> Any:
            decorate = real(**config)

            def wrap(func: Any) -> Any:
                checked = decorate(func)

                def counted(*args: Any, **kwargs: Any) -> Any:
                    self.calls += 1
                    return checked(*args, **kwargs)

                return counted

            return wrap

        monkeypatch.setattr(_validation, "validate_call", counting)

        class Lookups:
            @validated
            def get(self, *, account_id: Id, limit: Limit) -> tuple[int, int]:
                return account_id, limit

        self.lookups = Lookups()


def test_good_ids_and_limits_skip_pydantic_and_anything_else_goes_through_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spied = _Spied(monkeypatch)
    assert spied.lookups.get(account_id=7, limit=10) == (7, 10)
    assert spied.lookups.get(limit=10, account_id=7) == (7, 10)
    assert spied.calls == 0
    with pytest.raises(InvalidInput):
        spied.lookups.get(account_id=7, limit=0)
    assert spied.calls == 1
    with pytest.raises(InvalidInput):
        spied.lookups.get(account_id=7)  # type: ignore[call-arg]
    assert spied.calls == 2
    with pytest.raises(InvalidInput):
        spied.lookups.get(account_id=7, limit=10, other=1)  # type: ignore[call-arg]
    assert spied.calls == 3
    with pytest.raises(InvalidInput):
        spied.lookups.get(account_id=7, other=10)  # type: ignore[call-arg]
    assert spied.calls == 4
    with pytest.raises(InvalidInput):
        type(spied.lookups).get(spied.lookups, 7, 10)  # type: ignore[misc]
    assert spied.calls == 5


def test_an_int_subclass_is_checked_by_pydantic_up_to_the_largest_bigint() -> None:
    class MyInt(int):
        pass

    assert _Lookups().get(account_id=MyInt(2**63 - 1), limit=MyInt(1000)) == (2**63 - 1, 1000)
    with pytest.raises(InvalidInput) as caught:
        _Lookups().get(account_id=MyInt(2**63), limit=1)
    assert caught.value.field == "account_id"


class _Texts:
    @validated
    def note(self, *, name: Name, reason: Reason, properties: Properties) -> tuple[str, str, Any]:
        return name, reason, properties


def test_text_arguments_are_kept_as_given_and_properties_pass_through() -> None:
    assert _Texts().note(name=" x ", reason=" why ", properties={"a": 1}) == (
        " x ",
        " why ",
        {"a": 1},
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "", "reason": "r", "properties": {}}, "name"),
        ({"name": "n", "reason": "", "properties": {}}, "reason"),
        ({"name": "n", "reason": "r" * 501, "properties": {}}, "reason"),
        ({"name": "n", "reason": "r\x00", "properties": {}}, "reason"),
        ({"name": "n", "reason": "r", "properties": {"a": float("nan")}}, "properties"),
        ({"name": "n", "reason": "r", "properties": {1: 2}}, "properties"),
    ],
)
def test_a_bad_text_or_property_argument_is_named(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        _Texts().note(**kwargs)
    assert caught.value.field == field


def test_an_integer_of_exactly_10_to_the_4000_is_refused_unprinted() -> None:
    # 4001 digits would fit in 4096 bytes, but str() of such ints is where Python's own
    # limit lies in wait: anything from 10**4000 up counts as too large.
    assert properties_refusal({"n": 10**4000 - 1}) is None
    assert properties_refusal({"n": 10**4000}) == "larger than 4096 bytes of JSON text"


def test_a_non_ascii_key_counts_its_utf8_bytes_not_an_escape() -> None:
    # {"éé...": 1}: 2 + 2 quotes + 2 bytes per é + ": 1" (3) = 4096 with 2044 of them.
    assert properties_refusal({"é" * 2044: 1}) is None
    assert properties_refusal({"é" * 2045: 1}) == "larger than 4096 bytes of JSON text"


class _Positional:
    @validated
    def call(self, a: int, b: str, *rest: int, c: int = 0) -> None:
        """A method taking positional arguments."""

    @validated
    def listed(self, xs: list[int]) -> None:
        """A method taking a list."""

    @validated
    def waits(self, event: threading.Event) -> None:
        """A method taking a class pydantic has no schema for (isinstance)."""


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [(("x", "y"), {}, "a"), ((1, 2), {}, "b"), ((1, "y", 3, "z"), {}, "rest"),
     ((1, "y", 3, 4, "z"), {}, "rest"), ((1, "y"), {"c": "z"}, "c")],
)  # fmt: skip
def test_a_bad_positional_argument_is_named_by_its_parameter(
    args: tuple[object, ...], kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        _Positional().call(*args, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_an_item_of_a_bad_positional_list_is_named_by_the_list() -> None:
    with pytest.raises(InvalidInput) as info:
        _Positional().listed([1, "x"])  # type: ignore[list-item]
    assert info.value.field == "xs"


def test_a_positional_only_parameter_is_named_too() -> None:
    @validated
    def alone(x: int, /) -> int:
        return x

    assert alone(3) == 3
    with pytest.raises(InvalidInput) as info:
        alone("3")  # type: ignore[arg-type]
    assert info.value.field == "x"


def test_an_argument_of_a_plain_class_is_checked_by_isinstance() -> None:
    _Positional().waits(threading.Event())
    with pytest.raises(InvalidInput) as info:
        _Positional().waits(object())  # type: ignore[arg-type]
    assert info.value.field == "event"


class _AsyncLookups:
    """The same checks on coroutine methods (the async API's repositories)."""

    def __init__(self) -> None:
        self.ran = 0

    @validated
    async def get(self, *, account_id: Id, limit: Limit) -> tuple[int, int]:
        self.ran += 1
        return account_id, limit

    @validated
    async def named(self, x: int, *, name: Name) -> str:
        self.ran += 1
        return f"{x}:{name}"


def test_a_coroutine_method_is_validated_when_awaited_before_its_body_runs() -> None:
    import asyncio

    lookups = _AsyncLookups()

    async def main() -> None:
        assert await lookups.get(account_id=2**63 - 1, limit=1000) == (2**63 - 1, 1000)
        assert await lookups.named(3, name="n") == "3:n"  # not all ids: through pydantic
        for kwargs, field in (({"account_id": 0, "limit": 1}, "account_id"),
                              ({"account_id": 1, "limit": 1001}, "limit"),
                              ({"account_id": "1", "limit": 1}, "account_id"),
                              ({"account_id": 1}, "limit")):  # fmt: skip
            with pytest.raises(InvalidInput) as caught:
                await lookups.get(**kwargs)
            assert caught.value.field == field
        with pytest.raises(InvalidInput) as caught:
            await lookups.named("3", name="n")  # type: ignore[arg-type]
        assert caught.value.field == "x"
        with pytest.raises(InvalidInput) as caught:
            await lookups.named(3, name="")
        assert caught.value.field == "name"

    asyncio.run(main())
    assert lookups.ran == 2  # no refused call reached the body
    assert _AsyncLookups.get.__validated__ is True  # type: ignore[attr-defined]
    assert asyncio.iscoroutinefunction(_AsyncLookups.get)
