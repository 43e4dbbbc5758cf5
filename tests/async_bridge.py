"""The async API seen through the sync one: the same tests run on both.

``Bridge`` runs an event loop in a thread; ``bridge.wrap(obj)`` gives a proxy
of an async object (``AsyncDatabase``, a unit of work, a repository, a psycopg
``AsyncConnection`` …) whose methods block until their coroutine is done on
that loop, whose async context managers are ``with`` blocks and async
iterators plain ones. A callable handed to a bridged method (``fn`` of
``run_in_transaction``, a ``build`` of the cache) is called in a worker
thread with bridged arguments, so that sync test code runs unchanged while
every database call goes through the async implementation.

What comes back is the async API's own result: models, pages, ints, errors
(raised as they are, so ``pytest.raises(NotFound)`` holds for both APIs).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from pydantic import BaseModel

__all__ = ["Bridge", "unwrap"]

_PLAIN = (str, bytes, int, float, bool, type(None), BaseModel, BaseException, type)


class Bridge:
    """An event loop in a thread, and proxies that run coroutines on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, awaitable: Any) -> Any:
        """Wait for ``awaitable`` on the loop (from any thread but the loop's)."""

        async def awaited() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(awaited(), self.loop).result()

    def call(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any, **kwargs: Any) -> Any:
        return self.run(fn(*args, **kwargs))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def wrap(self, value: Any) -> Any:
        """``value`` as the sync API would return it: plain values as they are, else a proxy."""
        if isinstance(value, _PLAIN) or value is None:
            return value
        if isinstance(value, list):
            return [self.wrap(v) for v in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(self.wrap(v) for v in value)
        if isinstance(value, dict | set | frozenset) or _is_data(value):
            return value
        return _Proxy(value, self)

    def to_async(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A sync callable of the tests as the async API wants it: awaited in a worker thread."""

        async def called(*args: Any, **kwargs: Any) -> Any:
            wrapped = [self.wrap(a) for a in args]
            result = await asyncio.to_thread(fn, *wrapped, **kwargs)
            return unwrap(result)

        return called


def _is_data(value: Any) -> bool:
    module = type(value).__module__
    return module in ("decimal", "datetime", "uuid", "pathlib", "ipaddress") or (
        module.startswith("psycopg.") and not isinstance(value, _ASYNC_PSYCOPG)
    )


_ASYNC_PSYCOPG = (psycopg.AsyncConnection, psycopg.AsyncCursor)


def unwrap(value: Any) -> Any:
    """The async object behind a proxy (for a value handed back to the async API)."""
    return value._target if isinstance(value, _Proxy) else value


class _Proxy:
    """An async object seen as a sync one (see the module docstring)."""

    __slots__ = ("_bridge", "_target")

    def __init__(self, target: Any, bridge: Bridge):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_bridge", bridge)

    def __repr__(self) -> str:
        return f"<bridged {self._target!r}>"

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if inspect.ismethod(value) or inspect.isfunction(value) or _is_bound_query(value):
            return functools.partial(_invoke, self._bridge, value)
        return self._bridge.wrap(value)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, unwrap(value))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _invoke(self._bridge, self._target, *args, **kwargs)

    def __enter__(self) -> Any:
        return self._bridge.wrap(self._bridge.run(self._target.__aenter__()))

    def __exit__(self, *exc: Any) -> Any:
        return self._bridge.run(self._target.__aexit__(*exc))

    def __iter__(self) -> Any:
        target = self._target
        if hasattr(target, "__aiter__"):
            iterator = target.__aiter__()
            while True:
                try:
                    item = self._bridge.run(iterator.__anext__())
                except StopAsyncIteration:
                    return
                yield self._bridge.wrap(item)
        yield from (self._bridge.wrap(v) for v in target)

    def __len__(self) -> int:
        return len(self._target)

    def __eq__(self, other: object) -> bool:
        return bool(self._target == unwrap(other))

    def __hash__(self) -> int:
        return hash(self._target)


def _is_bound_query(value: Any) -> bool:
    return type(value).__name__ in ("AsyncBound", "AsyncBoundCopy")


def _invoke(bridge: Bridge, fn: Any, *args: Any, **kwargs: Any) -> Any:
    args = tuple(_argument(bridge, a) for a in args)
    kwargs = {k: _argument(bridge, v) for k, v in kwargs.items()}
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = bridge.run(result)
    return bridge.wrap(result)


def _argument(bridge: Bridge, value: Any) -> Any:
    if isinstance(value, _Proxy):
        return value._target
    if callable(value) and not isinstance(value, type) and not inspect.iscoroutinefunction(value):
        return bridge.to_async(value)
    return value
