-- transactional: false
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
SET lock_timeout = '10s';
SET statement_timeout = '30min';

DROP INDEX CONCURRENTLY IF EXISTS analytics_rollup_queue_account_idx;
DROP INDEX CONCURRENTLY IF EXISTS usage_rollup_queue_account_idx;

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
