"""The API-key secret format, free of I/O: generate, parse, display prefix, hash.

A key reads ``dl_<env>_<random><checksum>``, e.g. ``dl_live_`` + 32 base62
characters from ``secrets`` (about 190 bits) + 6 base62 characters of CRC32
over everything before them. As with GitHub tokens, the fixed prefix makes a
leaked key easy for secret scanners to recognise, and the checksum lets a
typo, a truncation or a tampered character be refused without a database
round trip. The checksum is no secret and proves nothing about validity:
only the database does that. Only SHA-256(secret) is ever stored.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import zlib

from .models.api_keys import ApiKeyEnvironment

__all__ = [
    "ALPHABET",
    "SECRET_LENGTH",
    "display_prefix",
    "generate_secret",
    "hash_secret",
    "parse_secret",
]

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase  # base62
PREFIX = "dl"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6  # 62**6 > 2**32: any CRC32 fits
DISPLAY_RANDOM_CHARS = 4
SECRET_LENGTH = len(f"{PREFIX}_live_") + RANDOM_LENGTH + CHECKSUM_LENGTH  # "test" is as long
_SECRET = re.compile(
    rf"{PREFIX}_(?P<env>live|test)_[0-9A-Za-z]{{{RANDOM_LENGTH}}}[0-9A-Za-z]{{{CHECKSUM_LENGTH}}}"
)


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, ALPHABET[0])


def _checksum(body: str) -> str:
    """CRC32 of ``body`` (``dl_<env>_<random>``) as 6 base62 characters."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate_secret(environment: ApiKeyEnvironment) -> str:
    """A new secret ``dl_<environment>_<32 random base62><6 checksum>``."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    body = f"{PREFIX}_{environment}_{random_part}"
    return body + _checksum(body)


def parse_secret(secret: str) -> ApiKeyEnvironment | None:
    """The environment of a well-formed secret whose checksum holds, else ``None``.

    Pure: no database. ``None`` means the string cannot be one of our keys
    (wrong length, prefix or alphabet, a typo, a truncation); a well-formed
    secret may still be unknown, revoked or expired.
    """
    if len(secret) != SECRET_LENGTH:
        return None
    match = _SECRET.fullmatch(secret)
    if match is None:
        return None
    body, check = secret[:-CHECKSUM_LENGTH], secret[-CHECKSUM_LENGTH:]
    if _checksum(body) != check:  # a public checksum: nothing to hide by timing
        return None
    environment: ApiKeyEnvironment = "live" if match["env"] == "live" else "test"
    return environment


def display_prefix(secret: str) -> str:
    """What people see to recognise a key, e.g. ``dl_live_AbCd``: never enough to use it."""
    return secret[: secret.rindex("_") + 1 + DISPLAY_RANDOM_CHARS]


def hash_secret(secret: str) -> bytes:
    """SHA-256 of the secret: the only thing about it that is stored (32 bytes)."""
    return hashlib.sha256(secret.encode("utf-8")).digest()
