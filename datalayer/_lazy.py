"""A module imported the first time one of its attributes is read.

``import redis`` costs ~130 ms here: redis-py 8 loads its observability stack at
import, OpenTelemetry's SDK included when it is installed. A process that never
talks to Redis (most CLI commands, a service without a cache or replicas) should
not pay that on every start, so the modules that use Redis bind it as
``redis = LazyModule("redis")`` (the real module for the type checker).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    """Stands for the module ``name``; reading an attribute imports it (once: the import
    system caches it), then returns the module's attribute."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"
