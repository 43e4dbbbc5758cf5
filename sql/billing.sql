-- Billing: billing periods and their invoices, pending items, payments, credit
-- notes, refunds, customer credit and the double-entry ledger.
--
-- A subscription chain is billed period by period: each billing_periods row
-- gets one invoice, made (and, while a draft, remade) from the period's base
-- fee, its accepted usage, the chain's pending items due by its end, and
-- adjustments of earlier periods whose accepted usage changed after they were
-- billed. What a period was billed per meter is the sum of its lines.
--
-- Invoices go draft -> open -> paid | void | uncollectible; every status
-- change is a guarded UPDATE naming the status it expects, so a change that
-- matches no row was refused. :now is the caller's clock, or the
-- transaction's time when NULL. The ledger is append-only: one transaction
-- per financial event (a deterministic idempotency key), whose entries
-- (debits positive, credits negative) sum to zero at commit.

-- name: insert_invoice :one
-- A draft invoice of a chain, for one billing period (:billing_period_id) or,
-- standalone (NULL), for late adjustments of an ended chain; totals are set
-- when its lines are written. No row when the period already has an invoice
-- (invoices_billing_period_key) or the chain already has a draft
-- (invoices_one_draft_per_chain); a concurrent generator waits here until the
-- first commits or rolls back. :created_at is the maker's clock (a test clock
-- included): a standalone invoice's grace runs from it.
INSERT INTO invoices (account_id, subscription_id, chain_id, billing_period_id, currency,
                      period_start, period_end, subtotal_minor, tax_minor, total_minor,
                      created_at, updated_at)
VALUES (:account_id, :subscription_id, :chain_id, :billing_period_id::bigint, :currency,
        :period_start, :period_end, 0, 0, 0, :created_at, :created_at)
ON CONFLICT DO NOTHING
RETURNING account_id, id, subscription_id, chain_id, billing_period_id, number, status,
          currency, period_start, period_end, subtotal_minor, tax_minor, total_minor,
          credit_applied_minor, credited_pre_minor + credited_post_minor AS credited_minor,
          amount_paid_minor, amount_due_minor, finalized_at, due_at, paid_at, voided_at,
          created_at, updated_at;

-- name: get_invoice_by_period :one
-- The invoice of a billing period, if it has one.
SELECT account_id, id, subscription_id, chain_id, billing_period_id, number, status, currency,
       period_start, period_end, subtotal_minor, tax_minor, total_minor, credit_applied_minor,
       credited_pre_minor + credited_post_minor AS credited_minor, amount_paid_minor,
       amount_due_minor, finalized_at, due_at, paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND billing_period_id = :billing_period_id;

-- name: insert_invoice_lines :many
-- Lines of a draft invoice, one per element of the parallel arrays, in array
-- order.
INSERT INTO invoice_lines (account_id, invoice_id, kind, description, meter_code, quantity,
                           unit_amount_minor, amount_minor, period_start, period_end,
                           billing_period_id, metered_quantity, pending_item_id)
SELECT :account_id, :invoice_id, l.kind, l.description, l.meter_code, l.quantity,
       l.unit_amount_minor, l.amount_minor, l.period_start, l.period_end, l.billing_period_id,
       l.metered_quantity, l.pending_item_id
FROM unnest(:kinds::text[], :descriptions::text[], :meter_codes::text[],
            :quantities::numeric[], :unit_amounts_minor::numeric[], :amounts_minor::bigint[],
            :period_starts::timestamptz[], :period_ends::timestamptz[],
            :billing_period_ids::bigint[], :metered_quantities::numeric[],
            :pending_item_ids::bigint[])
     WITH ORDINALITY AS l (kind, description, meter_code, quantity, unit_amount_minor,
                           amount_minor, period_start, period_end, billing_period_id,
                           metered_quantity, pending_item_id, n)
ORDER BY l.n
RETURNING account_id, id, invoice_id, kind, description, meter_code, quantity, unit_amount_minor,
          amount_minor, period_start, period_end, billing_period_id, metered_quantity, pending_item_id;

-- name: get_invoice :one
-- One invoice of an account by id, in any status.
SELECT account_id, id, subscription_id, chain_id, billing_period_id, number, status, currency,
       period_start, period_end, subtotal_minor, tax_minor, total_minor, credit_applied_minor,
       credited_pre_minor + credited_post_minor AS credited_minor, amount_paid_minor,
       amount_due_minor, finalized_at, due_at, paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND id = :id;

-- name: lock_invoice :one
-- One invoice of an account by id, locked until the transaction ends: a
-- payment reads the amount due and changes it without a concurrent writer.
SELECT account_id, id, subscription_id, chain_id, billing_period_id, number, status, currency,
       period_start, period_end, subtotal_minor, tax_minor, total_minor, credit_applied_minor,
       credited_pre_minor + credited_post_minor AS credited_minor, amount_paid_minor,
       amount_due_minor, finalized_at, due_at, paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND id = :id
FOR UPDATE;

-- name: list_invoice_lines :many
-- An invoice's lines in the order they were written.
SELECT account_id, id, invoice_id, kind, description, meter_code, quantity, unit_amount_minor,
       amount_minor, period_start, period_end, billing_period_id, metered_quantity, pending_item_id
FROM invoice_lines
WHERE account_id = :account_id AND invoice_id = :invoice_id
ORDER BY id;

-- name: delete_draft_lines :execrows
-- Every line of a draft invoice, so that it can be made again from what is
-- accepted now. Lines of an issued invoice are never deleted.
DELETE FROM invoice_lines l
USING invoices i
WHERE l.account_id = :account_id AND l.invoice_id = :invoice_id
  AND i.account_id = l.account_id AND i.id = l.invoice_id AND i.status = 'draft';

-- name: set_invoice_totals :one
-- A draft's totals, the sum of its lines (tax 0), and the subscription it
-- bills now. No row unless it is a draft.
UPDATE invoices
SET subtotal_minor = :total_minor, total_minor = :total_minor,
    subscription_id = :subscription_id, updated_at = now()
WHERE account_id = :account_id AND id = :id AND status = 'draft'
RETURNING account_id, id, subscription_id, chain_id, billing_period_id, number, status,
          currency, period_start, period_end, subtotal_minor, tax_minor, total_minor,
          credit_applied_minor, credited_pre_minor + credited_post_minor AS credited_minor,
          amount_paid_minor, amount_due_minor, finalized_at, due_at, paid_at, voided_at,
          created_at, updated_at;

-- name: list_invoices :many
-- A page of an account's invoices, newest first, before the keyset cursor :after_id.
SELECT account_id, id, subscription_id, chain_id, billing_period_id, number, status, currency,
       period_start, period_end, subtotal_minor, tax_minor, total_minor, credit_applied_minor,
       credited_pre_minor + credited_post_minor AS credited_minor, amount_paid_minor,
       amount_due_minor, finalized_at, due_at, paid_at, voided_at, created_at, updated_at
FROM invoices
WHERE account_id = :account_id AND id < :after_id
ORDER BY id DESC
LIMIT :limit;

-- name: finalize_invoice :one
-- draft -> open at :now, numbered from the counter of :now's year (UTC) and
-- due :due_in later, with :credit_applied of the customer's credit; an
-- invoice with nothing left to pay is paid at once. The draft is locked
-- before the counter row, and the counter is bumped only for a draft, in this
-- transaction: a rollback takes the number back (gap-free) and concurrent
-- finalisations wait for each other on the counter row. No row unless the
-- invoice is a draft.
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
SET status = CASE WHEN i.total_minor = :credit_applied THEN 'paid' ELSE 'open' END,
    number = k.year::text || '-'
             || lpad(k.last_number::text, greatest(6, length(k.last_number::text)), '0'),
    credit_applied_minor = :credit_applied,
    finalized_at = d.at,
    due_at = (d.at AT TIME ZONE 'UTC' + :due_in::interval) AT TIME ZONE 'UTC',
    paid_at = CASE WHEN i.total_minor = :credit_applied THEN d.at END,
    updated_at = now()
FROM draft d, counter k
WHERE i.account_id = :account_id AND i.id = d.id
RETURNING i.account_id, i.id, i.subscription_id, i.chain_id, i.billing_period_id, i.number,
          i.status, i.currency, i.period_start, i.period_end, i.subtotal_minor, i.tax_minor,
          i.total_minor, i.credit_applied_minor,
          i.credited_pre_minor + i.credited_post_minor AS credited_minor, i.amount_paid_minor,
          i.amount_due_minor, i.finalized_at, i.due_at, i.paid_at, i.voided_at, i.created_at,
          i.updated_at;

-- name: void_invoice :one
-- open -> void at :now; no row unless the invoice is open. (:now or now() is
-- read in FROM, not in SET: Citus refuses a non-immutable function in a
-- COALESCE or CASE of an UPDATE's SET.)
UPDATE invoices
SET status = 'void', voided_at = c.at, updated_at = now()
FROM (SELECT coalesce(:now::timestamptz, now()) AS at) c
WHERE account_id = :account_id AND id = :id AND status = 'open'
RETURNING account_id, id, subscription_id, chain_id, billing_period_id, number, status,
          currency, period_start, period_end, subtotal_minor, tax_minor, total_minor,
          credit_applied_minor, credited_pre_minor + credited_post_minor AS credited_minor,
          amount_paid_minor, amount_due_minor, finalized_at, due_at, paid_at, voided_at,
          created_at, updated_at;

-- name: mark_invoice_uncollectible :one
-- open -> uncollectible; no row unless the invoice is open.
UPDATE invoices
SET status = 'uncollectible', updated_at = now()
WHERE account_id = :account_id AND id = :id AND status = 'open'
RETURNING account_id, id, subscription_id, chain_id, billing_period_id, number, status,
          currency, period_start, period_end, subtotal_minor, tax_minor, total_minor,
          credit_applied_minor, credited_pre_minor + credited_post_minor AS credited_minor,
          amount_paid_minor, amount_due_minor, finalized_at, due_at, paid_at, voided_at,
          created_at, updated_at;

-- name: get_payment_by_provider_id :one
-- The payment recorded for a provider's payment id, if any.
SELECT account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency, status,
       applied_minor, refunded_minor, created_at, succeeded_at
FROM payments
WHERE account_id = :account_id AND provider = :provider
  AND provider_payment_id = :provider_payment_id;

-- name: insert_payment :one
-- A succeeded payment against an invoice, at :now, of which :applied_minor
-- settles the invoice (the rest is customer credit); no row when the
-- provider's payment id is already recorded (payments_provider_payment_key).
INSERT INTO payments (account_id, invoice_id, provider, provider_payment_id, amount_minor,
                      currency, status, succeeded_at, applied_minor)
VALUES (:account_id, :invoice_id, :provider, :provider_payment_id, :amount_minor, :currency,
        'succeeded', coalesce(:now::timestamptz, now()), :applied_minor)
ON CONFLICT ON CONSTRAINT payments_provider_payment_key DO NOTHING
RETURNING account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency, status,
          applied_minor, refunded_minor, created_at, succeeded_at;

-- name: apply_payment :one
-- Settle :applied_minor of an open invoice; it becomes paid at :paid_at when
-- nothing is left to pay. No row unless the invoice is open.
UPDATE invoices
SET amount_paid_minor = amount_paid_minor + :applied_minor,
    status = CASE WHEN amount_due_minor = :applied_minor THEN 'paid' ELSE status END,
    paid_at = CASE WHEN amount_due_minor = :applied_minor THEN :paid_at::timestamptz
                   ELSE paid_at END,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND status = 'open'
RETURNING account_id, id, subscription_id, chain_id, billing_period_id, number, status,
          currency, period_start, period_end, subtotal_minor, tax_minor, total_minor,
          credit_applied_minor, credited_pre_minor + credited_post_minor AS credited_minor,
          amount_paid_minor, amount_due_minor, finalized_at, due_at, paid_at, voided_at,
          created_at, updated_at;

-- name: list_invoice_payments :many
-- The payments recorded against an invoice, oldest first.
SELECT account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency, status,
       applied_minor, refunded_minor, created_at, succeeded_at
FROM payments
WHERE account_id = :account_id AND invoice_id = :invoice_id
ORDER BY id;

-- name: insert_ledger_transaction :one
-- Book one financial event at :occurred_at (NULL: now): the transaction and
-- one entry per element of :ledger_accounts / :amounts_minor, all in
-- :currency, returned with its entries, through book_ledger_transaction
-- (migration 0020): the entries must sum to zero, or it refuses before
-- writing anything (check_violation naming ledger_entries_balanced; on plain
-- PostgreSQL the deferred trigger of that name also checks at commit). A
-- second event with the same idempotency key is refused
-- (ledger_transactions_idempotency_key).
SELECT account_id, id, kind, idempotency_key, invoice_id, payment_id, description, occurred_at,
       entries
FROM book_ledger_transaction(
    :account_id::bigint, :kind::text, :idempotency_key::text, :invoice_id::bigint,
    :payment_id::bigint, :description::text, :occurred_at::timestamptz, :currency::text,
    :ledger_accounts::text[], :amounts_minor::bigint[]);

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
        WHERE e.account_id = :account_id AND e.transaction_id = t.id) AS entries
FROM ledger_transactions t
WHERE t.account_id = :account_id AND t.id < :after_id
ORDER BY t.id DESC
LIMIT :limit;

-- name: get_balances :many
-- An account's ledger per currency (served by ledger_entries_balance_idx):
-- receivable (positive: the customer owes), customer credit (positive: owed
-- to the customer), cash collected, revenue recognised, written off, refunds
-- given but not yet reported paid out.
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
           AS written_off_minor,
       (-coalesce(sum(amount_minor) FILTER (WHERE ledger_account = 'refunds_payable'), 0))::bigint
           AS refunds_pending_minor
FROM ledger_entries
WHERE account_id = :account_id
GROUP BY currency
ORDER BY currency;

-- == billing periods ===================================================================

-- name: find_billing_period :one
-- The billing period of a chain that starts at :period_start, with the plan
-- that prices its usage (the plan of the subscription in force at its close).
SELECT p.account_id, p.id, p.chain_id, p.subscription_id, p.base_plan_id,
       s.plan_id AS pricing_plan_id, p.period_start, p.period_end, p.closes_at, p.trial_end,
       p.invoice_id, p.legacy, p.checked_at, p.settled
FROM billing_periods p
JOIN subscriptions s ON s.account_id = p.account_id AND s.id = p.subscription_id
WHERE p.account_id = :account_id AND p.chain_id = :chain_id AND p.period_start = :period_start;

-- name: lock_billing_period :one
-- One billing period, locked until the transaction ends: its invoice is made
-- by one transaction at a time.
SELECT p.account_id, p.id, p.chain_id, p.subscription_id, p.base_plan_id,
       s.plan_id AS pricing_plan_id, p.period_start, p.period_end, p.closes_at, p.trial_end,
       p.invoice_id, p.legacy, p.checked_at, p.settled
FROM billing_periods p
JOIN subscriptions s ON s.account_id = p.account_id AND s.id = p.subscription_id
WHERE p.account_id = :account_id AND p.id = :id
FOR UPDATE OF p;

-- name: set_period_invoice :exec
-- Record a period's invoice.
UPDATE billing_periods
SET invoice_id = :invoice_id
WHERE account_id = :account_id AND id = :id;

-- name: list_adjustable_periods :many
-- The chain's periods before :before whose own invoice is made and whose
-- usage may still have changed since an issued invoice last billed it (not
-- settled; legacy periods are settled): late usage and cancellations of them
-- are billed as adjustments. Oldest first.
SELECT p.account_id, p.id, p.chain_id, p.subscription_id, p.base_plan_id,
       s.plan_id AS pricing_plan_id, p.period_start, p.period_end, p.closes_at, p.trial_end,
       p.invoice_id, p.legacy, p.checked_at, p.settled
FROM billing_periods p
JOIN subscriptions s ON s.account_id = p.account_id AND s.id = p.subscription_id
WHERE p.account_id = :account_id AND p.chain_id = :chain_id
  AND p.period_start < :before::timestamptz
  AND p.invoice_id IS NOT NULL AND NOT p.settled
ORDER BY p.period_start;

-- name: mark_periods_checked :execrows
-- An issued invoice billed the usage of these periods as accepted at :now;
-- a period checked :horizon or more after its close is settled: no event
-- of it can be accepted or cancelled any more.
UPDATE billing_periods
SET checked_at = :now::timestamptz,
    settled = :now::timestamptz >= (closes_at AT TIME ZONE 'UTC' + :horizon::interval) AT TIME ZONE 'UTC'
WHERE account_id = :account_id AND id = ANY(:ids::bigint[]);

-- name: list_billed_usage :many
-- What the given periods were billed per meter, on every invoice but
-- :invoice_id (the one being made): the accepted quantity the lines counted
-- and their amount.
-- (Both keys are never NULL here: the WHERE clause says so, coalesce tells check-sql.)
SELECT coalesce(l.billing_period_id, 0) AS billing_period_id,
       coalesce(l.meter_code, '') AS meter_code,
       coalesce(sum(l.metered_quantity), 0)::numeric(20, 6) AS quantity,
       coalesce(sum(l.amount_minor), 0)::bigint AS amount_minor
FROM invoice_lines l
WHERE l.account_id = :account_id AND l.billing_period_id = ANY(:period_ids::bigint[])
  AND l.meter_code IS NOT NULL AND l.invoice_id <> :invoice_id
GROUP BY l.billing_period_id, l.meter_code;

-- == pending invoice items =============================================================

-- name: attach_pending_items :many
-- The chain's pending items due by :period_end and not yet billed, now billed
-- by :invoice_id; oldest first. Each item is billed once: the rows are
-- locked by this update, and only one draft per chain exists.
UPDATE pending_invoice_items
SET invoice_id = :invoice_id
WHERE account_id = :account_id AND chain_id = :chain_id AND invoice_id IS NULL
  AND service_end <= :period_end::timestamptz
RETURNING account_id, id, chain_id, subscription_id, kind, description, amount_minor, currency,
          service_start, service_end, invoice_id, created_at;

-- name: detach_pending_items :execrows
-- Release the pending items of a draft that is being made again.
UPDATE pending_invoice_items i
SET invoice_id = NULL
FROM invoices v
WHERE i.account_id = :account_id AND i.invoice_id = :invoice_id
  AND v.account_id = i.account_id AND v.id = i.invoice_id AND v.status = 'draft';

-- name: list_pending_items :many
-- The pending items of a chain, oldest first: billed (invoice_id set) or not.
SELECT account_id, id, chain_id, subscription_id, kind, description, amount_minor, currency,
       service_start, service_end, invoice_id, created_at
FROM pending_invoice_items
WHERE account_id = :account_id AND chain_id = :chain_id
ORDER BY id;

-- == the billing run ====================================================================

-- name: list_closed_periods :many
-- The next :batch closed billing periods without an invoice (closed by :now), across
-- accounts, after the keyset cursor (:after_closes_at, :after_account_id, :after_id)
-- in (closes_at, account_id, id) order: only a chain's oldest uninvoiced period, and
-- only when the chain has no draft; not the periods of :skip_ids. A read without locks
-- (a multi-shard read on Citus) of what claim_closed_periods then locks one account at
-- a time.
SELECT p.account_id, p.id, p.closes_at
FROM billing_periods p
WHERE p.invoice_id IS NULL AND p.closes_at <= :now::timestamptz
  AND p.closes_at >= :after_closes_at
  AND (p.closes_at, p.account_id, p.id) > (:after_closes_at, :after_account_id, :after_id)
  AND p.id <> ALL(:skip_ids::bigint[])
  AND NOT EXISTS (
      SELECT 1 FROM billing_periods e
      WHERE e.account_id = p.account_id AND e.chain_id = p.chain_id
        AND e.period_start < p.period_start AND e.invoice_id IS NULL)
  AND NOT EXISTS (
      SELECT 1 FROM invoices d
      WHERE d.account_id = p.account_id AND d.chain_id = p.chain_id AND d.status = 'draft')
ORDER BY p.closes_at, p.account_id, p.id
LIMIT :batch;

-- name: claim_closed_periods :many
-- Up to :batch closed billing periods of the account without an invoice (closed by
-- :now), oldest first, locked for the claiming transaction and skipped by others:
-- only a chain's oldest uninvoiced period, and only when the chain has no draft, so
-- a chain's invoices are made in order; not the periods of :skip_ids (items that
-- failed earlier in this run, or claimed already). Pinned to one account, so that it
-- routes to one shard on Citus (list_closed_periods says which accounts have work).
SELECT p.account_id, p.id, p.chain_id, p.subscription_id, p.base_plan_id,
       s.plan_id AS pricing_plan_id, p.period_start, p.period_end, p.closes_at, p.trial_end,
       p.invoice_id, p.legacy, p.checked_at, p.settled
FROM billing_periods p
JOIN subscriptions s ON s.account_id = p.account_id AND s.id = p.subscription_id
WHERE p.account_id = :account_id
  AND p.invoice_id IS NULL AND p.closes_at <= :now::timestamptz
  AND p.id <> ALL(:skip_ids::bigint[])
  AND NOT EXISTS (
      SELECT 1 FROM billing_periods e
      WHERE e.account_id = p.account_id AND e.chain_id = p.chain_id
        AND e.period_start < p.period_start AND e.invoice_id IS NULL)
  AND NOT EXISTS (
      SELECT 1 FROM invoices d
      WHERE d.account_id = p.account_id AND d.chain_id = p.chain_id AND d.status = 'draft')
ORDER BY p.closes_at, p.id
LIMIT :batch
FOR UPDATE OF p SKIP LOCKED;

-- name: list_drafts :many
-- The next :batch draft invoices across accounts, in id order after :after_id: a read
-- without locks (a multi-shard read on Citus) of what claim_drafts then locks one
-- account at a time.
SELECT i.account_id, i.id
FROM invoices i
WHERE i.status = 'draft' AND i.id > :after_id
ORDER BY i.id
LIMIT :batch;

-- name: claim_drafts :many
-- The account's draft invoices among :ids, locked for the claiming transaction and
-- skipped by others (and left out when no longer drafts), with the instant their grace
-- period ends: the close of their period plus :grace, or (a standalone adjustment
-- invoice) their creation plus :grace. In id order. Pinned to one account, so that it
-- routes to one shard on Citus (list_drafts says which accounts have drafts).
SELECT i.account_id, i.id,
       (coalesce(p.closes_at, i.created_at) AT TIME ZONE 'UTC' + :grace::interval) AT TIME ZONE 'UTC'
           AS due_at
FROM invoices i
LEFT JOIN billing_periods p ON p.account_id = i.account_id AND p.id = i.billing_period_id
WHERE i.account_id = :account_id AND i.id = ANY(:ids::bigint[]) AND i.status = 'draft'
ORDER BY i.id
FOR UPDATE OF i SKIP LOCKED;

-- name: list_ended_chain_periods :many
-- Periods of ended chains (no live subscription, every period invoiced, no
-- draft) not yet settled: a late change of their usage needs a standalone
-- adjustment invoice. In id order, after :after_id.
SELECT p.account_id, p.id, p.chain_id, p.subscription_id, p.base_plan_id,
       s.plan_id AS pricing_plan_id, p.period_start, p.period_end, p.closes_at, p.trial_end,
       p.invoice_id, p.legacy, p.checked_at, p.settled
FROM billing_periods p
JOIN subscriptions s ON s.account_id = p.account_id AND s.id = p.subscription_id
WHERE NOT p.settled AND p.invoice_id IS NOT NULL AND p.id > :after_id
  AND NOT EXISTS (
      SELECT 1 FROM subscriptions l
      WHERE l.account_id = p.account_id AND l.chain_id = p.chain_id
        AND l.status IN ('trialing', 'active', 'past_due'))
  AND NOT EXISTS (
      SELECT 1 FROM billing_periods o
      WHERE o.account_id = p.account_id AND o.chain_id = p.chain_id AND o.invoice_id IS NULL)
  AND NOT EXISTS (
      SELECT 1 FROM invoices d
      WHERE d.account_id = p.account_id AND d.chain_id = p.chain_id AND d.status = 'draft')
ORDER BY p.id
LIMIT :batch;

-- name: get_chain_draft :one
-- The draft invoice of a chain, if any (at most one).
SELECT i.account_id, i.id, i.subscription_id, i.chain_id, i.billing_period_id, i.number,
       i.status, i.currency, i.period_start, i.period_end, i.subtotal_minor, i.tax_minor,
       i.total_minor, i.credit_applied_minor,
       i.credited_pre_minor + i.credited_post_minor AS credited_minor, i.amount_paid_minor,
       i.amount_due_minor, i.finalized_at, i.due_at, i.paid_at, i.voided_at, i.created_at,
       i.updated_at
FROM invoices i
WHERE i.account_id = :account_id AND i.chain_id = :chain_id AND i.status = 'draft';

-- == customer credit ===================================================================

-- name: insert_credit_grant :one
-- Credit owed to the customer, in :currency, from an overpayment, a credit
-- note, credit beyond an invoice's charges, or a voided invoice.
INSERT INTO credit_grants (account_id, currency, amount_minor, remaining_minor, source,
                           invoice_id, payment_id, credit_note_id)
VALUES (:account_id, :currency, :amount_minor, :amount_minor, :source, :invoice_id::bigint,
        :payment_id::bigint, :credit_note_id::bigint)
RETURNING account_id, id, currency, amount_minor, remaining_minor, source, invoice_id, payment_id,
          credit_note_id, created_at;

-- name: lock_open_credit_grants :many
-- The account's credit in :currency that is not used up, oldest first,
-- locked: applying it never races another application.
SELECT account_id, id, currency, amount_minor, remaining_minor, source, invoice_id, payment_id,
       credit_note_id, created_at
FROM credit_grants
WHERE account_id = :account_id AND currency = :currency AND remaining_minor > 0
ORDER BY id
FOR UPDATE;

-- name: apply_credit :execrows
-- Use :amounts_minor of the grants :grant_ids for :invoice_id: one
-- application each, and the grants' remaining amounts reduced.
WITH used AS (
    SELECT u.grant_id, u.amount_minor
    FROM unnest(:grant_ids::bigint[], :amounts_minor::bigint[]) AS u (grant_id, amount_minor)
), applied AS (
    INSERT INTO credit_applications (account_id, grant_id, invoice_id, amount_minor)
    SELECT :account_id, grant_id, :invoice_id, amount_minor FROM used
)
UPDATE credit_grants g
SET remaining_minor = g.remaining_minor - used.amount_minor
FROM used
WHERE g.account_id = :account_id AND g.id = used.grant_id;

-- name: list_credit_grants :many
-- The account's credit grants, newest first.
SELECT account_id, id, currency, amount_minor, remaining_minor, source, invoice_id, payment_id,
       credit_note_id, created_at
FROM credit_grants
WHERE account_id = :account_id
ORDER BY id DESC;

-- == credit notes and refunds ==========================================================

-- name: get_credit_note_by_key :one
-- The credit note issued under an idempotency key, if any.
SELECT account_id, id, invoice_id, amount_minor, pre_minor, post_minor, refund, reason,
       idempotency_key, created_at
FROM credit_notes
WHERE account_id = :account_id AND idempotency_key = :idempotency_key;

-- name: insert_credit_note :one
-- A credit note of :invoice_id; no row when its idempotency key was used
-- before (credit_notes_idempotency_key).
INSERT INTO credit_notes (account_id, invoice_id, amount_minor, pre_minor, post_minor, refund,
                          reason, idempotency_key)
VALUES (:account_id, :invoice_id, :pre_minor::bigint + :post_minor::bigint, :pre_minor, :post_minor, :refund,
        :reason, :idempotency_key)
ON CONFLICT ON CONSTRAINT credit_notes_idempotency_key DO NOTHING
RETURNING account_id, id, invoice_id, amount_minor, pre_minor, post_minor, refund, reason,
          idempotency_key, created_at;

-- name: apply_credit_note :one
-- A credit note on an open or paid invoice: :pre_minor less to pay, :post_minor
-- given back of what was paid; an open invoice with nothing left to pay is
-- paid at :now. The database refuses credit notes above the total
-- (invoices_credited_check). No row unless the invoice is open or paid.
-- (:now or now() is read in FROM: Citus refuses a non-immutable function in a
-- CASE of an UPDATE's SET.)
UPDATE invoices
SET credited_pre_minor = credited_pre_minor + :pre_minor,
    credited_post_minor = credited_post_minor + :post_minor,
    status = CASE WHEN status = 'open' AND amount_due_minor = :pre_minor THEN 'paid'
                  ELSE status END,
    paid_at = CASE WHEN status = 'open' AND amount_due_minor = :pre_minor
                   THEN c.at ELSE paid_at END,
    updated_at = now()
FROM (SELECT coalesce(:now::timestamptz, now()) AS at) c
WHERE account_id = :account_id AND id = :id AND status IN ('open', 'paid')
RETURNING account_id, id, subscription_id, chain_id, billing_period_id, number, status,
          currency, period_start, period_end, subtotal_minor, tax_minor, total_minor,
          credit_applied_minor, credited_pre_minor + credited_post_minor AS credited_minor,
          amount_paid_minor, amount_due_minor, finalized_at, due_at, paid_at, voided_at,
          created_at, updated_at;

-- name: lock_refundable_payments :many
-- The invoice's payments with something left to refund (what they settled of
-- it, less refunds), newest first, locked.
SELECT account_id, id, invoice_id, provider, provider_payment_id, amount_minor, currency, status,
       applied_minor, refunded_minor, created_at, succeeded_at
FROM payments
WHERE account_id = :account_id AND invoice_id = :invoice_id
  AND status IN ('succeeded', 'refunded') AND applied_minor > refunded_minor
ORDER BY id DESC
FOR UPDATE;

-- name: insert_refunds :many
-- Refunds of a credit note, one per payment it gives money back on, pending
-- until the provider reports them paid out; each payment's refunded amount
-- grows with them, and a payment refunded in full is 'refunded'.
WITH parts AS (
    SELECT r.payment_id, r.amount_minor
    FROM unnest(:payment_ids::bigint[], :amounts_minor::bigint[]) AS r (payment_id, amount_minor)
), paid_back AS (
    UPDATE payments p
    SET refunded_minor = p.refunded_minor + parts.amount_minor,
        status = CASE WHEN p.refunded_minor + parts.amount_minor = p.applied_minor
                      THEN 'refunded' ELSE p.status END
    FROM parts
    WHERE p.account_id = :account_id AND p.id = parts.payment_id
    RETURNING p.id, p.provider, p.currency
), refunded AS (
    INSERT INTO refunds (account_id, invoice_id, credit_note_id, payment_id, amount_minor,
                         currency, provider)
    SELECT :account_id, :invoice_id, :credit_note_id, parts.payment_id, parts.amount_minor,
           b.currency, b.provider
    FROM parts
    JOIN paid_back b ON b.id = parts.payment_id
    RETURNING account_id, id, invoice_id, credit_note_id, payment_id, amount_minor, currency,
              status, provider, provider_refund_id, created_at, succeeded_at
)
SELECT account_id, id, invoice_id, credit_note_id, payment_id, amount_minor, currency, status,
       provider, provider_refund_id, created_at, succeeded_at
FROM refunded;

-- name: list_credit_note_refunds :many
-- The refunds of a credit note, in the order they were made.
SELECT account_id, id, invoice_id, credit_note_id, payment_id, amount_minor, currency, status,
       provider, provider_refund_id, created_at, succeeded_at
FROM refunds
WHERE account_id = :account_id AND credit_note_id = :credit_note_id
ORDER BY id;

-- name: list_credit_notes :many
-- The credit notes of an invoice, oldest first.
SELECT account_id, id, invoice_id, amount_minor, pre_minor, post_minor, refund, reason,
       idempotency_key, created_at
FROM credit_notes
WHERE account_id = :account_id AND invoice_id = :invoice_id
ORDER BY id;

-- name: get_refund :one
-- One refund of an account by id.
SELECT account_id, id, invoice_id, credit_note_id, payment_id, amount_minor, currency, status,
       provider, provider_refund_id, created_at, succeeded_at
FROM refunds
WHERE account_id = :account_id AND id = :id;

-- name: mark_refund_succeeded :one
-- A pending refund, paid out by the provider under :provider_refund_id at
-- :now. No row unless it is pending. (:now or now() is read in FROM: Citus
-- refuses a non-immutable function in a COALESCE of an UPDATE's SET.)
UPDATE refunds
SET status = 'succeeded', provider_refund_id = :provider_refund_id, succeeded_at = c.at
FROM (SELECT coalesce(:now::timestamptz, now()) AS at) c
WHERE account_id = :account_id AND id = :id AND status = 'pending'
RETURNING account_id, id, invoice_id, credit_note_id, payment_id, amount_minor, currency, status,
          provider, provider_refund_id, created_at, succeeded_at;

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
