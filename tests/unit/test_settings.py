"""Settings come from arguments or the environment; passwords never leak."""

from __future__ import annotations

import traceback
from urllib.parse import quote

import pytest
from conftest import LEAKY_PASSWORDS, password_fragments, urls_with_password
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from datalayer import Database, InvalidInput, Settings
from datalayer._conninfo import redact, secrets_in
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


# Forms a careful user writes: they must be accepted whatever the password holds.
ALWAYS_VALID = {"userinfo-encoded", "multi-host", "query-encoded", "keyword"}


def _leaks(texts: list[str], password: str) -> list[str]:
    return [t for t in texts for f in password_fragments(password) if f in t]


@pytest.mark.parametrize("password", LEAKY_PASSWORDS)
def test_no_password_shows_in_settings_the_safe_url_or_the_database_whatever_it_holds(
    password: str,
) -> None:
    urls = urls_with_password(password, host="db.internal", port=5432, dbname="prod")
    for form, url in urls.items():
        refused: InvalidInput | None = None
        try:
            settings = Settings(database_url=url)
        except InvalidInput as exc:
            refused = exc
        if refused is not None:
            assert refused.field == "database_url"
            assert form not in ALWAYS_VALID, f"{form} refused: {refused}"
            texts = [str(refused), repr(refused), redact(url)]
            with pytest.raises(InvalidInput) as env_info:
                Settings.from_env({"DATABASE_URL": url})
            with pytest.raises(InvalidInput) as db_info:
                Database(database_url=url)
            for info in (env_info, db_info):
                assert info.value.field == "DATABASE_URL"
                texts += [str(info.value), "".join(traceback.format_exception(info.value))]
            assert "db.internal" in str(env_info.value)  # says which URL, without the secret
        else:
            assert conninfo_to_dict(url)  # what Settings accepts, libpq parses
            texts = [repr(settings), str(settings), settings.safe_database_url, redact(url)]
            texts.append(repr(Database(settings)))
            assert "***" in settings.safe_database_url
            assert "db.internal" in settings.safe_database_url
        assert _leaks(texts, password) == [], form


def test_a_password_with_a_bare_percent_is_refused_naming_the_variable_and_the_fix() -> None:
    url = "postgresql://app:Zqp%zzXw9@db.internal:5432/prod"
    with pytest.raises(InvalidInput) as info:
        Settings.from_env({"DATABASE_URL": url})
    assert info.value.field == "DATABASE_URL"
    message = str(info.value)
    assert "postgresql://app:***@db.internal:5432/prod" in message
    assert "% as %25" in message
    assert "Zq" not in message
    assert "Xw9" not in message


@pytest.mark.parametrize(
    ("password", "reason"),
    [("Zq@Xw9", "'@' in a host name"), ("Zq/Xw9", "port that is not a number")],
)
def test_an_unencoded_at_or_slash_in_the_password_is_refused_rather_than_misread(
    password: str, reason: str
) -> None:
    with pytest.raises(InvalidInput, match=reason) as info:
        Settings.from_env({"DATABASE_URL": f"postgresql://app:{password}@db.internal/prod"})
    assert "app:***@db.internal/prod" in str(info.value)
    assert "Zq" not in str(info.value)
    assert "Xw9" not in str(info.value)


def test_database_overrides_are_validated_like_settings() -> None:
    with pytest.raises(InvalidInput) as info:
        Database(Settings(), database_url="postgresql://app:Zq%Xw9@db.internal/prod")
    assert info.value.field == "DATABASE_URL"
    assert "Zq" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://app:Zq?Xw9@h1:5432,[::1]:5433/prod?sslmode=require",
            "postgresql://app:***@h1:5432,[::1]:5433/prod?sslmode=require",
        ),
        (
            "postgresql://app@h/prod?sslmode=require&password=Zq#Xw9&application_name=a",
            "postgresql://app@h/prod?sslmode=require&password=***&application_name=a",
        ),
        ("postgresql://app@h/prod?%70assword=Zq%41Xw9", "postgresql://app@h/prod?%70assword=***"),
        ("postgresql://h/prod?sslpassword=Zq1Xw9", "postgresql://h/prod?sslpassword=***"),
        ("postgresql://app@h/prod?user=ops@corp", "postgresql://app@h/prod?user=ops@corp"),
        ("postgres://app:@h/prod", "postgres://app:@h/prod"),
        ("postgresql://app:1234/Zq@Xw9@h/prod", "postgresql://app:***@h/prod"),
        ("redis://:Zq#Xw9@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "host=h user=app password='Zq \\' Xw9' dbname=prod",
            "user=app password=*** dbname=prod host=h",
        ),
        ("host=h password='Zq Xw9", "<unparseable conninfo>"),
    ],
)
def test_redact_hides_passwords_and_keeps_everything_else(url: str, shown: str) -> None:
    assert redact(url) == shown


PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)


@hypothesis_settings(derandomize=True, max_examples=300)
@given(password=st.text(PRINTABLE, min_size=1), user=st.text(PRINTABLE, min_size=1))
def test_redacting_a_well_formed_url_replaces_its_password_and_nothing_else(
    password: str, user: str
) -> None:
    tail = "@h1:5432,[::1]:5433/prod?sslmode=require&application_name=a%40b"
    url = f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}{tail}"
    assert conninfo_to_dict(url)["password"] == password
    assert redact(url) == f"postgresql://{quote(user, safe='')}:***{tail}"
    query = f"postgresql://h/prod?application_name=x&password={quote(password, safe='')}"
    assert redact(query) == "postgresql://h/prod?application_name=x&password=***"


@hypothesis_settings(derandomize=True, max_examples=300)
@given(
    password=st.text(
        st.characters(codec="ascii", exclude_categories=("Cc",)).filter(lambda c: c not in "@/% "),
        min_size=1,
    )
)
def test_a_password_pasted_unencoded_is_read_by_libpq_and_fully_redacted(password: str) -> None:
    url = f"postgresql://app:{password}@db.internal:5432/prod?sslmode=require"
    assert conninfo_to_dict(url)["password"] == password
    assert Settings(database_url=url).safe_database_url == (
        "postgresql://app:***@db.internal:5432/prod?sslmode=require"
    )


def test_the_cli_scrubs_a_password_as_written_and_as_libpq_decodes_it() -> None:
    url = "postgresql://app:Zq%41Xw9@h/prod?sslpassword=Zq%2FXw8"
    assert set(secrets_in(url)) == {"Zq%41Xw9", "ZqAXw9", "Zq%2FXw8", "Zq/Xw8"}
    # A URL libpq would misread: the password as meant, and the part libpq would take.
    assert set(secrets_in("postgresql://app:Zq@Xw9@h/prod")) == {"Zq@Xw9", "Zq"}
    assert secrets_in("host=h password='Zq Xw9'") == ["Zq Xw9"]


def test_the_reconnect_cap_is_read_from_the_environment_and_must_be_sane() -> None:
    assert Settings().pool_reconnect_max_delay == 1.0
    env = {"DATALAYER_POOL_RECONNECT_MAX_DELAY": "0.5"}
    assert Settings.from_env(env).pool_reconnect_max_delay == 0.5
    with pytest.raises(InvalidInput) as info:
        Settings.from_env({"DATALAYER_POOL_RECONNECT_MAX_DELAY": "0"})
    assert info.value.field == "DATALAYER_POOL_RECONNECT_MAX_DELAY"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"pool_min_size": -1}, "pool_min_size"),
        ({"pool_max_size": "eight"}, "pool_max_size"),
        ({"pool_min_size": 4, "pool_max_size": 2}, "pool_max_size"),
        ({"statement_timeout_ms": 1.5}, "statement_timeout_ms"),
        ({"app_role": "Robert'); DROP"}, "app_role"),
        ({"no_such_setting": 1}, "no_such_setting"),
        ({"database_url": "postgresql://h:99999/db"}, "database_url"),
        ({"database_url": "host=a,b port=5432,0"}, "database_url"),
        ({"admin_url": "host=h port=abc"}, "admin_url"),
        ({"redis_url": "http://h", "cache_keys": "k:" + "ab" * 32}, "redis_url"),
        ({"redis_url": "redis://h:6379/0"}, "cache_keys"),
    ],
)
def test_settings_refuses_bad_arguments_with_invalid_input_naming_the_field(
    arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        Settings(**arguments)  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_redis_url_with_an_unencoded_password_character_is_refused_without_showing_it() -> None:
    keys = "k:" + "ab" * 32
    for password in ("s3cr#et", "s3c/ret", "s3c?ret"):
        url = f"redis://:{password}@cache.internal:6379/0"
        with pytest.raises(InvalidInput) as info:
            Settings.from_env({"REDIS_URL": url, "DATALAYER_CACHE_KEYS": keys})
        assert info.value.field == "REDIS_URL"
        assert "cache.internal" in str(info.value)
        assert "s3" not in str(info.value)
        encoded = url.replace("#", "%23").replace("/ret", "%2Fret").replace("?", "%3F")
        assert Settings(redis_url=encoded, cache_keys=keys).redis_url == encoded
