-- transactional: false
-- Recreates exactly the indexes 0011_index_review dropped.
-- squawk-ignore-file ban-concurrent-index-creation-in-transaction
SET lock_timeout = '10s';
SET statement_timeout = '30min';

CREATE INDEX CONCURRENTLY IF NOT EXISTS usage_event_keys_received_at_idx
    ON usage_event_keys (received_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS api_keys_account_idx
    ON api_keys (account_id, created_at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS invoices_open_due_idx
    ON invoices (due_at) WHERE status = 'open';
CREATE INDEX CONCURRENTLY IF NOT EXISTS invoices_account_created_idx
    ON invoices (account_id, created_at, id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS ledger_transactions_history_idx
    ON ledger_transactions (account_id, occurred_at, id);

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
