"""Argument validation for repository methods: typed errors that name the field."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ParamSpec, TypeVar

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

__all__ = ["Email", "Id", "Limit", "Name", "Text", "no_nul", "validate_batch", "validated"]

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
    """
    checked = validate_call(config=_CONFIG)(func)

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return checked(*args, **kwargs)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
            raise InvalidInput(str(error["msg"]), field=".".join(loc) or None) from None

    return wrapper


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
