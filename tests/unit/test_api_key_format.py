"""The API key format and scope checks: pure logic, no database."""

from __future__ import annotations

import hashlib
import re
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datalayer import InvalidInput
from datalayer._apikey import (
    ALPHABET,
    display_prefix,
    generate_secret,
    hash_secret,
    parse_secret,
)
from datalayer.models.api_keys import AuthContext
from datalayer.repositories.api_keys import ApiKeyRepository

KEY = re.compile(r"dl_(live|test)_[0-9A-Za-z]{32}[0-9A-Za-z]{6}")
environments = st.sampled_from(["live", "test"])


def _decode62(text: str) -> int:
    value = 0
    for char in text:
        value = value * 62 + ALPHABET.index(char)
    return value


@pytest.mark.parametrize("environment", ["live", "test"])
def test_a_generated_secret_has_the_documented_shape_and_a_valid_checksum(
    environment: str,
) -> None:
    secret = generate_secret(environment)  # type: ignore[arg-type]
    assert KEY.fullmatch(secret)
    assert secret.startswith(f"dl_{environment}_")
    body, check = secret[:-6], secret[-6:]
    assert _decode62(check) == zlib.crc32(body.encode())
    assert parse_secret(secret) == environment


def test_secrets_are_random_not_repeated() -> None:
    made = {generate_secret("live") for _ in range(2000)}
    assert len(made) == 2000
    # Every base62 character turns up in the random parts: the alphabet is used whole.
    assert set("".join(s[8:40] for s in made)) == set(ALPHABET)


def test_the_display_prefix_is_the_environment_and_four_random_characters() -> None:
    secret = generate_secret("test")
    assert display_prefix(secret) == secret[:12]
    assert display_prefix(secret).startswith("dl_test_")
    assert len(display_prefix(secret)) == 12


def test_the_hash_is_the_sha256_of_the_whole_secret() -> None:
    secret = generate_secret("live")
    assert hash_secret(secret) == hashlib.sha256(secret.encode()).digest()
    assert len(hash_secret(secret)) == 32


@given(environments, st.data())
def test_any_single_character_changed_is_refused(environment: str, data: st.DataObject) -> None:
    secret = generate_secret(environment)  # type: ignore[arg-type]
    position = data.draw(st.integers(0, len(secret) - 1))
    # Not a .filter() on the secret's character: the secret is random on every run, so a
    # replayed example would draw a different number of times (FlakyStrategyDefinition).
    others = [c for c in ALPHABET + "_-" if c != secret[position]]
    replacement = data.draw(st.sampled_from(others))
    tampered = secret[:position] + replacement + secret[position + 1 :]
    assert parse_secret(tampered) is None


@given(environments, st.data())
def test_swapping_two_neighbouring_characters_is_refused(
    environment: str, data: st.DataObject
) -> None:
    secret = generate_secret(environment)  # type: ignore[arg-type]
    i = data.draw(st.integers(8, len(secret) - 2))
    swapped = secret[:i] + secret[i + 1] + secret[i] + secret[i + 2 :]
    assert parse_secret(swapped) == (environment if swapped == secret else None)


@given(environments, st.integers(0, 45))
def test_a_truncated_secret_is_refused(environment: str, keep: int) -> None:
    assert parse_secret(generate_secret(environment)[:keep]) is None  # type: ignore[arg-type]


def test_the_checksum_covers_the_environment() -> None:
    secret = generate_secret("test")
    assert parse_secret(secret.replace("dl_test_", "dl_live_", 1)) is None


@pytest.mark.parametrize(
    "text",
    ["", " ", "dl_live_", "x" * 46, "x" * 100_000, "dl_prod_" + "A" * 38, "\x00" * 46, "é" * 46],
)
def test_strings_that_are_not_keys_are_refused(text: str) -> None:
    assert parse_secret(text) is None


@given(st.text(max_size=60))
def test_random_text_is_never_taken_for_a_key(text: str) -> None:
    assert parse_secret(text) is None


def test_extra_whitespace_around_a_valid_secret_is_refused() -> None:
    secret = generate_secret("live")
    for variant in (f" {secret}", f"{secret}\n", secret.upper(), secret + "0"):
        assert parse_secret(variant) is None


def _context(*scopes: str) -> AuthContext:
    return AuthContext(key_id=1, account_id=1, environment="live", scopes=scopes, expires_at=None)


def test_has_scope_grants_exactly_the_listed_scopes() -> None:
    context = _context("files:read", "usage:write")
    assert ApiKeyRepository.has_scope(context=context, scope="files:read")
    assert not ApiKeyRepository.has_scope(context=context, scope="files:write")
    assert not ApiKeyRepository.has_scope(context=context, scope="files")
    assert not ApiKeyRepository.has_scope(context=_context(), scope="files:read")


@pytest.mark.parametrize("scope", ["", "*", "files:*", "Files:read", "files read", "a\x00"])
def test_has_scope_refuses_a_malformed_scope(scope: str) -> None:
    with pytest.raises(InvalidInput) as info:
        ApiKeyRepository.has_scope(context=_context("files:read"), scope=scope)
    assert info.value.field == "scope"


# -- known answers: fixed secrets whose checksums were worked out apart from the code -------

KNOWN = [
    # body (dl_<env>_<32 random>), CRC32 of the body, that CRC32 as 6 base62 digits
    ("dl_live_00000000000000000000000000000000", 3023344335, "3IbdyJ"),
    ("dl_test_zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", 1378205136, "1VGo76"),
    # CRC32 below 62**5 and 62**4: the checksum is padded with the alphabet's zero digit.
    ("dl_test_AAAAAAAAAAAAAAAAAAAAAAAA00000003", 689683255, "0kfq7T"),
    ("dl_live_00000000000000000000000000000137", 12533400, "00qaVc"),
]


@pytest.mark.parametrize(("body", "crc", "checksum"), KNOWN)
def test_known_secrets_carry_their_known_checksums(body: str, crc: int, checksum: str) -> None:
    assert zlib.crc32(body.encode()) == crc
    assert _decode62(checksum) == crc
    environment = body[3:7]
    assert parse_secret(body + checksum) == environment
    assert parse_secret(body + checksum[::-1]) is None


def test_a_checksum_below_62_to_the_4th_is_padded_with_zeros_not_another_digit() -> None:
    body, _, checksum = KNOWN[3]
    assert checksum.startswith("00")
    assert parse_secret(body + "00qaVc") == "live"
    assert parse_secret(body + "11qaVc") is None
    assert parse_secret(body + "qaVc00") is None


def test_a_secret_from_a_fixed_random_source_is_the_known_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("datalayer._apikey.secrets.choice", lambda alphabet: alphabet[0])
    secret = generate_secret("live")
    assert secret == "dl_live_00000000000000000000000000000000" + "3IbdyJ"
    assert display_prefix(secret) == "dl_live_0000"
    assert hash_secret(secret).hex() == (
        "883f55d6549f42324da245f3c3deea8d6d4a67cd742004c4a997c6cf8f0b862f"
    )


def test_the_alphabet_is_base62_in_digit_upper_lower_order() -> None:
    assert ALPHABET == "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@pytest.mark.parametrize(
    "secret",
    [
        "dl_live_" + "0" * 32 + "3IbdyJ" + "0",  # one too long
        "dl_live_" + "0" * 31 + "3IbdyJ",  # one too short
        "dl_live_" + "0" * 32 + "3Ibdy",
        "dl_" + "0" * 32 + "3IbdyJ",
        "dl_live" + "0" * 33 + "3IbdyJ",
        "dl_live_" + "0" * 31 + "-" + "3IbdyJ",
    ],
)
def test_a_known_secret_off_by_one_in_length_or_shape_is_refused(secret: str) -> None:
    assert parse_secret(secret) is None
