"""datalayer: the PostgreSQL data layer of a SaaS backend — named SQL, typed repositories."""

from ._cache import Cache
from ._cache_async import AsyncCache
from ._cachecore import CacheStats
from ._cached import CachedReads
from ._cached_async import AsyncCachedReads
from ._database import Database, Isolation
from ._database_async import AsyncDatabase
from ._health import HealthThresholds
from ._loader import Query
from ._paging import Page
from ._settings import Settings
from ._telemetry import instrument, uninstrument
from ._uow import UnitOfWork
from ._uow_async import AsyncUnitOfWork
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
    PermissionDenied,
    QueryTimeout,
    QuotaExceeded,
    ReadOnlyTransaction,
    ReferenceViolation,
    SQLLoadError,
    Unavailable,
)
from .models import *  # noqa: F403 - every model, listed in models.__all__
from .models import __all__ as _models
from .repositories import (
    AccountRepository,
    AnalyticsRepository,
    ApiKeyRepository,
    AsyncAccountRepository,
    AsyncAnalyticsRepository,
    AsyncApiKeyRepository,
    AsyncBillingRepository,
    AsyncCacheInvalidationRepository,
    AsyncFileRepository,
    AsyncMaintenanceRepository,
    AsyncPlanRepository,
    AsyncQuotaRepository,
    AsyncRollupRepository,
    AsyncSubscriptionRepository,
    AsyncUsageReportRepository,
    AsyncUsageRepository,
    AsyncUserRepository,
    BillingRepository,
    CacheInvalidationRepository,
    FileRepository,
    MaintenanceRepository,
    PlanRepository,
    QuotaRepository,
    RollupRepository,
    SubscriptionRepository,
    UsageReportRepository,
    UsageRepository,
    UserRepository,
)

__all__ = [
    "instrument",
    "uninstrument",
    "AsyncAccountRepository",
    "AsyncAnalyticsRepository",
    "AsyncApiKeyRepository",
    "AsyncBillingRepository",
    "AsyncCacheInvalidationRepository",
    "AsyncFileRepository",
    "AsyncMaintenanceRepository",
    "AsyncPlanRepository",
    "AsyncQuotaRepository",
    "AsyncRollupRepository",
    "AsyncSubscriptionRepository",
    "AsyncUsageReportRepository",
    "AsyncUsageRepository",
    "AsyncUserRepository",
    "AsyncCache",
    "AsyncCachedReads",
    "AsyncDatabase",
    "AsyncUnitOfWork",
    "AccountRepository",
    "AlreadyExists",
    "AnalyticsRepository",
    "ApiKeyRepository",
    "BillingRepository",
    "Cache",
    "CacheInvalidationRepository",
    "CacheStats",
    "CachedReads",
    "CheckViolation",
    "HealthThresholds",
    "MaintenanceRepository",
    "ConcurrencyConflict",
    "DataLayerError",
    "Database",
    "DatabaseError",
    "FileRepository",
    "IntegrityError",
    "InvalidInput",
    "InvalidTransition",
    "Isolation",
    "LiveSubscriptionExists",
    "NotFound",
    "NotNullViolation",
    "Page",
    "PartitionMissing",
    "PermissionDenied",
    "PlanRepository",
    "Query",
    "QueryTimeout",
    "QuotaExceeded",
    "QuotaRepository",
    "ReadOnlyTransaction",
    "ReferenceViolation",
    "RollupRepository",
    "SQLLoadError",
    "Settings",
    "SubscriptionRepository",
    "Unavailable",
    "UnitOfWork",
    "UsageReportRepository",
    "UsageRepository",
    "UserRepository",
    *_models,
]

__version__ = "0.1.0"
