"""API keys repository (``sql/api_keys.sql``): issue, authenticate, revoke, rotate, list.

The secret format lives in ``datalayer._apikey``. Only SHA-256(secret) is
stored. Validity (revoked, expired) is judged by the database clock.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .._apikey import display_prefix, generate_secret, hash_secret, parse_secret
from .._cachecore import account_tag, key_tag
from .._paging import Page, PageRequest
from .._repository_async import AsyncRepository, execrows, execute, many, one, scalar
from .._validation import Id, Instant, Limit, Name, validated
from ..errors import DataLayerError, InvalidInput, InvalidTransition, NotFound
from ..models.api_keys import ApiKey, ApiKeyEnvironment, AuthContext, IssuedKey

__all__ = ["AsyncApiKeyRepository"]

#: A scope such as ``files:read`` or ``usage.events:write``: lowercase segments
#: joined by ``:`` or ``.``; matched exactly (no wildcards).
Scope = Annotated[
    str,
    Field(min_length=1, max_length=100, pattern=r"^[a-z][a-z0-9_]*(?:[:.][a-z][a-z0-9_]*)*$"),
]
Scopes = Annotated[Sequence[Scope], Field(max_length=64)]
Overlap = Annotated[timedelta, Field(ge=timedelta(0), le=timedelta(days=90))]


class _KeyHash(BaseModel):
    secret_hash: bytes


class _Credential(BaseModel):
    """The row authentication reads: the live key with the presented hash."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    secret_hash: bytes
    environment: ApiKeyEnvironment
    scopes: tuple[str, ...]
    expires_at: datetime | None
    touch_due: bool


class _RotationSource(BaseModel):
    """A key locked for rotation and its state by the database clock."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    environment: ApiKeyEnvironment
    state: Literal["active", "revoked", "expired"]


class AsyncApiKeyRepository(AsyncRepository):
    """API keys for enterprise access; secrets are never stored.

    Every method but ``authenticate`` is scoped by ``account_id`` and never
    sees another account's keys.
    """

    aggregate = "api_keys"

    _reserve = execute("reserve_api_key_hash")
    _create = one("create_api_key", ApiKey)
    _get = one("get_api_key", ApiKey)
    _list = many("list_api_keys", ApiKey)
    _hashes = many("list_api_key_hashes", _KeyHash)
    _account = scalar("find_api_key_account", int)
    _find = one("find_api_key_credential", _Credential)
    _touch = execrows("touch_api_key")
    _revoke = one("revoke_api_key", ApiKey)
    _lock = one("lock_api_key_for_rotation", _RotationSource)
    _rotate = one("rotate_api_key", ApiKey)

    @validated
    async def issue(
        self,
        *,
        account_id: Id,
        name: Name,
        environment: ApiKeyEnvironment,
        scopes: Scopes,
        expires_at: Instant | None = None,
        created_by: Id | None = None,
    ) -> IssuedKey:
        """Create a key and return it with its secret, which is never shown again.

        ``scopes`` are stored sorted and without duplicates. Raises
        ``InvalidInput`` for a bad argument, a naive ``expires_at``, one not in
        the future (by the database clock) or not before 9000 (field ``expires_at``),
        ``ReferenceViolation`` when the account does not exist or
        ``created_by`` is not a user of it.
        """
        secret = generate_secret(environment)
        # One transaction (a savepoint in a unit of work): the hash reserved in
        # api_key_hashes goes with the key if anything below fails.
        async with self._atomic() as tx:
            await tx._reserve(secret_hash=hash_secret(secret), account_id=account_id)
            key = await tx._create(
                account_id=account_id,
                name=name,
                display_prefix=display_prefix(secret),
                secret_hash=hash_secret(secret),
                environment=environment,
                scopes=sorted(set(scopes)),
                created_by=created_by,
                expires_at=expires_at,
            )
            if key is None:
                raise InvalidInput("must be in the future", field="expires_at")
            # A negative cache entry for this hash (someone tried it) must not
            # outlive the key's creation.
            await tx._invalidate(account_id, key_tag(hash_secret(secret)))
        return IssuedKey(key=key, secret=SecretStr(secret))

    @validated
    async def authenticate(self, *, secret: str, record_use: bool = True) -> AuthContext | None:
        """Who ``secret`` proves to be; ``None`` for a malformed, unknown, revoked or expired key.

        A malformed secret (bad format or checksum: a typo, a truncation) is
        refused before any SQL. Otherwise one probe of the lookup table's key
        on SHA-256(secret) finds the key's account, if any, and one read in
        that account (one shard on a cluster) finds the live key.

        Constant time with respect to the secret: the database compares
        SHA-256 digests, never the secret, so how long the index search takes
        depends only on the digest of what was presented — and a digest close
        to a stored one reveals nothing about a secret that would produce it,
        so timing cannot be used to guess a key character by character. The
        stored digest is then compared with ``hmac.compare_digest``, whose
        duration does not depend on where two digests differ, so the final
        check adds no timing signal even if the lookup ever matched on
        something weaker than the whole digest. Format and checksum checks
        look only at the presented string, never at stored data.

        ``last_used_at`` is written at most once a minute per key, only when
        the row read says it is older (so most calls are one read), and never
        waits for a lock. Pass ``record_use=False`` on a read replica or in a
        read-only transaction. Raises ``InvalidInput`` only when ``secret`` is
        not a string.
        """
        if parse_secret(secret) is None:
            return None
        digest = hash_secret(secret)
        account_id = await self._account(secret_hash=digest)
        if account_id is None:
            return None
        row = await self._find(account_id=account_id, secret_hash=digest)
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            return None
        if record_use and row.touch_due:
            await self._touch(account_id=row.account_id, id=row.id)
        return AuthContext(
            key_id=row.id,
            account_id=row.account_id,
            environment=row.environment,
            scopes=row.scopes,
            expires_at=row.expires_at,
        )

    @staticmethod
    @validated
    def has_scope(*, context: AuthContext, scope: Scope) -> bool:
        """Whether the authenticated key grants ``scope`` (exact match; no wildcards).

        Pure: no database. Raises ``InvalidInput`` for a malformed scope.
        """
        return scope in context.scopes

    @validated
    async def get(self, *, account_id: Id, key_id: Id) -> ApiKey | None:
        """The account's key with this id, in any state, or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get(account_id=account_id, id=key_id)

    @validated
    async def require(self, *, account_id: Id, key_id: Id) -> ApiKey:
        """Like ``get``, but raises ``NotFound`` instead of returning ``None``."""
        key = await self.get(account_id=account_id, key_id=key_id)
        if key is None:
            raise NotFound(f"api key {key_id} not found in account {account_id}")
        return key

    @validated
    async def revoke(self, *, account_id: Id, key_id: Id) -> ApiKey:
        """Revoke a key at once and return it; it never authenticates again.

        Idempotent: revoking a revoked key succeeds and keeps the first
        ``revoked_at`` (so a retried request is harmless). Expired keys can be
        revoked too. Raises ``NotFound`` when the account has no such key.
        """
        async with self._changing() as tx:
            key = await tx._revoke(account_id=account_id, id=key_id)
            if key is None:
                raise NotFound(f"api key {key_id} not found in account {account_id}")
            await tx._invalidate_keys(account_id, key_id)
        return key

    @validated
    async def rotate(
        self,
        *,
        account_id: Id,
        key_id: Id,
        overlap: Overlap,
        created_by: Id | None = None,
    ) -> IssuedKey:
        """Issue the successor of a live key and let the old one expire after ``overlap``.

        Atomically: the new key has the old one's name, environment and scopes
        and ``rotated_from_id`` = the old key; the old key's ``expires_at``
        becomes now + ``overlap`` (0 to 90 days), or stays put if it expires
        sooner. Until then both keys authenticate; afterwards only the new one.
        A rotated key may be rotated again (say, if the new secret was lost):
        its expiry only ever moves earlier. ``created_by`` (who rotated) defaults
        to the old key's creator.

        Raises ``NotFound`` when the account has no such key,
        ``InvalidTransition`` (``actual`` ``"revoked"`` or ``"expired"``) when
        it is no longer live, ``ReferenceViolation`` when ``created_by`` is not
        a user of the account, ``ConcurrencyConflict`` under repeatable read
        or serializable isolation when another transaction changed the key.
        """
        async with self._atomic() as tx:
            source = await tx._lock(account_id=account_id, id=key_id)
            if source is None:
                raise NotFound(f"api key {key_id} not found in account {account_id}")
            if source.state != "active":
                raise InvalidTransition(
                    f"api key {key_id} is {source.state}; only a live key can be rotated",
                    entity="api_key",
                    entity_id=key_id,
                    expected=("active",),
                    actual=source.state,
                )
            secret = generate_secret(source.environment)
            await tx._reserve(secret_hash=hash_secret(secret), account_id=account_id)
            key = await tx._rotate(
                account_id=account_id,
                id=key_id,
                environment=source.environment,
                overlap=overlap,
                display_prefix=display_prefix(secret),
                secret_hash=hash_secret(secret),
                created_by=created_by,
            )
            if key is None:  # cannot happen while the lock is held; never assume silently
                raise DataLayerError(f"api key {key_id} changed while locked for rotation")
            await tx._invalidate_keys(account_id, key_id)
            await tx._invalidate(account_id, key_tag(hash_secret(secret)))
        return IssuedKey(key=key, secret=SecretStr(secret))

    # Last: inside the class body, the name ``list`` is this method from here on.
    @validated
    async def list(
        self,
        *,
        account_id: Id,
        cursor: str | None = None,
        limit: Limit = 50,
        include_revoked: bool = False,
    ) -> Page[ApiKey]:
        """A page of the account's keys, newest first, with the cursor of the next page.

        Revoked keys are left out unless ``include_revoked``; expired ones are
        listed (their ``expires_at`` says so). No secret or hash is ever
        returned. Raises ``InvalidInput`` for a bad ``limit`` or a ``cursor``
        this listing did not return.
        """
        request = PageRequest.of(cursor, limit, "desc")
        return request.page(
            await self._list(
                **request.params, account_id=account_id, include_revoked=include_revoked
            )
        )

    @validated
    async def record_use(self, *, account_id: Id, key_id: Id) -> bool:
        """Set ``last_used_at`` to now unless it was set in the last minute; True if written.

        For callers that authenticated without this repository (the cache).
        Never waits for a lock held by another writer. Raises ``InvalidInput``
        for a bad argument.
        """
        return await self._touch(account_id=account_id, id=key_id) > 0

    async def _invalidate_keys(self, account_id: int, key_id: int | None = None) -> None:
        """After commit, drop cached auth contexts of the account's keys (or of one key)."""
        if self._session.cache is not None and self._session.cache.enabled:
            rows = await self._hashes(account_id=account_id, key_id=key_id)
            await self._invalidate(account_id, *(key_tag(r.secret_hash) for r in rows))

    async def _invalidate_account(self, account_id: int) -> None:
        """After commit, drop what is cached from an account: its subscription, its keys' auth."""
        if self._session.cache is not None and self._session.cache.enabled:
            rows = await self._hashes(account_id=account_id, key_id=None)
            tags = (key_tag(r.secret_hash) for r in rows)
            await self._invalidate(account_id, account_tag(account_id), *tags)
