-- transactional: false
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
SET lock_timeout = '10s';
SET statement_timeout = '30min';

DROP INDEX CONCURRENTLY IF EXISTS ledger_transactions_occurred_idx;

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
