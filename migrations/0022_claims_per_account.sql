-- depends: 0021_price_book_seals
-- transactional: false
-- Work queues claimed one account at a time (issue 16: on Citus, sharded by account,
-- FOR UPDATE SKIP LOCKED runs only within one shard). The file queue is read across
-- accounts without locks, in (uploaded_at, account_id, id) order after a keyset
-- cursor, then each account's share is claimed by a statement pinned to the account.
--   files_account_claim_idx  the account's oldest uploads in order, for that claim:
--                            files_claim_idx (every account's) and
--                            files_account_status_idx (by id) would read all of the
--                            account's queued files to find its oldest
--   files_claim_idx          now keyed by the read's whole order, (uploaded_at,
--                            account_id, id): the cursor is an index condition and
--                            the read stops after its limit, without a sort
-- CONCURRENTLY (files is written by every upload), outside a transaction; between
-- the drop and the new files_claim_idx the read is served, more slowly, by
-- files_account_claim_idx. The rollback restores the old files_claim_idx.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction

SET lock_timeout = '10s';
SET statement_timeout = '30min';

-- used by: claim_files
CREATE INDEX CONCURRENTLY IF NOT EXISTS files_account_claim_idx
    ON files (account_id, uploaded_at, id) WHERE status = 'uploaded';

DROP INDEX CONCURRENTLY IF EXISTS files_claim_idx;
-- used by: list_claimable_files
CREATE INDEX CONCURRENTLY IF NOT EXISTS files_claim_idx
    ON files (uploaded_at, account_id, id) WHERE status = 'uploaded';

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
