"""Typed repositories, one per aggregate; bound to ``sql/`` when this package is imported."""

from .._loader import load_sql_dir
from .._repository import Repository, bind_repositories
from .._resources import sql_dir
from .accounts import AccountRepository
from .api_keys import ApiKeyRepository
from .files import FileRepository
from .plans import PlanRepository
from .rollups import RollupRepository
from .subscriptions import SubscriptionRepository
from .usage import UsageRepository
from .users import UserRepository

__all__ = [
    "REPOSITORIES",
    "AccountRepository",
    "ApiKeyRepository",
    "FileRepository",
    "PlanRepository",
    "Repository",
    "RollupRepository",
    "SubscriptionRepository",
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
)

# Fail at import, not at 3 a.m.: every declared query must exist with the
# declared cardinality, and every query in sql/ must be used.
bind_repositories(load_sql_dir(sql_dir()), REPOSITORIES)
