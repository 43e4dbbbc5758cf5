-- depends: 0009_ledger_time_index
-- transactional: false
-- Reports look up an account's not-yet-rolled hours (and dashboards its
-- pending days) in the rollup queues; without these a backlog makes every
-- report read the whole queue. CONCURRENTLY, outside a transaction, because
-- the queues are written by every ingestion.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction

SET lock_timeout = '10s';
SET statement_timeout = '30min';

-- used by: get_period_totals, get_usage_time_series
CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_rollup_queue_account_idx
    ON usage_rollup_queue (account_id, meter_code, hour_start);

-- used by: list_pending_analytics_days
CREATE INDEX CONCURRENTLY IF NOT EXISTS analytics_rollup_queue_account_idx
    ON analytics_rollup_queue (account_id, day);

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
