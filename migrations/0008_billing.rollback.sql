DROP TABLE ledger_entries;
DROP TABLE ledger_transactions;
DROP FUNCTION ledger_entries_check_balanced();
DROP FUNCTION refuse_change();
DROP TABLE payments;
DROP TABLE invoice_lines;
DROP TABLE invoices;
DROP TABLE invoice_number_counters;
