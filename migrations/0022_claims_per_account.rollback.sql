-- transactional: false
-- Back to the indexes before 0022_claims_per_account: files_claim_idx on uploaded_at alone.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
SET lock_timeout = '10s';
SET statement_timeout = '30min';

DROP INDEX CONCURRENTLY IF EXISTS files_claim_idx;
CREATE INDEX CONCURRENTLY IF NOT EXISTS files_claim_idx ON files (uploaded_at)
    WHERE status = 'uploaded';
DROP INDEX CONCURRENTLY IF EXISTS files_account_claim_idx;

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
