-- squawk-ignore-file ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP FUNCTION book_ledger_transaction(
    bigint, text, text, bigint, bigint, text, timestamptz, text, text[], bigint[]);
