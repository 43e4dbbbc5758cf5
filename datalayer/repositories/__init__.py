"""Typed repositories, one per aggregate; bound to ``sql/`` when this package is imported.

Each repository is written once, async (``X_async.py``), and its sync twin
(``X.py``) is generated from it by ``tools/async_to_sync.py``. ``Repositories``
and ``AsyncRepositories`` (``_registry``) are the one list of them: each
attribute names a repository class, ``REPOSITORIES`` and
``ASYNC_REPOSITORIES`` are derived from them, and the databases and units of
work inherit them.
"""

from __future__ import annotations

from .. import _repository, _repository_async
from .._loader import load_sql_dir
from .._repository import Repository
from .._repository_async import AsyncRepository
from .._resources import sql_dir
from ._registry import REPOSITORIES, Repositories
from ._registry_async import ASYNC_REPOSITORIES, AsyncRepositories
from .accounts import AccountRepository
from .accounts_async import AsyncAccountRepository
from .analytics import AnalyticsRepository
from .analytics_async import AsyncAnalyticsRepository
from .api_keys import ApiKeyRepository
from .api_keys_async import AsyncApiKeyRepository
from .billing import BillingRepository
from .billing_async import AsyncBillingRepository
from .cache_invalidations import CacheInvalidationRepository
from .cache_invalidations_async import AsyncCacheInvalidationRepository
from .files import FileRepository
from .files_async import AsyncFileRepository
from .maintenance import MaintenanceRepository
from .maintenance_async import AsyncMaintenanceRepository
from .plans import PlanRepository
from .plans_async import AsyncPlanRepository
from .quotas import QuotaRepository
from .quotas_async import AsyncQuotaRepository
from .rollups import RollupRepository
from .rollups_async import AsyncRollupRepository
from .subscriptions import SubscriptionRepository
from .subscriptions_async import AsyncSubscriptionRepository
from .usage import UsageRepository
from .usage_async import AsyncUsageRepository
from .usage_reports import UsageReportRepository
from .usage_reports_async import AsyncUsageReportRepository
from .users import UserRepository
from .users_async import AsyncUserRepository

__all__ = [
    "ASYNC_REPOSITORIES",
    "REPOSITORIES",
    "AccountRepository",
    "AnalyticsRepository",
    "ApiKeyRepository",
    "AsyncAccountRepository",
    "AsyncAnalyticsRepository",
    "AsyncApiKeyRepository",
    "AsyncBillingRepository",
    "AsyncCacheInvalidationRepository",
    "AsyncFileRepository",
    "AsyncMaintenanceRepository",
    "AsyncPlanRepository",
    "AsyncQuotaRepository",
    "AsyncRepositories",
    "AsyncRepository",
    "AsyncRollupRepository",
    "AsyncSubscriptionRepository",
    "AsyncUsageReportRepository",
    "AsyncUsageRepository",
    "AsyncUserRepository",
    "BillingRepository",
    "CacheInvalidationRepository",
    "FileRepository",
    "MaintenanceRepository",
    "PlanRepository",
    "QuotaRepository",
    "Repositories",
    "Repository",
    "RollupRepository",
    "SubscriptionRepository",
    "UsageReportRepository",
    "UsageRepository",
    "UserRepository",
]

# Fail at import, not at 3 a.m.: every declared query must exist with the
# declared cardinality, and every query in sql/ must be used, by both APIs.
_CATALOG = load_sql_dir(sql_dir())
_repository.bind_repositories(_CATALOG, REPOSITORIES)
_repository_async.bind_repositories(_CATALOG, ASYNC_REPOSITORIES)
