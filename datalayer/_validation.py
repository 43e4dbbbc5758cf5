"""Argument validation for repository methods: typed errors that name the field."""

from __future__ import annotations

import functools
import gc
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, ParamSpec, TypeVar, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    validate_call,
)

from .errors import InvalidInput

__all__ = [
    "Email",
    "Id",
    "Limit",
    "Name",
    "Text",
    "gc_paused",
    "no_nul",
    "validate_batch",
    "validated",
]

P = ParamSpec("P")
R = TypeVar("R")


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


# PostgreSQL bigint ids are positive in this schema.
Id = Annotated[int, Field(ge=1, le=2**63 - 1)]
Limit = Annotated[int, Field(ge=1, le=1000)]
Text = Annotated[str, Field(max_length=10_000), AfterValidator(no_nul)]
Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(no_nul)]
Email = Annotated[
    str,
    Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"),
    AfterValidator(no_nul),
]

_CONFIG = ConfigDict(strict=True, str_strip_whitespace=False)


def validated(func: Callable[P, R]) -> Callable[P, R]:
    """Validate a method's arguments against its annotations before it runs.

    Raises ``InvalidInput`` whose ``field`` names the first bad argument;
    strict mode: ``"1"`` is not an int and ``1.0`` is not a str.

    A method whose arguments are all keyword-only ids or limits (the hot
    lookups) takes a fast path: plain checks that accept only what pydantic
    would accept. Anything they do not accept goes through pydantic, which
    gives the same error as always; a primary-key read saves ~10 µs a call.
    """
    checked = validate_call(config=_CONFIG)(func)
    fast: dict[str, Callable[[Any], bool]] | None = None

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        nonlocal fast
        if fast is None:
            fast = _fast_checks(func)
        if fast and len(args) == 1 and len(kwargs) == len(fast):
            for name, value in kwargs.items():
                check = fast.get(name)
                if check is None or not check(value):
                    break
            else:
                return func(*args, **kwargs)
        try:
            return checked(*args, **kwargs)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
            raise InvalidInput(str(error["msg"]), field=".".join(loc) or None) from None

    return wrapper


def _is_id(value: Any) -> bool:
    return type(value) is int and 1 <= value <= 2**63 - 1


def _is_limit(value: Any) -> bool:
    return type(value) is int and 1 <= value <= 1000


def _fast_checks(func: Callable[..., Any]) -> dict[str, Callable[[Any], bool]]:
    """Checks by argument name when every argument after ``self`` is a keyword-only
    ``Id`` or ``Limit``; otherwise empty (pydantic validates every call)."""
    try:
        hints = get_type_hints(func, include_extras=True)
    except (NameError, TypeError):
        return {}
    checks: dict[str, Callable[[Any], bool]] = {}
    for param in list(inspect.signature(func).parameters.values())[1:]:
        hint = hints.get(param.name)
        check = _is_id if hint is Id else _is_limit if hint is Limit else None
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or check is None:
            return {}
        checks[param.name] = check
    return checks


def escape_like(term: str) -> str:
    """Escape LIKE wildcards so ``term`` matches literally (with ``ESCAPE '\\'``)."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


BatchModel = TypeVar("BatchModel", bound=BaseModel)


def validate_batch(
    model: type[BatchModel],
    adapter: TypeAdapter[list[BatchModel]],
    events: Sequence[BatchModel | Mapping[str, Any]],
) -> tuple[list[BatchModel | None], list[tuple[int, str]]]:
    """Validate a batch in one pass; when that fails, event by event.

    Returns the models (``None`` in place of a bad event) and, for each bad
    event, its index and the reason ("bad <field>: <message>").
    """
    try:
        return list(adapter.validate_python(list(events))), []
    except ValidationError:
        pass
    result: list[BatchModel | None] = []
    bad: list[tuple[int, str]] = []
    for index, raw in enumerate(events):
        try:
            result.append(model.model_validate(raw))
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(p) for p in error["loc"])
            bad.append((index, f"bad {field}: {error['msg']}"))
            result.append(None)
    return result, bad


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bulk step; resume it after.

    A 100k-event batch allocates about a million objects (models, row tuples,
    Decimals, datetimes), and each time the collector's thresholds trip it
    traverses all of them: 60-70% of a batch's Python time, measured here
    (0.34 s -> 0.10 s for the batch's checks). Reference counting still frees
    everything, and a batch makes no cycles. The collector resumes only if it
    was running (another thread's pause may end ours early: slower, never wrong).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
