-- Billing: invoices and their lines, payments, and the double-entry ledger.
--
-- Invoices go draft -> open -> paid | void | uncollectible; every status
-- change is a guarded UPDATE naming the status it expects, so a change that
-- matches no row was refused. :now is the caller's clock, or the
-- transaction's time when NULL. The ledger is append-only: one transaction
-- per financial event (a deterministic idempotency key), whose entries
-- (debits positive, credits negative) sum to zero at commit.

-- name: insert_invoice :one
-- A draft invoice for one subscription period with its totals; no row when
-- the subscription already has an invoice starting at :period_start
-- (invoices_subscription_period_key). A concurrent generator of the same
-- invoice waits here until the first one commits or rolls back.
INSERT INTO invoices (account_id, subscription_id, currency, period_start, period_end,
                      subtotal_minor, tax_minor, total_minor)
VALUES (:account_id, :subscription_id, :currency, :period_start, :period_end,
        :subtotal_minor, 0, :total_minor)
ON CONFLICT ON CONSTRAINT invoices_subscription_period_key DO NOTHING
RETURNING account_id, id, subscription_id, number, status, currency, period_start, period_end,
          subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
          paid_at, voided_at, created_at, updated_at;

-- name: get_invoice_by_period :one
-- The invoice of a subscription period, by the period's start.
SELECT account_id, id, subscription_id, number, status, currency, period_start, period_end,
       subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
       paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND subscription_id = :subscription_id
  AND period_start = :period_start;

-- name: insert_invoice_lines :many
-- The lines of a new invoice, one per element of the parallel arrays, in
-- array order.
INSERT INTO invoice_lines (account_id, invoice_id, kind, description, meter_code, quantity,
                           unit_amount_minor, amount_minor, period_start, period_end)
SELECT :account_id, :invoice_id, l.kind, l.description, l.meter_code, l.quantity,
       l.unit_amount_minor, l.amount_minor, l.period_start, l.period_end
FROM unnest(:kinds::text[], :descriptions::text[], :meter_codes::text[],
            :quantities::numeric[], :unit_amounts_minor::numeric[], :amounts_minor::bigint[],
            :period_starts::timestamptz[], :period_ends::timestamptz[])
     WITH ORDINALITY AS l (kind, description, meter_code, quantity, unit_amount_minor,
                           amount_minor, period_start, period_end, n)
ORDER BY l.n
RETURNING account_id, id, invoice_id, kind, description, meter_code, quantity,
          unit_amount_minor, amount_minor, period_start, period_end;

-- name: get_invoice :one
-- One invoice of an account by id, in any status.
SELECT account_id, id, subscription_id, number, status, currency, period_start, period_end,
       subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
       paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND id = :id;

-- name: lock_invoice :one
-- One invoice of an account by id, locked until the transaction ends: a
-- payment reads the amount due and changes it without a concurrent writer.
SELECT account_id, id, subscription_id, number, status, currency, period_start, period_end,
       subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
       paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND id = :id
FOR UPDATE;

-- name: list_invoice_lines :many
-- An invoice's lines in the order they were written.
SELECT account_id, id, invoice_id, kind, description, meter_code, quantity, unit_amount_minor,
       amount_minor, period_start, period_end
FROM invoice_lines
WHERE account_id = :account_id AND invoice_id = :invoice_id
ORDER BY id;

-- name: list_invoices :many
-- A page of an account's invoices, newest first, before the keyset cursor :after_id.
SELECT account_id, id, subscription_id, number, status, currency, period_start, period_end,
       subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
       paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND id < :after_id
ORDER BY id DESC
LIMIT :limit;

-- name: finalize_invoice :one
-- draft -> open at :now, numbered from the counter of :now's year (UTC) and
-- due :due_in later; a zero-total invoice is paid at once. The draft is
-- locked before the counter row, and the counter is bumped only for a draft,
-- in this transaction: a rollback takes the number back (gap-free) and
-- concurrent finalisations wait for each other on the counter row. No row
-- unless the invoice is a draft.
WITH draft AS (
    SELECT i.account_id, i.id, c.at
    FROM invoices i
    CROSS JOIN (SELECT coalesce(:now::timestamptz, now()) AS at) c
    WHERE i.account_id = :account_id AND i.id = :id AND i.status = 'draft'
    FOR UPDATE OF i
), counter AS (
    INSERT INTO invoice_number_counters AS n (year, last_number)
    SELECT extract(year FROM d.at AT TIME ZONE 'UTC')::bigint, 1
    FROM draft d
    ON CONFLICT (year) DO UPDATE SET last_number = n.last_number + 1
    RETURNING n.year, n.last_number
)
UPDATE invoices i
SET status = CASE WHEN i.total_minor = 0 THEN 'paid' ELSE 'open' END,
    number = k.year::text || '-'
             || lpad(k.last_number::text, greatest(6, length(k.last_number::text)), '0'),
    finalized_at = d.at,
    due_at = d.at + :due_in::interval,
    paid_at = CASE WHEN i.total_minor = 0 THEN d.at END,
    updated_at = now()
FROM draft d, counter k
WHERE i.account_id = d.account_id AND i.id = d.id
RETURNING i.account_id, i.id, i.subscription_id, i.number, i.status, i.currency, i.period_start,
          i.period_end, i.subtotal_minor, i.tax_minor, i.total_minor, i.amount_paid_minor,
          i.finalized_at, i.due_at, i.paid_at, i.voided_at, i.created_at, i.updated_at;

-- name: void_invoice :one
-- open -> void at :now; no row unless the invoice is open.
UPDATE invoices
SET status = 'void', voided_at = coalesce(:now::timestamptz, now()), updated_at = now()
WHERE account_id = :account_id AND id = :id AND status = 'open'
RETURNING account_id, id, subscription_id, number, status, currency, period_start, period_end,
          subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
          paid_at, voided_at, created_at, updated_at;

-- name: mark_invoice_uncollectible :one
-- open -> uncollectible; no row unless the invoice is open.
UPDATE invoices
SET status = 'uncollectible', updated_at = now()
WHERE account_id = :account_id AND id = :id AND status = 'open'
RETURNING account_id, id, subscription_id, number, status, currency, period_start, period_end,
          subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
          paid_at, voided_at, created_at, updated_at;

-- name: get_payment_by_provider_id :one
-- The payment recorded for a provider's payment id, if any.
SELECT account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency, status,
       created_at, succeeded_at
FROM payments
WHERE account_id = :account_id AND provider = :provider
  AND provider_payment_id = :provider_payment_id;

-- name: insert_payment :one
-- A succeeded payment against an invoice, at :now; no row when the provider's
-- payment id is already recorded (payments_provider_payment_key).
INSERT INTO payments (account_id, invoice_id, provider, provider_payment_id, amount_minor,
                      currency, status, succeeded_at)
VALUES (:account_id, :invoice_id, :provider, :provider_payment_id, :amount_minor, :currency,
        'succeeded', coalesce(:now::timestamptz, now()))
ON CONFLICT ON CONSTRAINT payments_provider_payment_key DO NOTHING
RETURNING account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency,
          status, created_at, succeeded_at;

-- name: apply_payment :one
-- Add a payment to an open invoice; it becomes paid at :paid_at when the
-- payments cover its total. No row unless the invoice is open.
UPDATE invoices
SET amount_paid_minor = amount_paid_minor + :amount_minor,
    status = CASE WHEN amount_paid_minor + :amount_minor >= total_minor THEN 'paid'
                  ELSE status END,
    paid_at = CASE WHEN amount_paid_minor + :amount_minor >= total_minor
                   THEN :paid_at::timestamptz ELSE paid_at END,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status = 'open'
RETURNING account_id, id, subscription_id, number, status, currency, period_start, period_end,
          subtotal_minor, tax_minor, total_minor, amount_paid_minor, finalized_at, due_at,
          paid_at, voided_at, created_at, updated_at;

-- name: list_invoice_payments :many
-- The payments recorded against an invoice, oldest first.
SELECT account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency, status,
       created_at, succeeded_at
FROM payments
WHERE account_id = :account_id AND invoice_id = :invoice_id
ORDER BY id;

-- name: insert_ledger_transaction :one
-- Book one financial event at :occurred_at (NULL: now): the transaction and
-- one entry per element of :ledger_accounts / :amounts_minor, all in
-- :currency, returned with its entries. The entries must sum to zero (the
-- deferred trigger ledger_entries_balanced checks at commit); a second event
-- with the same idempotency key is refused (ledger_transactions_idempotency_key).
WITH tx AS (
    INSERT INTO ledger_transactions (account_id, kind, idempotency_key, invoice_id, payment_id,
                                     description, occurred_at)
    VALUES (:account_id, :kind, :idempotency_key, :invoice_id::bigint, :payment_id::bigint,
            :description, coalesce(:occurred_at::timestamptz, now()))
    RETURNING account_id, id, kind, idempotency_key, invoice_id, payment_id, description,
              occurred_at
), entries AS (
    INSERT INTO ledger_entries (account_id, transaction_id, ledger_account, amount_minor,
                                currency)
    SELECT tx.account_id, tx.id, e.ledger_account, e.amount_minor, :currency
    FROM tx,
         unnest(:ledger_accounts::text[], :amounts_minor::bigint[])
             WITH ORDINALITY AS e (ledger_account, amount_minor, n)
    ORDER BY e.n
    RETURNING id, ledger_account, amount_minor, currency
)
SELECT tx.account_id, tx.id, tx.kind, tx.idempotency_key, tx.invoice_id, tx.payment_id,
       tx.description, tx.occurred_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', e.id,
                   'ledger_account', e.ledger_account,
                   'amount_minor', e.amount_minor,
                   'currency', e.currency) ORDER BY e.id), '[]'::jsonb)
        FROM entries e) AS entries
FROM tx;

-- name: list_ledger_transactions :many
-- A page of an account's ledger transactions with their entries, newest
-- (highest id) first, before the keyset cursor :after_id.
SELECT t.account_id, t.id, t.kind, t.idempotency_key, t.invoice_id, t.payment_id,
       t.description, t.occurred_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'id', e.id,
                   'ledger_account', e.ledger_account,
                   'amount_minor', e.amount_minor,
                   'currency', e.currency) ORDER BY e.id), '[]'::jsonb)
        FROM ledger_entries e
        WHERE e.account_id = t.account_id AND e.transaction_id = t.id) AS entries
FROM ledger_transactions t
WHERE t.account_id = :account_id AND t.id < :after_id
ORDER BY t.id DESC
LIMIT :limit;

-- name: get_balances :many
-- An account's ledger per currency (served by ledger_entries_balance_idx):
-- receivable (positive: the customer owes), customer credit (positive: owed
-- to the customer), cash collected, revenue recognised, written off.
SELECT currency,
       coalesce(sum(amount_minor) FILTER (WHERE ledger_account = 'receivable'), 0)::bigint
           AS receivable_minor,
       (-coalesce(sum(amount_minor) FILTER (WHERE ledger_account = 'customer_credit'), 0))::bigint
           AS credit_minor,
       coalesce(sum(amount_minor) FILTER (WHERE ledger_account = 'cash'), 0)::bigint
           AS collected_minor,
       (-coalesce(sum(amount_minor) FILTER (WHERE ledger_account = 'revenue'), 0))::bigint
           AS revenue_minor,
       coalesce(sum(amount_minor) FILTER (WHERE ledger_account = 'bad_debt'), 0)::bigint
           AS written_off_minor
FROM ledger_entries
WHERE account_id = :account_id
GROUP BY currency
ORDER BY currency;

-- name: get_monthly_revenue :many
-- Per UTC month in [:lo, :hi) and currency, across every account: invoices
-- finalised (count and total, by finalized_at), revenue recognised (ledger
-- revenue credits net of debits) and payments booked (count and cash), by
-- the ledger transaction's time. Only months and currencies with activity.
WITH invoiced AS (
    SELECT (date_trunc('month', finalized_at, 'UTC') AT TIME ZONE 'UTC')::date AS month,
           currency, count(*) AS invoices, sum(total_minor) AS invoiced
    FROM invoices
    WHERE finalized_at >= :lo::timestamptz AND finalized_at < :hi::timestamptz
    GROUP BY 1, 2
), booked AS (
    SELECT (date_trunc('month', t.occurred_at, 'UTC') AT TIME ZONE 'UTC')::date AS month,
           e.currency,
           -sum(e.amount_minor) FILTER (WHERE e.ledger_account = 'revenue') AS revenue,
           count(DISTINCT t.id) FILTER (WHERE t.kind = 'payment') AS payments,
           sum(e.amount_minor) FILTER (WHERE t.kind = 'payment' AND e.ledger_account = 'cash')
               AS received
    FROM ledger_transactions t
    JOIN ledger_entries e ON e.account_id = t.account_id AND e.transaction_id = t.id
    WHERE t.occurred_at >= :lo::timestamptz AND t.occurred_at < :hi::timestamptz
    GROUP BY 1, 2
)
SELECT coalesce(i.month, b.month) AS month,
       coalesce(i.currency, b.currency) AS currency,
       coalesce(i.invoices, 0)::bigint AS invoices_finalized,
       coalesce(i.invoiced, 0)::bigint AS invoiced_minor,
       coalesce(b.revenue, 0)::bigint AS revenue_minor,
       coalesce(b.payments, 0)::bigint AS payments,
       coalesce(b.received, 0)::bigint AS payments_received_minor
FROM invoiced i
FULL JOIN booked b ON b.month = i.month AND b.currency = i.currency
ORDER BY 1, 2;
