-- depends: 0010_rollup_queue_indexes
-- transactional: false
-- Index review: every index serves a named query (see the "used by" comments
-- in 0001-0010) or a foreign key. These served neither, yet every write to
-- their table paid for them:
--   usage_event_keys_received_at_idx  nothing reads keys by received_at (no
--                                     pruning exists; a pruning query would
--                                     bring it back)
--   api_keys_account_idx              nothing reads keys by created_at;
--                                     api_keys_pkey serves an account's keys
--   invoices_open_due_idx             nothing reads open invoices by due_at
--   invoices_account_created_idx      nothing reads invoices by created_at;
--                                     invoices_pkey serves reads by id
--   ledger_transactions_history_idx   nothing reads an account's ledger by time:
--                                     list_ledger_transactions pages by id (pkey),
--                                     get_monthly_revenue uses
--                                     ledger_transactions_occurred_idx
-- CONCURRENTLY (writers are not blocked), which PostgreSQL refuses inside a
-- transaction: hence "transactional: false". The rollback recreates them.

SET lock_timeout = '10s';
SET statement_timeout = '30min';

DROP INDEX CONCURRENTLY IF EXISTS usage_event_keys_received_at_idx;
DROP INDEX CONCURRENTLY IF EXISTS api_keys_account_idx;
DROP INDEX CONCURRENTLY IF EXISTS invoices_open_due_idx;
DROP INDEX CONCURRENTLY IF EXISTS invoices_account_created_idx;
DROP INDEX CONCURRENTLY IF EXISTS ledger_transactions_history_idx;

-- Back to the session defaults: the settings above must not outlive this migration.
RESET lock_timeout;
RESET statement_timeout;
