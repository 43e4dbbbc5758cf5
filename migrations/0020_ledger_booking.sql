-- depends: 0019_global_lookups
-- The ledger is booked through one function, which refuses unbalanced entries
-- (issue 16).
--
-- The deferred constraint trigger ledger_entries_balanced (0008) checks every
-- transaction at commit on plain PostgreSQL; Citus refuses triggers on
-- distributed tables, so on a cluster `datalayer migrate` drops it
-- (_ops/citus.py). book_ledger_transaction, the library's one way to book,
-- checks that the entries sum to zero, then writes the transaction and its
-- entries: an unbalanced booking raises check_violation naming
-- ledger_entries_balanced, as the trigger does, before anything is written. It
-- runs with the caller's privileges: a SECURITY DEFINER function (the owner
-- writing the ledger for the application role) is what would keep the
-- application's own SQL from writing an unbalanced ledger, but Citus refuses a
-- transaction that modifies one shard's placements as two users ("cannot perform
-- query on placements that were modified in this transaction by a different
-- user"), and finalising an invoice does exactly that.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

CREATE FUNCTION book_ledger_transaction(
    p_account_id bigint, p_kind text, p_idempotency_key text, p_invoice_id bigint,
    p_payment_id bigint, p_description text, p_occurred_at timestamptz, p_currency text,
    p_ledger_accounts text[], p_amounts_minor bigint[]
) RETURNS TABLE (
    account_id bigint, id bigint, kind text, idempotency_key text, invoice_id bigint,
    payment_id bigint, description text, occurred_at timestamptz, entries jsonb
)
LANGUAGE plpgsql AS $$
DECLARE
    total numeric := (SELECT coalesce(sum(a), 0) FROM unnest(p_amounts_minor) AS a);
    tx ledger_transactions%ROWTYPE;
BEGIN
    IF total <> 0 THEN
        RAISE EXCEPTION 'ledger transaction of account % does not balance: % % off',
            p_account_id, total, p_currency
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_balanced',
                  TABLE = 'ledger_entries';
    END IF;
    IF cardinality(p_ledger_accounts) IS DISTINCT FROM cardinality(p_amounts_minor) THEN
        RAISE EXCEPTION 'ledger transaction of account %: % ledger accounts for % amounts',
            p_account_id, cardinality(p_ledger_accounts), cardinality(p_amounts_minor)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_balanced',
                  TABLE = 'ledger_entries';
    END IF;
    INSERT INTO ledger_transactions AS t (account_id, kind, idempotency_key, invoice_id,
                                          payment_id, description, occurred_at)
    VALUES (p_account_id, p_kind, p_idempotency_key, p_invoice_id, p_payment_id,
            p_description, coalesce(p_occurred_at, now()))
    RETURNING t.* INTO tx;
    RETURN QUERY
    WITH booked AS (
        INSERT INTO ledger_entries AS le (account_id, transaction_id, ledger_account,
                                          amount_minor, currency)
        SELECT tx.account_id, tx.id, e.ledger_account, e.amount_minor, p_currency
        FROM unnest(p_ledger_accounts, p_amounts_minor) WITH ORDINALITY
             AS e (ledger_account, amount_minor, n)
        ORDER BY e.n
        RETURNING le.id, le.ledger_account, le.amount_minor, le.currency
    )
    SELECT tx.account_id, tx.id, tx.kind, tx.idempotency_key, tx.invoice_id, tx.payment_id,
           tx.description, tx.occurred_at,
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'id', b.id,
                       'ledger_account', b.ledger_account,
                       'amount_minor', b.amount_minor,
                       'currency', b.currency) ORDER BY b.id), '[]'::jsonb)
            FROM booked b);
END
$$;
