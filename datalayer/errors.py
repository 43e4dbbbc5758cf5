"""Every error datalayer raises, and the one place SQLSTATEs become them."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import psycopg
import psycopg_pool

__all__ = [
    "AlreadyExists",
    "CheckViolation",
    "ConcurrencyConflict",
    "DataLayerError",
    "DatabaseError",
    "IntegrityError",
    "InvalidInput",
    "InvalidTransition",
    "LiveSubscriptionExists",
    "NotFound",
    "NotNullViolation",
    "PartitionMissing",
    "PermissionDenied",
    "QueryTimeout",
    "QuotaExceeded",
    "ReadOnlyTransaction",
    "ReferenceViolation",
    "SQLLoadError",
    "Unavailable",
    "map_error",
]


class DataLayerError(Exception):
    """Base class of every error raised by datalayer."""


class SQLLoadError(DataLayerError):
    """A SQL file, query header or query binding is wrong; raised at load time.

    ``path`` and ``line`` point at the offending place.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, line: int | None = None):
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class NotFound(DataLayerError):
    """A row that the caller required does not exist."""


class InvalidTransition(DataLayerError):
    """A state change was refused because the row is not in the state it requires.

    ``entity`` and ``entity_id`` name the row, ``expected`` the states the
    change needs and ``actual`` the state found (``None`` when the row does
    not exist). Nothing was changed.
    """

    def __init__(
        self,
        message: str,
        *,
        entity: str,
        entity_id: int | None = None,
        expected: tuple[str, ...] = (),
        actual: str | None = None,
    ):
        self.entity = entity
        self.entity_id = entity_id
        self.expected = expected
        self.actual = actual
        super().__init__(message)


class QuotaExceeded(DataLayerError):
    """Consuming would pass a hard limit; nothing was consumed.

    ``limit``, ``used`` (consumed and reserved) and ``remaining`` describe the
    quota of ``meter_code`` for the current period, as read when refusing.
    """

    def __init__(
        self,
        message: str,
        *,
        meter_code: str,
        limit: Decimal,
        used: Decimal,
        remaining: Decimal,
    ):
        self.meter_code = meter_code
        self.limit = limit
        self.used = used
        self.remaining = remaining
        super().__init__(message)


class InvalidInput(DataLayerError, ValueError):
    """An argument was refused before touching the database; ``field`` names it."""

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class DatabaseError(DataLayerError):
    """PostgreSQL refused a statement.

    ``sqlstate``, ``constraint``, ``table`` and ``column`` come from the
    server's diagnostics (``None`` when the server did not send them).
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        constraint: str | None = None,
        table: str | None = None,
        column: str | None = None,
    ):
        self.sqlstate = sqlstate
        self.constraint = constraint
        self.table = table
        self.column = column
        super().__init__(message)


class IntegrityError(DatabaseError):
    """A constraint refused the row; nothing of the statement was written."""


class AlreadyExists(IntegrityError):
    """A unique constraint refused a duplicate (SQLSTATE 23505)."""


class LiveSubscriptionExists(AlreadyExists):
    """The account already has a live subscription (trialing, active or past_due).

    Raised for the partial unique index ``subscriptions_one_live_per_account``,
    also when two processes start a subscription for one account at once.
    """


class ReferenceViolation(IntegrityError):
    """A foreign key refused the row (SQLSTATE 23503)."""


class CheckViolation(IntegrityError):
    """A CHECK constraint refused the row (SQLSTATE 23514)."""


class NotNullViolation(IntegrityError):
    """A NOT NULL column was given no value (SQLSTATE 23502)."""


class PartitionMissing(IntegrityError):
    """An event's time falls in a month without a partition; ``month`` is ``YYYY-MM``.

    Run ``datalayer partitions ensure`` (``migrate`` does) to create partitions ahead.
    """

    month: str | None = None


class ConcurrencyConflict(DatabaseError):
    """A serialization failure (40001) or deadlock (40P01): retrying may succeed."""


class QueryTimeout(DatabaseError):
    """``statement_timeout`` (57014) or ``lock_timeout`` (55P03) cancelled the statement."""


class PermissionDenied(DatabaseError):
    """The connecting role lacks a privilege (SQLSTATE 42501).

    The application role may read and write data but never change the schema,
    truncate a table, or update or delete ledger and event rows (README:
    Security model); schema work belongs to the admin URL.
    """


class ReadOnlyTransaction(DatabaseError):
    """A write reached a read-only transaction or a hot standby (SQLSTATE 25006)."""


class Unavailable(DatabaseError):
    """No usable connection: the pool timed out, or the connection was lost.

    Whether a statement in flight when the connection was lost took effect is
    unknown; a unit of work that raised this did not commit unless the loss
    happened during COMMIT itself.
    """


_BY_SQLSTATE: dict[str, type[DatabaseError]] = {
    "23505": AlreadyExists,
    "23503": ReferenceViolation,
    "23514": CheckViolation,
    "23502": NotNullViolation,
    "40001": ConcurrencyConflict,
    "40P01": ConcurrencyConflict,
    "57014": QueryTimeout,
    "55P03": QueryTimeout,
    "25006": ReadOnlyTransaction,
    "42501": PermissionDenied,
    # The server is going away: the connection is gone.
    "57P01": Unavailable,
    "57P02": Unavailable,
    "57P03": Unavailable,
}


# Constraints whose violation means something in the domain get their own class.
_PUBLISHED = "published plan versions are immutable: publish a new version instead"
_BY_CONSTRAINT: dict[str, tuple[type[DatabaseError], str]] = {
    "subscriptions_one_live_per_account": (
        LiveSubscriptionExists,
        "the account already has a live subscription (trialing, active or past_due); "
        "cancel or change it instead",
    ),
    # The price book's seals (migration 0021): foreign keys that hold what the
    # triggers of 0002 held, reported as the check violations those raised.
    "plans_published_immutable": (CheckViolation, _PUBLISHED),
    "plan_meters_published_immutable": (CheckViolation, _PUBLISHED),
    "plan_meters_plan_seal_fkey": (
        CheckViolation,
        "a meter row must carry its plan's seal state, and a published version takes no new meter",
    ),
    "plan_meters_seal_fkey": (CheckViolation, _PUBLISHED),
    "plans_seal_fkey": (
        CheckViolation,
        "a published plan version needs its seal (publish it with plans.publish)",
    ),
    "plans_archival_fkey": (
        CheckViolation,
        "an archived plan version needs its archival row (archive it with plans.archive)",
    ),
    "plans_archived_final": (CheckViolation, "an archived plan version stays archived"),
}

_SHARD_SUFFIX = re.compile(r"_(\d+)$")


def _unsharded(constraint: str | None, table: str | None) -> tuple[str | None, str | None]:
    """The names of the schema for those of a Citus shard.

    On Citus a worker reports the shard's names: ``users_email_key_102078`` on
    table ``user_emails_102078``, the shard id appended to both. Stripped only
    when both names end in the same ``_<digits>``, so a name of the schema that
    merely ends in digits is left alone.
    """
    if constraint is None or table is None:
        return constraint, table
    on_constraint, on_table = _SHARD_SUFFIX.search(constraint), _SHARD_SUFFIX.search(table)
    if on_constraint and on_table and on_constraint.group(1) == on_table.group(1):
        return constraint[: on_constraint.start()], table[: on_table.start()]
    return constraint, table


def map_error(exc: BaseException) -> DataLayerError:
    """Translate a psycopg or pool exception into the datalayer error for it.

    The result keeps the server's SQLSTATE and constraint name; callers raise
    it ``from exc`` so the original stays in the traceback.
    """
    if isinstance(exc, DataLayerError):
        return exc
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return Unavailable(f"no database connection available: {exc}")
    if isinstance(exc, psycopg_pool.PoolClosed):
        return Unavailable(f"the connection pool is closed: {exc}")
    if not isinstance(exc, psycopg.Error):
        return DataLayerError(str(exc))
    diag = exc.diag
    sqlstate = exc.sqlstate
    cls: type[DatabaseError] = DatabaseError
    if sqlstate is not None:
        cls = _BY_SQLSTATE.get(sqlstate, DatabaseError)
        if sqlstate.startswith("08"):
            cls = Unavailable
        elif cls is DatabaseError and sqlstate.startswith("23"):
            cls = IntegrityError
    elif isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # No SQLSTATE: the client lost the server (closed socket, EOF).
        cls = Unavailable
    message = (diag.message_primary or str(exc)).strip()
    constraint, table = _unsharded(diag.constraint_name, diag.table_name)
    if constraint is None and table is None:
        constraint, table = _from_citus_message(message)
        if constraint is not None or table is not None:
            message = _QUOTED_SHARD.sub(r'"\1"', message)
            if cls is DatabaseError:  # relayed as an internal error (XX000): by its words
                cls = next((c for words, c in _CITUS_RELAYED if words in message), cls)
    for raw, name in ((diag.constraint_name, constraint), (diag.table_name, table)):
        if raw and name and raw != name:
            message = message.replace(f'"{raw}"', f'"{name}"')
    if (sqlstate == "23514" or table is not None) and message.startswith(
        "no partition of relation"
    ):
        return _partition_missing(message, diag.message_detail, table)
    if constraint and constraint not in message:
        message = f"{message} (constraint {constraint})"
    if diag.message_detail:
        message = f"{message}: {diag.message_detail}"
    if constraint in _BY_CONSTRAINT:
        cls, meaning = _BY_CONSTRAINT[constraint]
        message = f"{meaning} (constraint {constraint})"
    return cls(
        message,
        sqlstate=sqlstate,
        constraint=constraint,
        table=table,
        column=diag.column_name,
    )


# A worker's error relayed by the Citus coordinator keeps its message but loses the
# constraint and table fields; both are read back from the message, with the
# shard id (six digits and more) taken off each.
_MESSAGE_CONSTRAINT = re.compile(r'constraint "([^"]+)"')
_MESSAGE_TABLE = re.compile(r'(?:relation|table) "([^"]+)"')
_SHARD_ID = re.compile(r"_\d{6,}$")
_QUOTED_SHARD = re.compile(r'"([A-Za-z0-9_]+?)_\d{6,}"')


def _from_citus_message(message: str) -> tuple[str | None, str | None]:
    names = [
        found.group(1) if found else None
        for found in (_MESSAGE_CONSTRAINT.search(message), _MESSAGE_TABLE.search(message))
    ]
    if not any(name and _SHARD_ID.search(name) for name in names):
        return None, None  # not a shard's error: nothing to read back
    constraint, table = (_SHARD_ID.sub("", name) if name else None for name in names)
    return constraint, table


# What a relayed worker error says, and the class its SQLSTATE would have given.
_CITUS_RELAYED: tuple[tuple[str, type[DatabaseError]], ...] = (
    ("violates unique constraint", AlreadyExists),
    ("violates foreign key constraint", ReferenceViolation),
    ("violates check constraint", CheckViolation),
    ("violates not-null constraint", NotNullViolation),
)


_PARTITION_KEY = re.compile(r"\(([^)]*)\) = \((\d{4})-(\d{2})")


def _partition_missing(message: str, detail: str | None, table: str | None) -> PartitionMissing:
    match = _PARTITION_KEY.search(detail or "")
    month = f"{match.group(2)}-{match.group(3)}" if match else None
    if match:
        message = f"no partition of {table or 'the table'} for {match.group(1)} in {month}"
    error = PartitionMissing(
        f"{message}; run `datalayer partitions ensure` to create partitions ahead "
        "(events outside the accepted window are refused)",
        sqlstate="23514",
        table=table,
    )
    error.month = month
    return error
