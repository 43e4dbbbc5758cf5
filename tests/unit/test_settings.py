"""Settings come from arguments or the environment; passwords never leak."""

from __future__ import annotations

import pytest

from datalayer import Database, InvalidInput, Settings
from datalayer._conninfo import redact
from datalayer._settings import DEFAULT_DATABASE_URL


def test_defaults_point_at_a_local_postgresql() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.redis_url is None
    assert settings.pool_timeout > 0
    assert settings.prepare_threshold == 5


def test_environment_variables_are_read_and_converted() -> None:
    env = {
        "DATABASE_URL": "postgresql://app@db:6432/prod",
        "REDIS_URL": "redis://cache:6379/1",
        "DATALAYER_CACHE_KEYS": "k1:" + "ab" * 32,
        "DATALAYER_POOL_MAX_SIZE": "20",
        "DATALAYER_POOL_TIMEOUT": "2.5",
        "DATALAYER_PREPARE_THRESHOLD": "none",
    }
    settings = Settings.from_env(env)
    assert settings.database_url == "postgresql://app@db:6432/prod"
    assert settings.redis_url == "redis://cache:6379/1"
    assert settings.pool_max_size == 20
    assert settings.pool_timeout == 2.5
    assert settings.prepare_threshold is None


def test_arguments_override_the_environment() -> None:
    settings = Settings.from_env({"DATALAYER_POOL_MAX_SIZE": "20"}, pool_max_size=3)
    assert settings.pool_max_size == 3


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"DATALAYER_POOL_MAX_SIZE": "many"}, "DATALAYER_POOL_MAX_SIZE"),
        ({"DATALAYER_POOL_TIMEOUT": "-1"}, "DATALAYER_POOL_TIMEOUT"),
        (
            {"DATALAYER_POOL_MIN_SIZE": "8", "DATALAYER_POOL_MAX_SIZE": "4"},
            "DATALAYER_POOL_MAX_SIZE",
        ),
    ],
)
def test_a_malformed_variable_raises_invalid_input_naming_it(
    env: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        Settings.from_env(env)
    assert info.value.field == field


def test_unknown_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="pool_size"):
        Settings(pool_size=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:s3cret-pw@db.internal:5432/prod",
        "postgresql://app:s3cret-pw@db.internal/prod?sslmode=require",
        "host=db.internal user=app password=s3cret-pw dbname=prod",
    ],
)
def test_the_password_never_appears_in_repr_str_or_the_safe_url(url: str) -> None:
    settings = Settings(
        database_url=url,
        redis_url="redis://:s3cret-pw@cache:6379/0",
        cache_keys=CACHE_KEYS,
        admin_url=url,
    )
    for text in (
        repr(settings),
        str(settings),
        settings.safe_database_url,
        repr(Database(settings)),
    ):
        assert "s3cret-pw" not in text
        assert "***" in text
        assert "db.internal" in text


CACHE_SECRET = "c0ffee" * 11  # 33 bytes
CACHE_KEYS = f"k1:{CACHE_SECRET}"


def test_a_redis_url_without_signing_keys_is_refused_naming_the_variable() -> None:
    with pytest.raises(InvalidInput) as info:
        Settings.from_env({"REDIS_URL": "redis://cache:6379/0"})
    assert info.value.field == "DATALAYER_CACHE_KEYS"
    settings = Settings.from_env(
        {"REDIS_URL": "redis://cache:6379/0", "DATALAYER_CACHE_KEYS": CACHE_KEYS}
    )
    assert settings.cache_keys is not None
    assert settings.cache_keys.get_secret_value() == CACHE_KEYS
    assert Settings.from_env({}).cache_keys is None  # no Redis, no keys needed


@pytest.mark.parametrize(
    "keys", [f"k1:{CACHE_SECRET[:60]}", f"k1:{CACHE_SECRET}x", f"k 1:{CACHE_SECRET}"]
)
def test_malformed_signing_keys_are_refused_naming_the_variable_never_the_secret(
    keys: str,
) -> None:
    env = {"REDIS_URL": "redis://cache:6379/0", "DATALAYER_CACHE_KEYS": keys}
    with pytest.raises(InvalidInput) as info:
        Settings.from_env(env)
    assert info.value.field == "DATALAYER_CACHE_KEYS"
    with pytest.raises(ValueError, match="cache_keys") as direct:
        Settings(redis_url="redis://cache:6379/0", cache_keys=keys)
    for text in (str(info.value), repr(info.value), str(direct.value)):
        assert CACHE_SECRET[:60] not in text


def test_the_signing_keys_are_masked_in_repr_and_str() -> None:
    settings = Settings(redis_url="redis://cache:6379/0", cache_keys=CACHE_KEYS)
    for text in (repr(settings), str(settings), repr(Database(settings))):
        assert CACHE_SECRET not in text
    assert "cache_keys=SecretStr('**********')" in repr(settings)


def test_redact_leaves_a_url_without_password_unchanged() -> None:
    assert redact("postgresql://app@db/prod") == "postgresql://app@db/prod"


def test_the_admin_url_and_role_names_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app@db/prod",
            "DATALAYER_ADMIN_URL": "postgresql://owner:pw@db/prod",
            "DATALAYER_OWNER_ROLE": "prod_owner",
            "DATALAYER_APP_ROLE": "prod_app",
        }
    )
    assert settings.admin_url == "postgresql://owner:pw@db/prod"
    assert (settings.owner_role, settings.app_role) == ("prod_owner", "prod_app")
    assert "admin_url='postgresql://owner:***@db/prod'" in repr(settings)


def test_without_an_admin_url_admin_commands_use_the_database_url() -> None:
    from datalayer._ops.roles import admin_url

    assert Settings.from_env({}).admin_url is None
    assert admin_url(Settings(database_url="postgresql://me@db/x")) == "postgresql://me@db/x"
    both = Settings(database_url="postgresql://app@db/x", admin_url="postgresql://dba@db/x")
    assert admin_url(both) == "postgresql://dba@db/x"


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"DATALAYER_APP_ROLE": "datalayer_owner"}, "DATALAYER_APP_ROLE"),
        ({"DATALAYER_APP_ROLE": "App; DROP ROLE x"}, "DATALAYER_APP_ROLE"),
        ({"DATALAYER_OWNER_ROLE": "1owner"}, "DATALAYER_OWNER_ROLE"),
        ({"DATALAYER_ADMIN_URL": ""}, None),
    ],
)
def test_a_role_name_that_is_not_a_plain_identifier_or_is_both_roles_is_refused(
    env: dict[str, str], field: str | None
) -> None:
    if field is None:  # an empty variable counts as unset
        assert Settings.from_env(env).admin_url is None
        return
    with pytest.raises(InvalidInput) as info:
        Settings.from_env(env)
    assert info.value.field == field


def test_with_user_keeps_server_and_database_and_drops_the_other_roles_password() -> None:
    from psycopg.conninfo import conninfo_to_dict

    from datalayer._conninfo import with_user

    params = conninfo_to_dict(
        with_user("postgresql://postgres:pw@db:6432/prod?sslmode=require", "app")
    )
    assert params == {
        "user": "app",
        "host": "db",
        "port": "6432",
        "dbname": "prod",
        "sslmode": "require",
    }


@pytest.mark.parametrize(
    ("argv", "env", "database", "admin"),
    [
        ([], {"DATABASE_URL": "app", "DATALAYER_ADMIN_URL": "dba"}, "app", "dba"),
        (["--database-url", "x"], {"DATALAYER_ADMIN_URL": "dba"}, "x", "x"),
        (["--database-url", "x", "--admin-url", "y"], {}, "x", "y"),
        (["--admin-url", "y"], {"DATABASE_URL": "app"}, "app", "y"),
    ],
)
def test_an_explicit_cli_url_wins_over_the_environment_for_admin_commands_too(
    argv: list[str],
    env: dict[str, str],
    database: str,
    admin: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datalayer._cli import _settings, build_parser
    from datalayer._ops.roles import admin_url

    for var in ("DATABASE_URL", "DATALAYER_ADMIN_URL"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, f"dbname={value}")
    argv = [a if a.startswith("--") else f"dbname={a}" for a in argv]
    settings = _settings(build_parser().parse_args([*argv, "status"]))
    assert settings.database_url == f"dbname={database}"
    assert admin_url(settings) == f"dbname={admin}"
