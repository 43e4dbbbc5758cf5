-- depends: 0018_rollup_queues_by_account
-- The ledger's balance, checked by the statement that books a transaction
-- (issue 16). The deferred constraint trigger ledger_entries_balanced (0008)
-- checks every transaction at commit on plain PostgreSQL; Citus refuses
-- triggers on distributed tables, so on a cluster `datalayer migrate` drops it
-- (_ops/citus.py). insert_ledger_transaction, the library's one statement that
-- books a transaction and its entries, now refuses unbalanced entries itself,
-- before it writes anything, with the same error (check_violation naming
-- ledger_entries_balanced): the guarantee holds on both layouts for everything
-- the library books, and the trigger still guards plain SQL on plain PostgreSQL.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

CREATE FUNCTION ledger_entries_refuse_unbalanced(
    p_account_id bigint, p_currency text, p_amounts_minor bigint[]
) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    total numeric := (SELECT coalesce(sum(a), 0) FROM unnest(p_amounts_minor) AS a);
BEGIN
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction of account % does not balance: % % off',
            p_account_id, total, p_currency
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_balanced',
                  TABLE = 'ledger_entries';
    END IF;
    RETURN true;
END
$$;
