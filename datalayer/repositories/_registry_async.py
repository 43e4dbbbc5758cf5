"""The one list of repositories: each attribute of ``AsyncRepositories`` names a class.

``ASYNC_REPOSITORIES`` is derived from it (and bound to ``sql/`` when the
package is imported); ``AsyncDatabase`` and ``AsyncUnitOfWork`` inherit it.
"""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar, overload

from .._exec_async import AsyncSession
from .._repository_async import AsyncRepository
from .accounts_async import AsyncAccountRepository
from .analytics_async import AsyncAnalyticsRepository
from .api_keys_async import AsyncApiKeyRepository
from .billing_async import AsyncBillingRepository
from .cache_invalidations_async import AsyncCacheInvalidationRepository
from .files_async import AsyncFileRepository
from .maintenance_async import AsyncMaintenanceRepository
from .plans_async import AsyncPlanRepository
from .quotas_async import AsyncQuotaRepository
from .rollups_async import AsyncRollupRepository
from .subscriptions_async import AsyncSubscriptionRepository
from .usage_async import AsyncUsageRepository
from .usage_reports_async import AsyncUsageReportRepository
from .users_async import AsyncUserRepository

__all__ = ["ASYNC_REPOSITORIES", "AsyncRepositories"]

R = TypeVar("R", bound=AsyncRepository)


class _Attribute(Generic[R]):
    """A repository attribute of ``AsyncRepositories``: made on first use, bound to its session."""

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
    def __get__(self, obj: AsyncRepositories, owner: type) -> R: ...
    def __get__(self, obj: AsyncRepositories | None, owner: type) -> Self | R:
        if obj is None:
            return self
        repository = self.repository(obj._session)
        obj.__dict__[self.name] = repository  # later reads skip this descriptor
        return repository


class AsyncRepositories:
    """Every repository, bound to one session; each made on first use."""

    accounts = _Attribute(AsyncAccountRepository)
    users = _Attribute(AsyncUserRepository)
    plans = _Attribute(AsyncPlanRepository)
    subscriptions = _Attribute(AsyncSubscriptionRepository)
    usage = _Attribute(AsyncUsageRepository)
    rollups = _Attribute(AsyncRollupRepository)
    quotas = _Attribute(AsyncQuotaRepository)
    usage_reports = _Attribute(AsyncUsageReportRepository)
    analytics = _Attribute(AsyncAnalyticsRepository)
    files = _Attribute(AsyncFileRepository)
    api_keys = _Attribute(AsyncApiKeyRepository)
    billing = _Attribute(AsyncBillingRepository)
    cache_invalidations = _Attribute(AsyncCacheInvalidationRepository)
    maintenance = _Attribute(AsyncMaintenanceRepository)

    def __init__(self, session: AsyncSession):
        self._session = session


def _declared(holder: type) -> tuple[type[AsyncRepository], ...]:
    attributes: list[_Attribute[Any]] = [
        v for v in vars(holder).values() if isinstance(v, _Attribute)
    ]
    return tuple(a.repository for a in attributes)


ASYNC_REPOSITORIES: tuple[type[AsyncRepository], ...] = _declared(AsyncRepositories)
