-- squawk-ignore-file ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP FUNCTION ledger_entries_refuse_unbalanced(bigint, text, bigint[]);
