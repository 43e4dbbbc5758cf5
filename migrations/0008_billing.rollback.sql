-- Rolling back means dropping what the migration created.
-- squawk-ignore-file ban-drop-table, ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP TABLE ledger_entries;
DROP TABLE ledger_transactions;
DROP FUNCTION ledger_entries_check_balanced();
DROP TABLE payments;
DROP TABLE invoice_lines;
DROP TABLE invoices;
DROP TABLE invoice_number_counters;
