"""datalayer: the PostgreSQL data layer of a SaaS backend — named SQL, typed repositories."""

from ._database import Database, Isolation
from ._loader import Query
from ._settings import Settings
from ._uow import UnitOfWork
from .errors import (
    AlreadyExists,
    CheckViolation,
    ConcurrencyConflict,
    DatabaseError,
    DataLayerError,
    IntegrityError,
    InvalidInput,
    InvalidTransition,
    LiveSubscriptionExists,
    NotFound,
    NotNullViolation,
    PartitionMissing,
    QueryTimeout,
    ReadOnlyTransaction,
    ReferenceViolation,
    SQLLoadError,
    Unavailable,
)
from .models import Account, AccountStatus, User, UserRole
from .repositories import AccountRepository, UserRepository

__all__ = [
    "Account",
    "AccountRepository",
    "AccountStatus",
    "AlreadyExists",
    "CheckViolation",
    "ConcurrencyConflict",
    "DataLayerError",
    "Database",
    "DatabaseError",
    "IntegrityError",
    "InvalidInput",
    "InvalidTransition",
    "Isolation",
    "LiveSubscriptionExists",
    "NotFound",
    "NotNullViolation",
    "PartitionMissing",
    "Query",
    "QueryTimeout",
    "ReadOnlyTransaction",
    "ReferenceViolation",
    "SQLLoadError",
    "Settings",
    "Unavailable",
    "UnitOfWork",
    "User",
    "UserRepository",
    "UserRole",
]

__version__ = "0.1.0"
