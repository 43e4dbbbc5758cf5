-- depends: 0001_accounts_users
-- Uploaded files: metadata and processing status.
--
--   pending -> uploaded -> processing -> ready
--                 ^            |
--                 +-- retry ---+-> failed (after max_attempts)
--   any state -> deleted (soft)
--
-- Workers claim uploaded files (and processing files whose lease expired) with
-- FOR UPDATE SKIP LOCKED: files_claim_idx serves the one query here not scoped to
-- an account (the read of the queue across accounts, without locks), a documented
-- exception like login; each account's share is then claimed on its own
-- (0022_claims_per_account).

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   files_pkey used by get_file, list_files, delete_file, claim_files (the update by key)
--   files_storage_key_key used by create_file (uniqueness of storage_key per account)
CREATE TABLE files (
    account_id        bigint NOT NULL REFERENCES accounts (id),
    id                bigint GENERATED ALWAYS AS IDENTITY,
    uploaded_by       bigint,
    storage_key       text NOT NULL CONSTRAINT files_storage_key_check
                          CHECK (length(storage_key) BETWEEN 1 AND 1024),
    file_name         text NOT NULL CONSTRAINT files_file_name_check
                          CHECK (length(file_name) BETWEEN 1 AND 255),
    content_type      text NOT NULL CONSTRAINT files_content_type_check
                          CHECK (content_type ~ '^[a-z]+/[a-z0-9][a-z0-9.+-]*$'),
    size_bytes        bigint CONSTRAINT files_size_check CHECK (size_bytes >= 0),
    checksum_sha256   text CONSTRAINT files_checksum_check CHECK (checksum_sha256 ~ '^[0-9a-f]{64}$'),
    status            text NOT NULL DEFAULT 'pending' CONSTRAINT files_status_check
                          CHECK (status IN ('pending', 'uploaded', 'processing', 'ready',
                                            'failed', 'deleted')),
    attempts          bigint NOT NULL DEFAULT 0 CONSTRAINT files_attempts_check
                          CHECK (attempts >= 0),
    max_attempts      bigint NOT NULL DEFAULT 5 CONSTRAINT files_max_attempts_check
                          CHECK (max_attempts BETWEEN 1 AND 100),
    lease_expires_at  timestamptz,
    processing_ms     bigint CONSTRAINT files_processing_ms_check CHECK (processing_ms >= 0),
    last_error        text CONSTRAINT files_last_error_check CHECK (length(last_error) <= 4000),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    uploaded_at       timestamptz,
    processed_at      timestamptz,
    deleted_at        timestamptz,
    CONSTRAINT files_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT files_storage_key_key UNIQUE (account_id, storage_key),
    CONSTRAINT files_uploaded_by_fkey FOREIGN KEY (account_id, uploaded_by)
        REFERENCES users (account_id, id),
    CONSTRAINT files_uploaded_check CHECK (
        (status IN ('uploaded', 'processing', 'ready'))
        <= (size_bytes IS NOT NULL AND checksum_sha256 IS NOT NULL AND uploaded_at IS NOT NULL)),
    CONSTRAINT files_lease_check CHECK ((status = 'processing') = (lease_expires_at IS NOT NULL)),
    CONSTRAINT files_ready_check CHECK ((status = 'ready') <= (processing_ms IS NOT NULL)),
    CONSTRAINT files_deleted_check CHECK ((status = 'deleted') = (deleted_at IS NOT NULL)),
    CONSTRAINT files_attempts_max_check CHECK (attempts <= max_attempts)
);

-- The work queue: claimable files, oldest first (keyed anew, and documented, in
-- 0022_claims_per_account).
CREATE INDEX files_claim_idx ON files (uploaded_at) WHERE status = 'uploaded';
-- Processing files whose lease has expired, claimable again.
-- used by: list_claimable_files, claim_files (an account's expired leases)
CREATE INDEX files_lease_idx ON files (lease_expires_at) WHERE status = 'processing';
-- An account's files by status, page by page.
-- used by: list_files_by_status, count_files, sum_storage_used, mark_file_uploaded,
--   renew_file_lease, complete_file, fail_file, restore_file
CREATE INDEX files_account_status_idx ON files (account_id, status, id);
-- No named query reads files by uploader: this serves the foreign key.
-- used by: FK files_uploaded_by_fkey
CREATE INDEX files_uploaded_by_idx ON files (account_id, uploaded_by) WHERE uploaded_by IS NOT NULL;
