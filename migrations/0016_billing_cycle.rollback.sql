-- Back to invoices per subscription period, without chains, periods, credit
-- notes, refunds or credit grants (what they recorded is lost).
-- squawk-ignore-file ban-drop-table, ban-drop-column, ban-drop-constraint, require-concurrent-index-deletion, disallowed-unique-constraint, constraint-missing-not-valid
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check
    CHECK (kind IN ('invoice_finalized', 'payment', 'invoice_voided', 'credit', 'refund',
                    'write_off', 'adjustment')) NOT VALID;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_ledger_account_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_ledger_account_check
    CHECK (ledger_account IN ('receivable', 'revenue', 'cash', 'customer_credit', 'tax',
                              'bad_debt')) NOT VALID;

DROP TABLE credit_applications;
DROP TABLE credit_grants;
DROP TABLE refunds;
DROP TABLE credit_notes;
ALTER TABLE payments DROP COLUMN applied_minor, DROP COLUMN refunded_minor;

ALTER TABLE invoice_lines DROP COLUMN pending_item_id;
DROP TABLE pending_invoice_items;
ALTER TABLE invoice_lines DROP COLUMN billing_period_id, DROP COLUMN metered_quantity;

ALTER TABLE billing_periods DROP CONSTRAINT billing_periods_invoice_fkey;
DROP INDEX invoices_one_draft_per_chain;
DROP INDEX invoices_subscription_idx;
DROP INDEX invoices_chain_idx;
DROP INDEX invoices_drafts_idx;
ALTER TABLE invoices DROP CONSTRAINT invoices_paid_check;
ALTER TABLE invoices DROP COLUMN amount_due_minor;
ALTER TABLE invoices
    DROP COLUMN chain_id,
    DROP COLUMN billing_period_id,
    DROP COLUMN credit_applied_minor,
    DROP COLUMN credited_pre_minor,
    DROP COLUMN credited_post_minor;
ALTER TABLE invoices
    ADD CONSTRAINT invoices_paid_check CHECK (
        (status = 'paid') <= (paid_at IS NOT NULL AND amount_paid_minor >= total_minor)),
    ADD CONSTRAINT invoices_subscription_period_key
        UNIQUE (account_id, subscription_id, period_start);
DROP TABLE billing_periods;
ALTER TABLE subscriptions DROP COLUMN chain_id;
