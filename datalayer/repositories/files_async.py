"""Files repository (``sql/files.sql``): uploads, the processing work queue, soft deletion."""

from __future__ import annotations

import builtins
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .._fanout_async import EARLIEST, claim_per_account
from .._paging import Page, PageRequest
from .._repository_async import AsyncRepository, many, one, scalar
from .._validation import Id, Instant, Limit, validated
from ..errors import InvalidInput, InvalidTransition, NotFound
from ..models.files import File, FileStatus

log = logging.getLogger("datalayer")

_BIGINT_MAX = 2**63 - 1
_LIVE: tuple[str, ...] = ("pending", "uploaded", "processing", "ready", "failed")


def _storable(value: str) -> str:
    """PostgreSQL text cannot hold NUL (pydantic already refuses lone surrogates)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL bytes")
    return value


StorageKey = Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_storable)]
FileName = Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_storable)]
# The table's CHECK (files_content_type_check), plus a length bound (RFC 6838: 127 + 1 + 127).
ContentType = Annotated[
    str, Field(min_length=3, max_length=255, pattern=r"^[a-z]+/[a-z0-9][a-z0-9.+-]*$")
]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Bytes = Annotated[int, Field(ge=0, le=_BIGINT_MAX)]
Millis = Annotated[int, Field(ge=0, le=_BIGINT_MAX)]
Attempt = Annotated[int, Field(ge=1, le=_BIGINT_MAX)]
MaxAttempts = Annotated[int, Field(ge=1, le=100)]
Lease = Annotated[timedelta, Field(gt=timedelta(0), le=timedelta(days=1))]
ErrorText = Annotated[str, Field(min_length=1), AfterValidator(_storable)]
Cursor = Annotated[str, Field(max_length=200)]

_LAST_ERROR_MAX = 4000  # files_last_error_check


class _Claimable(BaseModel):
    """A claimable file as the queue's read without locks sees it (its place in the queue)."""

    model_config = ConfigDict(frozen=True)

    account_id: int
    id: int
    uploaded_at: datetime


class AsyncFileRepository(AsyncRepository):
    """Uploaded files: metadata and processing status.

    Every method is scoped by ``account_id`` except ``claim``, the work queue
    that serves all accounts (the documented exception, ``files_claim_idx``:
    read across accounts without locks, claimed one account at a time).
    A status change raises ``NotFound`` when the account has no such file and
    ``InvalidTransition`` (naming the expected and the actual status) when the
    file's status does not allow it; either way nothing changes.
    """

    aggregate = "files"

    _create = one("create_file", File)
    _get = one("get_file", File)
    _list = many("list_files", File)
    _list_by_status = many("list_files_by_status", File)
    _count = scalar("count_files", int)
    _storage = scalar("sum_storage_used", Decimal)
    _mark_uploaded = one("mark_file_uploaded", File)
    _claimable = many("list_claimable_files", _Claimable)
    _claim = many("claim_files", File)
    _renew = one("renew_file_lease", File)
    _complete = one("complete_file", File)
    _fail = one("fail_file", File)
    _delete = one("delete_file", File)
    _restore = one("restore_file", File)

    @validated
    async def register(
        self,
        *,
        account_id: Id,
        storage_key: StorageKey,
        file_name: FileName,
        content_type: ContentType,
        uploaded_by: Id | None = None,
        max_attempts: MaxAttempts = 5,
    ) -> File:
        """Register an upload about to happen: a new ``pending`` file.

        ``storage_key`` (1 to 1024 characters) is unique within the account for
        good, deleted files included, so that a deleted file can be restored.
        Raises ``AlreadyExists`` (constraint ``files_storage_key_key``) for a
        key the account already used, ``ReferenceViolation`` when the account,
        or ``uploaded_by`` as a user of that account, does not exist, and
        ``InvalidInput`` for a bad argument.
        """
        file = await self._create(
            account_id=account_id,
            uploaded_by=uploaded_by,
            storage_key=storage_key,
            file_name=file_name,
            content_type=content_type,
            max_attempts=max_attempts,
        )
        assert file is not None  # INSERT … RETURNING yields one row
        return file

    @validated
    async def get(self, *, account_id: Id, file_id: Id) -> File | None:
        """The account's file with this id, in any status (deleted included), or ``None``.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._get(account_id=account_id, id=file_id)

    @validated
    async def require(self, *, account_id: Id, file_id: Id) -> File:
        """Like ``get``, but raises ``NotFound`` instead of returning ``None``."""
        file = await self.get(account_id=account_id, file_id=file_id)
        if file is None:
            raise NotFound(f"file {file_id} not found in account {account_id}")
        return file

    @validated
    async def list(
        self,
        *,
        account_id: Id,
        status: FileStatus | None = None,
        content_type: ContentType | None = None,
        created_since: Instant | None = None,
        created_before: Instant | None = None,
        cursor: Cursor | None = None,
        limit: Limit = 50,
    ) -> Page[File]:
        """A page of the account's files in id order, and the cursor of the next page.

        Without ``status``: every file that is not deleted; with it, the files
        in that status (``"deleted"`` lists the trash). ``content_type`` keeps
        one type; ``created_since``/``created_before`` keep creation times in
        the half-open period ``[since, before)``. Pass ``next_cursor`` back as
        ``cursor`` with the same filters for the next page. Raises
        ``InvalidInput`` for a bad argument, a period that ends before it
        starts, or a cursor this listing did not return.
        """
        if created_since and created_before and created_before < created_since:
            raise InvalidInput("must not be before created_since", field="created_before")
        request = PageRequest.of(cursor, limit)
        filters = {
            "account_id": account_id,
            "content_type": content_type,
            "created_since": created_since,
            "created_before": created_before,
        }
        if status is None:
            return request.page(await self._list(**request.params, **filters))
        return request.page(await self._list_by_status(**request.params, **filters, status=status))

    @validated
    async def count(self, *, account_id: Id, status: FileStatus | None = None) -> int:
        """How many files the account has in ``status``, or not deleted when ``status`` is None.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return await self._count(account_id=account_id, status=status) or 0

    @validated
    async def storage_used(self, *, account_id: Id) -> int:
        """Bytes the account stores: the sum of ``size_bytes`` of its files not deleted.

        Pending files have no size yet and count as 0.

        Raises ``InvalidInput`` for a bad argument, before any SQL.
        """
        return int(await self._storage(account_id=account_id) or 0)

    @validated
    async def mark_uploaded(
        self, *, account_id: Id, file_id: Id, size_bytes: Bytes, checksum_sha256: Sha256Hex
    ) -> File:
        """``pending`` → ``uploaded``: the object is stored; the file joins the work queue.

        ``checksum_sha256`` is 64 lower-case hex digits. Raises ``NotFound``
        when the account has no such file, ``InvalidTransition`` when it is
        not pending, and ``InvalidInput`` for a bad argument.
        """
        file = await self._mark_uploaded(
            account_id=account_id,
            id=file_id,
            size_bytes=size_bytes,
            checksum_sha256=checksum_sha256,
        )
        if file is None:
            raise await self._refused(account_id, file_id, ("pending",), "mark uploaded")
        return file

    @validated
    async def claim(self, *, limit: Limit, lease: Lease) -> builtins.list[File]:
        """Claim up to ``limit`` files to process, from every account, oldest upload first.

        Claims ``uploaded`` files and ``processing`` files whose lease has
        expired (a crashed worker's), skipping rows other workers hold, and
        makes each ``processing`` with a lease of ``lease`` (at most a day)
        and one more attempt, in one transaction. Two workers never receive
        the same claim. The returned ``attempts`` is the claim's fencing
        token: pass it as ``attempt`` to ``complete``, ``fail`` and
        ``renew_lease``. A file whose lease expired on its last attempt is
        failed for good instead (with a ``last_error``) and not returned.
        Raises ``InvalidInput`` for a bad argument.

        The queue is read without locks and each account's share is claimed
        by a statement of its own (``datalayer._fanout``), so that on Citus
        every lock is taken on one shard.
        """
        async with self._atomic() as tx:
            # async-only: begin
            async def claim(shares: builtins.list[tuple[int, int]]) -> builtins.list[File]:
                calls = [{"account_id": a, "limit": n, "lease": lease} for a, n in shares]
                return [file for files in await tx._claim.each(calls) for file in files]

            # async-only: end
            rows = await claim_per_account(
                lambda after, n: tx._claimable(
                    after_uploaded_at=after.uploaded_at if after else EARLIEST,
                    after_account_id=after.account_id if after else 0,
                    after_id=after.id if after else 0,
                    limit=n,
                ),
                claim,  # async-only
                # sync: lambda shares: [
                # sync:     file
                # sync:     for files in tx._claim.each(
                # sync:         [{"account_id": a, "limit": n, "lease": lease} for a, n in shares]
                # sync:     )
                # sync:     for file in files
                # sync: ],
                limit,
            )
        claimed = [f for f in rows if f.status == "processing"]
        for f in rows:
            if f.status != "processing":
                log.warning(
                    "file %s of account %s failed: lease expired on its last attempt",
                    f.id,
                    f.account_id,
                )
        return sorted(claimed, key=lambda f: (f.uploaded_at, f.account_id, f.id))

    @validated
    async def renew_lease(
        self, *, account_id: Id, file_id: Id, attempt: Attempt, lease: Lease
    ) -> File:
        """Extend the claim's lease to ``lease`` from now, for long processing.

        Raises ``NotFound`` when the account has no such file,
        ``InvalidTransition`` when the file is not ``processing`` under
        ``attempt`` (the lease expired and another worker claimed it, or it
        was deleted) and ``InvalidInput`` for a bad argument.
        """
        file = await self._renew(account_id=account_id, id=file_id, attempt=attempt, lease=lease)
        if file is None:
            raise await self._refused(account_id, file_id, ("processing",), "renew", attempt)
        return file

    @validated
    async def complete(
        self, *, account_id: Id, file_id: Id, attempt: Attempt, processing_ms: Millis
    ) -> File:
        """``processing`` → ``ready`` for the claim ``attempt``; the lease is dropped.

        A claim whose lease expired may still complete as long as no other
        worker has claimed the file since. Raises ``NotFound`` when the
        account has no such file, ``InvalidTransition`` when the file is not
        ``processing`` under ``attempt`` (another worker re-claimed it, it was
        completed, failed or deleted meanwhile; nothing changes) and
        ``InvalidInput`` for a bad argument.
        """
        file = await self._complete(
            account_id=account_id, id=file_id, attempt=attempt, processing_ms=processing_ms
        )
        if file is None:
            raise await self._refused(account_id, file_id, ("processing",), "complete", attempt)
        return file

    @validated
    async def fail(
        self, *, account_id: Id, file_id: Id, attempt: Attempt, error: ErrorText
    ) -> File:
        """Record that the claim ``attempt`` failed with ``error``; the lease is dropped.

        The file goes back to ``uploaded`` (to be claimed again) while it has
        attempts left, else to ``failed`` for good. ``error`` is stored as
        ``last_error``, cut to its first 4000 characters. Raises ``NotFound``
        when the account has no such file, ``InvalidTransition`` when the file
        is not ``processing`` under ``attempt``, and ``InvalidInput`` for a bad
        argument (an empty error or one containing NUL).
        """
        file = await self._fail(
            account_id=account_id,
            id=file_id,
            attempt=attempt,
            last_error=error[:_LAST_ERROR_MAX],
        )
        if file is None:
            raise await self._refused(account_id, file_id, ("processing",), "fail", attempt)
        return file

    @validated
    async def delete(self, *, account_id: Id, file_id: Id) -> File:
        """Soft-delete a file in any status but ``deleted``; a processing file loses its lease.

        The row stays (with ``deleted_at``) and keeps its storage key; it no
        longer counts in ``list``, ``count`` or ``storage_used``. Raises
        ``NotFound`` when the account has no such file, ``InvalidTransition``
        when it is already deleted, and ``InvalidInput`` for a bad argument.
        """
        file = await self._delete(account_id=account_id, id=file_id)
        if file is None:
            raise await self._refused(account_id, file_id, _LIVE, "delete")
        return file

    @validated
    async def restore(self, *, account_id: Id, file_id: Id) -> File:
        """Undo a soft delete: ``deleted`` → the status the file's columns prove.

        ``pending`` if it was never uploaded, ``ready`` if it was processed,
        ``failed`` if its attempts are spent, else ``uploaded`` — so a file
        deleted while processing is queued again. The stored object must still
        exist; purging it is the application's business. Raises ``NotFound``
        when the account has no such file, ``InvalidTransition`` when it is not
        deleted, and ``InvalidInput`` for a bad argument.
        """
        file = await self._restore(account_id=account_id, id=file_id)
        if file is None:
            raise await self._refused(account_id, file_id, ("deleted",), "restore")
        return file

    async def _refused(
        self,
        account_id: int,
        file_id: int,
        expected: tuple[str, ...],
        action: str,
        attempt: int | None = None,
    ) -> NotFound | InvalidTransition:
        """The error for a guarded UPDATE that changed no row, saying what the file is now."""
        current = await self._get(account_id=account_id, id=file_id)
        if current is None:
            return NotFound(f"file {file_id} not found in account {account_id}")
        actual = current.status
        if attempt is not None and actual in expected and current.attempts != attempt:
            message = (
                f"cannot {action} file {file_id}: attempt {attempt} no longer holds it "
                f"(it is on attempt {current.attempts})"
            )
        else:
            message = (
                f"cannot {action} file {file_id}: it is {actual}, expected {' or '.join(expected)}"
            )
        return InvalidTransition(
            message, entity="file", entity_id=file_id, expected=expected, actual=actual
        )
