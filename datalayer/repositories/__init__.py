"""Typed repositories, one per aggregate; bound to ``sql/`` when this package is imported."""

from .._loader import load_sql_dir
from .._repository import Repository, bind_repositories
from .._resources import sql_dir
from .accounts import AccountRepository
from .analytics import AnalyticsRepository
from .api_keys import ApiKeyRepository
from .billing import BillingRepository
from .files import FileRepository
from .plans import PlanRepository
from .quotas import QuotaRepository
from .rollups import RollupRepository
from .subscriptions import SubscriptionRepository
from .usage import UsageRepository
from .usage_reports import UsageReportRepository
from .users import UserRepository

__all__ = [
    "REPOSITORIES",
    "AccountRepository",
    "AnalyticsRepository",
    "ApiKeyRepository",
    "BillingRepository",
    "FileRepository",
    "PlanRepository",
    "QuotaRepository",
    "Repository",
    "RollupRepository",
    "SubscriptionRepository",
    "UsageReportRepository",
    "UsageRepository",
    "UserRepository",
]

REPOSITORIES: tuple[type[Repository], ...] = (
    AccountRepository,
    UserRepository,
    RollupRepository,
    UsageRepository,
    PlanRepository,
    SubscriptionRepository,
    FileRepository,
    ApiKeyRepository,
    QuotaRepository,
    UsageReportRepository,
    AnalyticsRepository,
    BillingRepository,
)

# Fail at import, not at 3 a.m.: every declared query must exist with the
# declared cardinality, and every query in sql/ must be used.
bind_repositories(load_sql_dir(sql_dir()), REPOSITORIES)
