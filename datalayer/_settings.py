"""Settings from arguments or the environment, with defaults for a local PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from ._cachecore import SigningKeys
from ._conninfo import check_conninfo, check_redis_url, redact
from .errors import InvalidInput

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/datalayer"

# A PostgreSQL role name that needs no quoting in messages and docs.
_ROLE_NAME = r"^[a-z_][a-z0-9_]{0,62}$"

# Environment variable -> field name. DATABASE_URL and REDIS_URL are the
# names every platform already uses; the rest carry a DATALAYER_ prefix.
_ENV = {
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "DATALAYER_CACHE_KEYS": "cache_keys",
    "DATALAYER_ADMIN_URL": "admin_url",
    "DATALAYER_OWNER_ROLE": "owner_role",
    "DATALAYER_APP_ROLE": "app_role",
    "DATALAYER_POOL_MIN_SIZE": "pool_min_size",
    "DATALAYER_POOL_MAX_SIZE": "pool_max_size",
    "DATALAYER_POOL_TIMEOUT": "pool_timeout",
    "DATALAYER_POOL_MAX_LIFETIME": "pool_max_lifetime",
    "DATALAYER_POOL_MAX_IDLE": "pool_max_idle",
    "DATALAYER_POOL_RECONNECT_TIMEOUT": "pool_reconnect_timeout",
    "DATALAYER_POOL_RECONNECT_MAX_DELAY": "pool_reconnect_max_delay",
    "DATALAYER_CONNECT_TIMEOUT": "connect_timeout",
    "DATALAYER_STATEMENT_TIMEOUT_MS": "statement_timeout_ms",
    "DATALAYER_LOCK_TIMEOUT_MS": "lock_timeout_ms",
    "DATALAYER_APPLICATION_NAME": "application_name",
    "DATALAYER_PREPARE_THRESHOLD": "prepare_threshold",
    "DATALAYER_JIT": "jit",
    "DATALAYER_OTEL": "otel",
    "DATALAYER_PGBOUNCER": "pgbouncer",
    "DATALAYER_REPLICA_URLS": "replica_urls",
    "DATALAYER_REPLICA_WAIT_MS": "replica_wait_ms",
    "DATALAYER_REPLICA_MAX_LAG_MS": "replica_max_lag_ms",
    "DATALAYER_CITUS_SHARD_COUNT": "citus_shard_count",
}

# Words that mean None for the settings that may be None.
_NONE_WORDS = {
    "prepare_threshold": {"none", "off", "disable"},
    "pgbouncer": {"auto", "detect"},
    "citus_shard_count": {"default"},
}


_VAR = {field: var for var, field in _ENV.items()}


def _refusal(exc: ValidationError) -> InvalidInput:
    """The first problem pydantic found, as ``InvalidInput`` naming the field."""
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    return InvalidInput(message, field=name or None)


class Settings(BaseModel):
    """How datalayer connects. Build with ``Settings(...)`` or ``Settings.from_env()``.

    Timeouts are in seconds unless the name says ``_ms``. ``prepare_threshold``
    is psycopg's: ``None`` disables server-side prepared statements, which
    PgBouncer in transaction mode before 1.22 requires. ``jit`` is off by
    default: these are short queries, and JIT only switches on when the
    planner overestimates a plan's cost, which then pays milliseconds of
    compiling (13 ms on ``active_users``, 0.9 s on a staged usage batch).

    ``pgbouncer`` says whether ``database_url`` reaches PostgreSQL through a
    transaction pooler: ``None`` (the default) detects one on each new
    connection, ``True`` declares it (no startup options, no prepared
    statements, session settings set per transaction), ``False`` declares
    there is none, or PgBouncer >= 1.21 with ``max_prepared_statements``, and
    skips the probe (README: Scaling out on PostgreSQL).

    ``database_url`` is what the application (``Database``) connects with;
    ``admin_url`` (default: ``database_url``) is what the admin commands
    (migrate, partitions, archive, backup, seed, …) connect with. ``datalayer
    migrate`` makes ``owner_role`` own every object and grants ``app_role``
    only what the application needs (README: Security model).
    """

    # hide_input_in_errors: a refused database_url would otherwise be echoed, password and all.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    database_url: str = Field(default=DEFAULT_DATABASE_URL, repr=False, min_length=1)
    redis_url: str | None = Field(default=None, repr=False)
    # The HMAC keys that sign cached values, "kid:hexsecret[,kid:hexsecret...]": the
    # first signs, all verify (rotation). Required with redis_url: the cache fails closed.
    cache_keys: SecretStr | None = Field(default=None, validate_default=True)
    admin_url: str | None = Field(default=None, repr=False, min_length=1)
    owner_role: str = Field(default="datalayer_owner", pattern=_ROLE_NAME)
    app_role: str = Field(default="datalayer_app", pattern=_ROLE_NAME)
    pool_min_size: int = Field(default=2, ge=0)
    # 8: the smallest size with the best throughput under `datalayer bench
    # --pool-sweep` here (16 threads, mixed load, 2 cores); 16 gave no more
    # throughput at twice the p99, 2 and 4 queued callers (README: Pool sizing).
    pool_max_size: int = Field(default=8, ge=1)
    pool_timeout: float = Field(default=5.0, gt=0)
    pool_max_lifetime: float = Field(default=3600.0, gt=0)
    pool_max_idle: float = Field(default=600.0, gt=0)
    pool_reconnect_timeout: float = Field(default=300.0, gt=0)
    # The longest pause between two attempts to reconnect one pool slot, so that a
    # server back after an outage is used within about this long (psycopg_pool
    # alone doubles the pause up to minutes); see _database._Pool.
    pool_reconnect_max_delay: float = Field(default=1.0, ge=0.1)
    connect_timeout: int = Field(default=5, ge=1)
    statement_timeout_ms: int = Field(default=30_000, ge=0)
    lock_timeout_ms: int = Field(default=10_000, ge=0)
    application_name: str = Field(default="datalayer", min_length=1, max_length=63)
    prepare_threshold: int | None = Field(default=5, ge=0)
    jit: bool = False
    # OpenTelemetry spans and metrics (the otel extra): Database calls datalayer.instrument().
    otel: bool = False
    pgbouncer: bool | None = None
    # Read replicas for db.replica (DATALAYER_REPLICA_URLS: separated by spaces).
    replica_urls: tuple[str, ...] = Field(default=(), repr=False)
    # How long a replica read of an account waits for its writes to be replayed,
    # and the replay lag past which a replica is skipped (README: Scaling out).
    replica_wait_ms: int = Field(default=200, ge=0, le=60_000)
    replica_max_lag_ms: int = Field(default=10_000, ge=0)
    # Shards per distributed table when `datalayer migrate` first lays the schema
    # out on a Citus coordinator (None: the cluster's citus.shard_count, 32).
    citus_shard_count: int | None = Field(default=None, ge=1, le=64_000)

    def __init__(self, **values: Any) -> None:
        # pydantic's ValidationError is not a DataLayerError: refuse with InvalidInput
        # naming the field, as every public entry point does.
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _refusal(exc) from None

    @field_validator("database_url", "admin_url")
    @classmethod
    def _usable_conninfo(cls, value: str | None) -> str | None:
        if value is not None:
            check_conninfo(value)  # its message never holds the password
        return value

    @field_validator("redis_url")
    @classmethod
    def _usable_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_redis_url(value)
        return value

    @field_validator("replica_urls", mode="before")
    @classmethod
    def _split_replica_urls(cls, value: Any) -> Any:
        return tuple(value.split()) if isinstance(value, str) else value

    @field_validator("replica_urls")
    @classmethod
    def _usable_replica_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            check_conninfo(url)  # its message never holds the password
        return value

    @field_validator("pool_max_size")
    @classmethod
    def _max_not_below_min(cls, value: int, info: Any) -> int:
        minimum = info.data.get("pool_min_size", 0)
        if value < minimum:
            raise ValueError(f"must be >= pool_min_size ({minimum})")
        return value

    @field_validator("cache_keys")
    @classmethod
    def _keys_for_redis(cls, value: SecretStr | None, info: Any) -> SecretStr | None:
        if value is None:
            if info.data.get("redis_url"):
                raise ValueError("must be set with REDIS_URL: the keys that sign cached values")
            return None
        SigningKeys.parse(value.get_secret_value())  # its errors never show a secret
        return value

    @field_validator("app_role")
    @classmethod
    def _app_is_not_owner(cls, value: str, info: Any) -> str:
        if value == info.data.get("owner_role"):
            raise ValueError("must differ from owner_role")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); ``overrides`` win.

        Raises ``InvalidInput`` naming the variable when a value is malformed.
        ``DATALAYER_PREPARE_THRESHOLD=none`` disables prepared statements;
        ``DATALAYER_PGBOUNCER`` is ``true``, ``false`` or ``auto`` (detect).
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for var, field in _ENV.items():
            raw = source.get(var)
            if raw is None or raw == "":
                continue
            if raw.lower() in _NONE_WORDS.get(field, ()):
                values[field] = None
            else:
                values[field] = raw
        values.update(overrides)
        try:
            return cls(**values)
        except InvalidInput as exc:  # name the variable the value came from
            message = str(exc).removeprefix(f"{exc.field}: ")
            raise InvalidInput(message, field=_VAR.get(exc.field or "", exc.field)) from None

    @property
    def safe_database_url(self) -> str:
        """The database URL with its password replaced by ``***``, for logs and errors."""
        return redact(self.database_url)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in type(self).model_fields
            if name not in {"database_url", "redis_url", "admin_url", "replica_urls"}
        )
        redis = redact(self.redis_url) if self.redis_url else None
        admin = redact(self.admin_url) if self.admin_url else None
        return (
            f"Settings(database_url={self.safe_database_url!r}, redis_url={redis!r}, "
            f"admin_url={admin!r}, replica_urls={tuple(map(redact, self.replica_urls))!r}, "
            f"{fields})"
        )

    __str__ = __repr__
