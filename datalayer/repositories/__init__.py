"""Typed repositories, one per aggregate; bound to ``sql/`` when this package is imported.

``Repositories`` is the one list of them: each attribute names a repository
class, ``REPOSITORIES`` is derived from it, and ``Database`` and
``UnitOfWork`` inherit it.
"""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar, overload

from .._exec import Session
from .._loader import load_sql_dir
from .._repository import Repository, bind_repositories
from .._resources import sql_dir
from .accounts import AccountRepository
from .analytics import AnalyticsRepository
from .api_keys import ApiKeyRepository
from .billing import BillingRepository
from .cache_invalidations import CacheInvalidationRepository
from .files import FileRepository
from .maintenance import MaintenanceRepository
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

R = TypeVar("R", bound=Repository)


class _Attribute(Generic[R]):
    """A repository attribute of ``Repositories``: made on first use, bound to its session."""

    def __init__(self, repository: type[R]):
        self.repository = repository
        summary = (repository.__doc__ or repository.__name__).strip().splitlines()[0]
        self.__doc__ = f"{summary.rstrip('.')} (``sql/{repository.aggregate}.sql``)."
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: Repositories, owner: type) -> R: ...
    def __get__(self, obj: Repositories | None, owner: type) -> Self | R:
        if obj is None:
            return self
        repository = self.repository(obj._session)
        obj.__dict__[self.name] = repository  # later reads skip this descriptor
        return repository


class Repositories:
    """Every repository, bound to one session; each made on first use."""

    accounts = _Attribute(AccountRepository)
    users = _Attribute(UserRepository)
    plans = _Attribute(PlanRepository)
    subscriptions = _Attribute(SubscriptionRepository)
    usage = _Attribute(UsageRepository)
    rollups = _Attribute(RollupRepository)
    quotas = _Attribute(QuotaRepository)
    usage_reports = _Attribute(UsageReportRepository)
    analytics = _Attribute(AnalyticsRepository)
    files = _Attribute(FileRepository)
    api_keys = _Attribute(ApiKeyRepository)
    billing = _Attribute(BillingRepository)
    cache_invalidations = _Attribute(CacheInvalidationRepository)
    maintenance = _Attribute(MaintenanceRepository)

    def __init__(self, session: Session):
        self._session = session


def _declared(holder: type) -> tuple[type[Repository], ...]:
    attributes: list[_Attribute[Any]] = [
        v for v in vars(holder).values() if isinstance(v, _Attribute)
    ]
    return tuple(a.repository for a in attributes)


REPOSITORIES: tuple[type[Repository], ...] = _declared(Repositories)

# Fail at import, not at 3 a.m.: every declared query must exist with the
# declared cardinality, and every query in sql/ must be used.
bind_repositories(load_sql_dir(sql_dir()), REPOSITORIES)
