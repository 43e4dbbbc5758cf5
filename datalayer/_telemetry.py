"""OpenTelemetry: a span per named query, unit of work and cache read; metrics by query.

Off until ``datalayer.instrument()`` (or ``DATALAYER_OTEL=true``, which makes
``Database`` call it): until then ``ACTIVE`` is ``None``, the hot paths test
it once per call, and ``opentelemetry`` is never imported. It is an optional
extra (``pip install "datalayer[otel]"``).

Spans follow the stable database semantic conventions: named by the query
(``usage.record_usage_event``: the SQL file and the query's name), with
``db.system.name``, ``db.namespace``, ``db.operation.name``,
``db.collection.name``, ``db.query.summary``, ``db.query.text`` (the
parameterised SQL: values are never recorded), ``server.address`` and
``server.port``; on failure ``error.type`` (the datalayer error class) and
``db.response.status_code`` (the SQLSTATE); for ``COPY``
``db.operation.batch.size``. Metrics: the ``db.client.operation.duration``
histogram (seconds) by query, and the pools' ``db.client.connection.count``
(by state), ``db.client.connection.max`` and
``db.client.connection.pending_requests``.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import DataLayerError, InvalidInput

if TYPE_CHECKING:
    import psycopg

    from ._loader import Query

__all__ = ["ACTIVE", "Telemetry", "instrument", "register_pool", "uninstrument"]

T = TypeVar("T")

SCOPE = "datalayer"
_log = logging.getLogger("datalayer")

#: The installed telemetry, or None: every hook tests this first.
ACTIVE: Telemetry | None = None

# Pools to observe (Database registers its own) by their name in the gauges: the pool's
# name and a number, so that two databases of one application are told apart.
_POOLS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_REGISTERED = itertools.count(1)

_VERBS = ("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY")
_NOISE = re.compile(r"--[^\n]*|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$\$.*?\$\$", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*|[()]")


@dataclass(frozen=True, slots=True)
class Shape:
    """What a query does, read once from its SQL: the operation and its main table."""

    operation: str
    collection: str | None

    @property
    def summary(self) -> str:
        return f"{self.operation} {self.collection}" if self.collection else self.operation


def shape_of(sql: str) -> Shape:
    """The top-level operation of ``sql`` and the table it acts on.

    The operation is the first of SELECT/INSERT/UPDATE/DELETE/MERGE/COPY outside
    parentheses (so a ``WITH`` query is named by its main statement); the table
    follows ``INTO``, ``UPDATE``, ``FROM`` (also of ``DELETE``) or ``COPY``.
    """
    words = _WORD.findall(_NOISE.sub(" ", sql))
    if words and words[0].upper() in ("CREATE", "DROP", "TRUNCATE", "LOCK", "ALTER"):
        # DDL and locks: the statement's verb and, when it names one, its table.
        tables = [w for i, w in enumerate(words[1:-1], 1) if words[i - 1].upper() == "TABLE"]
        return Shape(words[0].upper(), tables[0] if tables else None)
    depth, operation, collection = 0, "", None
    for i, word in enumerate(words):
        if word == "(":
            depth += 1
            continue
        if word == ")":
            depth -= 1
            continue
        upper = word.upper()
        if depth == 0 and not operation and upper in _VERBS:
            operation = upper
            if upper in ("UPDATE", "COPY") and i + 1 < len(words):
                candidate = words[i + 1]
                if candidate.upper() == "ONLY" and i + 2 < len(words):
                    candidate = words[i + 2]
                collection = candidate if candidate != "(" else None
                break
            continue
        if depth == 0 and operation and upper in ("INTO", "FROM") and i + 1 < len(words):
            candidate = words[i + 1]
            collection = None if candidate in ("(", ")") else candidate
            break
    return Shape(operation or "OTHER", collection)


class Telemetry:
    """The tracer, the meter and their instruments; installed by ``instrument()``."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None):
        from opentelemetry import metrics, trace

        version = _version()
        self.tracer = trace.get_tracer(SCOPE, version, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, version, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10,
            ],
        )  # fmt: skip
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[_connection_counts],
            unit="{connection}",
            description="The number of connections that are currently in the state described.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[_connection_max],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[_pending_requests],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        self._status_error = trace.StatusCode.ERROR
        self._kind = trace.SpanKind.CLIENT
        self._shapes: dict[str, tuple[str, dict[str, Any]]] = {}
        # Per connection its (database, host, port); per query and endpoint the span's and
        # the metric's attributes, built once: a traced call then only looks them up.
        self._endpoints: weakref.WeakKeyDictionary[Any, tuple[str, str, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._attributes: dict[tuple[str, tuple[str, str, int]], tuple[Any, Any]] = {}

    def _static(self, query: Query) -> tuple[str, dict[str, Any]]:
        """The span name and the attributes a query always has (computed once)."""
        cached = self._shapes.get(query.name)
        if cached is None:
            shape = shape_of(query.sql)
            attributes: dict[str, Any] = {
                "db.system.name": "postgresql",
                "db.operation.name": shape.operation,
                "db.query.summary": shape.summary,
                "db.query.text": query.sql,
            }
            if shape.collection:
                attributes["db.collection.name"] = shape.collection
            cached = (f"{query.aggregate}.{query.name}", attributes)
            self._shapes[query.name] = cached
        return cached

    @contextmanager
    def statement(
        self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], query: Query
    ) -> Iterator[Any]:
        """The block (the query on ``conn``) inside its span, timed into the histogram.

        Yields the span (``db.operation.batch.size`` is set on it after a COPY).
        A context manager rather than a callback, so that the sync and the
        async I/O (which awaits inside the block) share it.
        """
        name, static = self._static(query)
        endpoint = self._endpoints.get(conn)
        if endpoint is None:
            info = conn.info
            endpoint = self._endpoints[conn] = (info.dbname, info.host, info.port)
        cached = self._attributes.get((query.name, endpoint))
        if cached is None:
            cached = self._attributes[(query.name, endpoint)] = _attributes(name, static, endpoint)
        attributes, metric = cached
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            name, kind=self._kind, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                yield span
            except DataLayerError as exc:
                failure = _failure(exc)
                span.set_attributes(failure)
                span.set_status(self._status_error, str(exc)[:200])
                metric = {**metric, **failure}
                raise
            finally:
                self.duration.record(time.perf_counter() - started, metric)

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[Any]:
        """An internal span (a unit of work, a cache read) around the block."""
        with self.tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                yield span
            except DataLayerError as exc:
                span.set_attributes({"error.type": type(exc).__name__})
                span.set_status(self._status_error, str(exc)[:200])
                raise


def _attributes(
    name: str, static: dict[str, Any], endpoint: tuple[str, str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A query's span attributes and metric attributes on one endpoint."""
    dbname, host, port = endpoint
    where = {"db.namespace": dbname, "server.address": host, "server.port": port}
    metric = {
        "db.system.name": "postgresql",
        "db.operation.name": static["db.operation.name"],
        "db.query.summary": static["db.query.summary"],
        "datalayer.query.name": name,
        **where,
    }
    if "db.collection.name" in static:
        metric["db.collection.name"] = static["db.collection.name"]
    return {**static, **where}, metric


def _failure(exc: DataLayerError) -> dict[str, Any]:
    failure: dict[str, Any] = {"error.type": type(exc).__name__}
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        failure["db.response.status_code"] = sqlstate
    return failure


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("datalayer")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _observations(read: Callable[[dict[str, int]], list[tuple[int, dict[str, str]]]]) -> Any:
    from opentelemetry.metrics import Observation

    found = []
    for name, pool in list(_POOLS.items()):
        try:
            stats = pool.get_stats()
        except Exception as exc:
            _log.debug("pool %s left out of the connection gauges: %s", name, exc)
            continue
        base = {"db.client.connection.pool.name": name}
        for value, extra in read(stats):
            found.append(Observation(value, {**base, **extra}))
    return found


def _connection_counts(_: Any) -> Any:
    def read(stats: dict[str, int]) -> list[tuple[int, dict[str, str]]]:
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        return [
            (idle, {"db.client.connection.state": "idle"}),
            (size - idle, {"db.client.connection.state": "used"}),
        ]

    return _observations(read)


def _connection_max(_: Any) -> Any:
    return _observations(lambda stats: [(stats.get("pool_max", 0), {})])


def _pending_requests(_: Any) -> Any:
    return _observations(lambda stats: [(stats.get("requests_waiting", 0), {})])


def register_pool(pool: Any) -> str:
    """Observe ``pool`` (a psycopg pool) in the connection gauges while it lives; returns
    its ``db.client.connection.pool.name``."""
    name = f"{pool.name}-{next(_REGISTERED)}"
    _POOLS[name] = pool
    return name


def unregister_pool(name: str) -> None:
    """Stop observing the pool registered as ``name`` (it was closed).

    A closed pool may live on until a full garbage collection (its database is
    in reference cycles); observed meanwhile, hundreds of them pushed the live
    pools' gauges past the SDK's cardinality limit (2000 attribute sets).
    """
    _POOLS.pop(name, None)


def instrument(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Turn telemetry on for every ``Database`` of this process.

    Uses the global OpenTelemetry providers unless given others (tests pass
    the SDK's in-memory ones). Raises ``InvalidInput`` for something that is not a
    provider, ``DataLayerError`` when OpenTelemetry is not installed
    (``pip install "datalayer[otel]"``).
    """
    global ACTIVE
    for name, provider, method in (("tracer_provider", tracer_provider, "get_tracer"),
                                   ("meter_provider", meter_provider, "get_meter")):  # fmt: skip
        if provider is not None and not callable(getattr(provider, method, None)):
            raise InvalidInput(f"must be an OpenTelemetry provider (with {method}) or None",
                               field=name)  # fmt: skip
    try:
        ACTIVE = Telemetry(tracer_provider, meter_provider)
    except ImportError:
        raise DataLayerError(
            'OpenTelemetry is not installed: pip install "datalayer[otel]"'
        ) from None


def uninstrument() -> None:
    """Turn telemetry off again (the hot paths go back to one test of ``ACTIVE``)."""
    global ACTIVE
    ACTIVE = None
