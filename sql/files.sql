-- Files: uploaded file metadata and the processing work queue.
--
--   pending -> uploaded -> processing -> ready
--                 ^            |
--                 +-- retry ---+-> failed (after max_attempts)
--   any state but deleted -> deleted -> (restore) the state it can be shown to have had
--
-- Every status change is a guarded UPDATE ... WHERE status IN (...) RETURNING: no
-- row back means nothing changed, and the repository says why. Lease times use
-- statement_timestamp(), not now(): a lease is wall-clock time between workers, and
-- now() stands still for the whole of a long transaction.

-- name: create_file :one
-- Register an upload: a pending file of an account (storage_key is unique per account,
-- deleted files included).
INSERT INTO files (account_id, uploaded_by, storage_key, file_name, content_type, max_attempts)
VALUES (:account_id, :uploaded_by, :storage_key, :file_name, :content_type, :max_attempts)
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;

-- name: get_file :one
-- One file of an account by id, in any status (deleted included).
SELECT account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
       checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
       last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at
FROM files
WHERE account_id = :account_id AND id = :id;

-- name: list_files :many
-- A page of an account's files that are not deleted, in id order after the keyset
-- cursor :after_id; optionally only one content type and creation times in
-- [:created_since, :created_before). Walks files_pkey (account_id, id).
SELECT account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
       checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
       last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at
FROM files
WHERE account_id = :account_id
  AND id > :after_id
  AND status <> 'deleted'
  AND (CAST(:content_type AS text) IS NULL OR content_type = :content_type)
  AND created_at >= coalesce(CAST(:created_since AS timestamptz), '-infinity')
  AND created_at < coalesce(CAST(:created_before AS timestamptz), 'infinity')
ORDER BY id
LIMIT :limit;

-- name: list_files_by_status :many
-- Like list_files, for the files in one status (deleted ones too: the trash).
-- Walks files_account_status_idx (account_id, status, id).
SELECT account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
       checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
       last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at
FROM files
WHERE account_id = :account_id
  AND status = :status
  AND id > :after_id
  AND (CAST(:content_type AS text) IS NULL OR content_type = :content_type)
  AND created_at >= coalesce(CAST(:created_since AS timestamptz), '-infinity')
  AND created_at < coalesce(CAST(:created_before AS timestamptz), 'infinity')
ORDER BY id
LIMIT :limit;

-- name: count_files :scalar
-- How many files an account has in status :status, or not deleted when :status is null.
-- One branch per case, and only one returns rows: a prepared statement's generic plan
-- cannot make `status = :status OR :status IS NULL` an index condition, so it read all
-- of the account's files to count one status (35 ms instead of 2 for 300k files).
SELECT count(*)
FROM (
    SELECT 1
    FROM files
    WHERE account_id = :account_id AND status = CAST(:status AS text)
    UNION ALL
    SELECT 1
    FROM files
    WHERE account_id = :account_id AND CAST(:status AS text) IS NULL AND status <> 'deleted'
) AS counted;

-- name: sum_storage_used :scalar
-- Bytes stored for an account: the sizes of its files that are not deleted
-- (numeric, so that the sum of many huge bigints cannot overflow).
SELECT coalesce(sum(size_bytes), 0)
FROM files
WHERE account_id = :account_id AND status <> 'deleted';

-- name: mark_file_uploaded :one
-- pending -> uploaded, with the stored size and checksum; no row when the file is
-- missing or not pending.
UPDATE files
SET status = 'uploaded',
    size_bytes = :size_bytes,
    checksum_sha256 = :checksum_sha256,
    uploaded_at = now(),
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status IN ('pending')
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;

-- name: list_claimable_files :many
-- The work queue, across accounts (the documented exception to tenant scoping): the
-- next :limit claimable files after the keyset cursor (:after_uploaded_at,
-- :after_account_id, :after_id) in (uploaded_at, account_id, id) order, oldest upload
-- first: uploaded files, and processing files whose lease has expired. A read without
-- locks (a multi-shard read on Citus): the claim locks each account's share with
-- claim_files, one account per statement, so that it routes to the account's shard.
-- Each kind is read in its own CTE, so files_claim_idx (keyed by this order) yields
-- the oldest uploads after the cursor and the read takes :limit of them, not the whole
-- queue (one OR of the two made a BitmapOr and a sort of every claimable file);
-- files_lease_idx finds the expired leases.
WITH uploaded AS (
    SELECT account_id, id, uploaded_at
    FROM files
    WHERE status = 'uploaded'
      AND (uploaded_at, account_id, id) > (:after_uploaded_at, :after_account_id, :after_id)
    ORDER BY uploaded_at, account_id, id
    LIMIT :limit
), expired AS (
    SELECT account_id, id, uploaded_at
    FROM files
    WHERE status = 'processing' AND lease_expires_at < statement_timestamp()
      AND (uploaded_at, account_id, id) > (:after_uploaded_at, :after_account_id, :after_id)
    ORDER BY uploaded_at, account_id, id
    LIMIT :limit
)
SELECT account_id, id, uploaded_at
FROM (SELECT * FROM uploaded UNION ALL SELECT * FROM expired) AS claimable
ORDER BY uploaded_at, account_id, id
LIMIT :limit;

-- name: claim_files :many
-- Claim up to :limit of the account's claimable files (uploaded, or processing with
-- an expired lease), oldest upload first, skipping rows other workers hold: pinned to
-- one account, so that it routes to one shard on Citus (list_claimable_files says
-- which accounts have work). files_account_claim_idx yields the account's oldest
-- uploads in order. Each claimed file becomes processing with a lease of :lease and
-- one more attempt; attempts is the claim's fencing token. A file whose lease expired
-- on its last attempt cannot be claimed again: it is failed for good and returned with
-- status failed (the repository leaves it out).
WITH uploaded AS (
    SELECT id, uploaded_at
    FROM files
    WHERE account_id = :account_id AND status = 'uploaded'
    ORDER BY uploaded_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id, uploaded_at
    FROM files
    WHERE account_id = :account_id
      AND status = 'processing' AND lease_expires_at < statement_timestamp()
    ORDER BY uploaded_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), picked AS (
    -- The lease's end is computed here, not in the CASE below: Citus refuses a
    -- function that is not immutable inside a CASE of a distributed write.
    SELECT id,
           (statement_timestamp() AT TIME ZONE 'UTC' + CAST(:lease AS interval)) AT TIME ZONE 'UTC'
               AS lease_end
    FROM (SELECT * FROM uploaded UNION ALL SELECT * FROM expired) AS claimable
    ORDER BY uploaded_at, id
    LIMIT :limit
)
UPDATE files f
SET status = CASE WHEN f.attempts < f.max_attempts THEN 'processing' ELSE 'failed' END,
    lease_expires_at = CASE WHEN f.attempts < f.max_attempts THEN p.lease_end END,
    last_error = CASE
        WHEN f.status = 'processing'
            THEN 'lease of attempt ' || f.attempts || ' of ' || f.max_attempts || ' expired'
        ELSE f.last_error
    END,
    attempts = CASE WHEN f.attempts < f.max_attempts THEN f.attempts + 1 ELSE f.attempts END,
    updated_at = now()
FROM picked p
WHERE f.account_id = :account_id AND f.id = p.id
RETURNING f.account_id, f.id, f.uploaded_by, f.storage_key, f.file_name, f.content_type,
          f.size_bytes, f.checksum_sha256, f.status, f.attempts, f.max_attempts,
          f.lease_expires_at, f.processing_ms, f.last_error, f.created_at, f.updated_at,
          f.uploaded_at, f.processed_at, f.deleted_at;

-- name: renew_file_lease :one
-- Extend the lease of the claim with attempt number :attempt to :lease from now;
-- no row when the file is not processing under that attempt.
UPDATE files
SET lease_expires_at
        = (statement_timestamp() AT TIME ZONE 'UTC' + CAST(:lease AS interval)) AT TIME ZONE 'UTC',
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status IN ('processing')
  AND attempts = :attempt
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;

-- name: complete_file :one
-- processing -> ready for the claim with attempt number :attempt (the fencing token);
-- no row when the file is not processing under that attempt.
UPDATE files
SET status = 'ready',
    processing_ms = :processing_ms,
    processed_at = now(),
    lease_expires_at = NULL,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status IN ('processing')
  AND attempts = :attempt
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;

-- name: fail_file :one
-- processing -> uploaded (to be retried) while attempts < max_attempts, else -> failed,
-- for the claim with attempt number :attempt; records :last_error and drops the lease.
-- No row when the file is not processing under that attempt.
UPDATE files
SET status = CASE WHEN attempts < max_attempts THEN 'uploaded' ELSE 'failed' END,
    last_error = :last_error,
    lease_expires_at = NULL,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status IN ('processing')
  AND attempts = :attempt
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;

-- name: delete_file :one
-- Soft delete from any live status (a processing file loses its lease, so its worker
-- can no longer complete it); no row when the file is missing or already deleted.
UPDATE files
SET status = 'deleted',
    deleted_at = now(),
    lease_expires_at = NULL,
    updated_at = now()
WHERE account_id = :account_id AND id = :id
  AND status IN ('pending', 'uploaded', 'processing', 'ready', 'failed')
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;

-- name: restore_file :one
-- deleted -> the status the kept columns prove: pending if never uploaded, ready if
-- processed, failed if its attempts are spent, else uploaded (queued again; a file
-- deleted while processing lost its lease). No row when the file is not deleted.
UPDATE files
SET status = CASE
        WHEN uploaded_at IS NULL THEN 'pending'
        WHEN processing_ms IS NOT NULL THEN 'ready'
        WHEN attempts >= max_attempts THEN 'failed'
        ELSE 'uploaded'
    END,
    deleted_at = NULL,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status IN ('deleted')
RETURNING account_id, id, uploaded_by, storage_key, file_name, content_type, size_bytes,
          checksum_sha256, status, attempts, max_attempts, lease_expires_at, processing_ms,
          last_error, created_at, updated_at, uploaded_at, processed_at, deleted_at;
