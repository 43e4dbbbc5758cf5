-- depends: 0008_billing
-- transactional: false
-- The monthly revenue report reads ledger transactions of all accounts by
-- time. Added to a table that may already be live, so CONCURRENTLY (no write
-- lock), which PostgreSQL refuses inside a transaction: hence
-- "transactional: false" above, and the squawk rule below does not apply.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction

SET lock_timeout = '10s';
SET statement_timeout = '30min';

-- used by: get_monthly_revenue
CREATE INDEX CONCURRENTLY IF NOT EXISTS ledger_transactions_occurred_idx
    ON ledger_transactions (occurred_at);

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
