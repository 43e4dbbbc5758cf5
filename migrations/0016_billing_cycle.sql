-- depends: 0015_usage_cancellations
-- The billing cycle: everything metered or charged is billed exactly once.
--
-- subscriptions.chain_id  the subscription chain (the root of the replaces_id
--                         links): upgrades and downgrades stay in their chain.
-- billing_periods         one row per period of a chain, written when the period
--                         starts; it closes at its end, or earlier when the chain
--                         is canceled at once. Its invoice bills it.
-- pending_invoice_items   money of a mid-period change (an upgrade's proration),
--                         written with the change, billed once by the next
--                         invoice of the chain.
-- invoices / lines        an invoice bills one period (or, standalone, late
--                         adjustments of an ended chain); usage lines say the
--                         accepted quantity they count (metered_quantity), so
--                         what was billed per period and meter is a sum of lines.
-- credit_grants / credit_applications
--                         customer credit, applied oldest first at finalisation.
-- credit_notes / refunds  money given back on an open or paid invoice.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';
-- Constraints are replaced (dropped and added again) in this same transaction.
-- The tables changed hold a row per subscription, invoice, line or payment (and
-- the new ones are empty): their brief ACCESS EXCLUSIVE locks, scans and the
-- invoices rewrite (a generated column) cost less than a multi-step
-- migration. The ledger's constraints are added NOT VALID and validated, which
-- takes no lock that blocks writes while it scans.
-- squawk-ignore-file ban-drop-constraint, adding-field-with-default, adding-foreign-key-constraint, constraint-missing-not-valid, disallowed-unique-constraint, require-concurrent-index-creation, adding-not-nullable-field

-- -- subscription chains ------------------------------------------------------------------------
ALTER TABLE subscriptions ADD COLUMN chain_id bigint;
WITH RECURSIVE chain AS (
    SELECT account_id, id, id AS root FROM subscriptions WHERE replaces_id IS NULL
    UNION ALL
    SELECT s.account_id, s.id, c.root
    FROM subscriptions s
    JOIN chain c ON c.account_id = s.account_id AND c.id = s.replaces_id
)
UPDATE subscriptions s SET chain_id = c.root
FROM chain c
WHERE s.account_id = c.account_id AND s.id = c.id;
ALTER TABLE subscriptions ALTER COLUMN chain_id SET NOT NULL;
ALTER TABLE subscriptions ADD CONSTRAINT subscriptions_chain_fkey
    FOREIGN KEY (account_id, chain_id) REFERENCES subscriptions (account_id, id);
-- used by: list_ended_chain_periods, FK subscriptions_chain_fkey
-- Led by chain_id: led by account_id it would compete with the primary key for
-- lookups of one subscription.
CREATE INDEX subscriptions_chain_idx ON subscriptions (chain_id, account_id);

-- -- billing periods -----------------------------------------------------------------------------
-- indexes:
--   billing_periods_pkey used by lock_billing_period, set_period_invoice,
--     claim_closed_periods (an account's periods)
--   billing_periods_chain_start_key used by find_billing_period, list_adjustable_periods,
--     list_closed_periods, claim_closed_periods (no earlier open period),
--     list_ended_chain_periods, insert_upgrade,
--     cancel_subscription_now, FK billing_periods_chain_fkey
--   billing_periods_invoice_key used by FK billing_periods_invoice_fkey (one period per invoice)
CREATE TABLE billing_periods (
    account_id       bigint NOT NULL REFERENCES accounts (id),
    id               bigint GENERATED ALWAYS AS IDENTITY,
    chain_id         bigint NOT NULL,
    -- The subscription in force at the period's close: its plan prices the usage.
    subscription_id  bigint NOT NULL,
    -- The plan the period opened with: its base fee is billed for the period.
    base_plan_id     bigint NOT NULL REFERENCES plans (id),
    period_start     timestamptz NOT NULL,
    period_end       timestamptz NOT NULL,
    -- The end of the period's usage window: period_end, or the instant the chain
    -- was canceled inside the period.
    closes_at        timestamptz NOT NULL,
    -- The base fee is not billed for time before trial_end.
    trial_end        timestamptz,
    invoice_id       bigint,
    -- Invoiced before this migration: those usage lines do not say the quantity
    -- they counted, so late usage of the period is not adjusted.
    legacy           boolean NOT NULL DEFAULT false,
    -- When an issued invoice last billed the period's usage, and whether that was
    -- so long after its close that its usage can no longer change (settled).
    -- Periods not settled are what late usage and cancellations are adjusted for.
    checked_at       timestamptz,
    settled          boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT billing_periods_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT billing_periods_chain_start_key UNIQUE (account_id, chain_id, period_start),
    CONSTRAINT billing_periods_invoice_key UNIQUE (invoice_id, account_id),
    CONSTRAINT billing_periods_chain_fkey FOREIGN KEY (account_id, chain_id)
        REFERENCES subscriptions (account_id, id),
    CONSTRAINT billing_periods_subscription_fkey FOREIGN KEY (account_id, subscription_id)
        REFERENCES subscriptions (account_id, id),
    CONSTRAINT billing_periods_period_check CHECK (period_end > period_start),
    CONSTRAINT billing_periods_closes_check
        CHECK (closes_at >= period_start AND closes_at <= period_end)
);
-- The billing run's work queue: closed periods without an invoice, oldest first.
-- used by: list_closed_periods
CREATE INDEX billing_periods_due_idx ON billing_periods (closes_at) WHERE invoice_id IS NULL;
-- Issued periods whose usage may still change: the billing run checks them.
-- used by: list_ended_chain_periods
CREATE INDEX billing_periods_unsettled_idx ON billing_periods (id)
    WHERE NOT settled AND invoice_id IS NOT NULL;
-- used by: FK billing_periods_subscription_fkey
CREATE INDEX billing_periods_subscription_idx ON billing_periods (subscription_id, account_id);
-- Indexes that only serve a foreign key lead with its column, not account_id: led by
-- account_id they would compete with the primary key for lookups by id.
-- No named query reads periods by plan: this serves the foreign key.
-- used by: FK billing_periods_base_plan_id_fkey
CREATE INDEX billing_periods_base_plan_idx ON billing_periods (base_plan_id);

-- The current period of every live subscription; periods of invoices made before.
INSERT INTO billing_periods (account_id, chain_id, subscription_id, base_plan_id, period_start,
                             period_end, closes_at, trial_end)
SELECT s.account_id, s.chain_id, s.id, s.plan_id, s.current_period_start, s.current_period_end,
       s.current_period_end, s.trial_end
FROM subscriptions s
WHERE s.status IN ('trialing', 'active', 'past_due')
UNION ALL
SELECT i.account_id, s.chain_id, s.id, s.plan_id, i.period_start, i.period_end, i.period_end,
       NULL
FROM invoices i
JOIN subscriptions s ON s.account_id = i.account_id AND s.id = i.subscription_id
WHERE NOT (s.status IN ('trialing', 'active', 'past_due')
           AND s.current_period_start = i.period_start)
ON CONFLICT ON CONSTRAINT billing_periods_chain_start_key DO NOTHING;

-- -- invoices ---------------------------------------------------------------------------------------
ALTER TABLE invoices
    ADD COLUMN chain_id bigint,
    ADD COLUMN billing_period_id bigint,
    ADD COLUMN credit_applied_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN credited_pre_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN credited_post_minor bigint NOT NULL DEFAULT 0;
-- amount_paid_minor is what payments settled of this invoice; an overpayment
-- beyond it is customer credit (as the ledger always booked it).
UPDATE invoices SET amount_paid_minor = total_minor WHERE amount_paid_minor > total_minor;
UPDATE invoices i SET chain_id = s.chain_id
FROM subscriptions s
WHERE s.account_id = i.account_id AND s.id = i.subscription_id;
UPDATE invoices i SET billing_period_id = p.id
FROM billing_periods p
WHERE p.account_id = i.account_id AND p.chain_id = i.chain_id AND p.period_start = i.period_start;
UPDATE billing_periods p SET invoice_id = i.id, legacy = true, settled = true
FROM invoices i
WHERE i.account_id = p.account_id AND i.billing_period_id = p.id;
ALTER TABLE invoices ADD COLUMN amount_due_minor bigint NOT NULL
    GENERATED ALWAYS AS (total_minor - credit_applied_minor - credited_pre_minor
                         - amount_paid_minor) STORED;

ALTER TABLE invoices DROP CONSTRAINT invoices_subscription_period_key;
-- indexes:
--   invoices_billing_period_key used by get_invoice_by_period,
--     insert_invoice (ON CONFLICT arbiter), FK invoices_billing_period_fkey
ALTER TABLE invoices DROP CONSTRAINT invoices_paid_check;
ALTER TABLE invoices
    ADD CONSTRAINT invoices_chain_fkey FOREIGN KEY (account_id, chain_id)
        REFERENCES subscriptions (account_id, id),
    ADD CONSTRAINT invoices_billing_period_fkey FOREIGN KEY (account_id, billing_period_id)
        REFERENCES billing_periods (account_id, id),
    -- A period is billed by one invoice.
    ADD CONSTRAINT invoices_billing_period_key UNIQUE (billing_period_id, account_id),
    ADD CONSTRAINT invoices_credit_applied_check CHECK (credit_applied_minor >= 0),
    ADD CONSTRAINT invoices_credited_check CHECK (
        credited_pre_minor >= 0 AND credited_post_minor >= 0
        -- Credit notes never sum above the invoice's total,
        AND credited_pre_minor + credited_post_minor <= total_minor
        -- and never give back more than was paid or credited.
        AND credited_post_minor <= amount_paid_minor + credit_applied_minor),
    ADD CONSTRAINT invoices_amount_due_check CHECK (amount_due_minor >= 0),
    ADD CONSTRAINT invoices_paid_check CHECK (
        (status = 'paid') <= (paid_at IS NOT NULL AND amount_due_minor = 0)),
    ADD CONSTRAINT invoices_open_due_check CHECK ((status = 'open') <= (amount_due_minor > 0));
ALTER TABLE billing_periods ADD CONSTRAINT billing_periods_invoice_fkey
    FOREIGN KEY (account_id, invoice_id) REFERENCES invoices (account_id, id);
-- At most one draft per chain: a chain's invoices are made and finalised in order.
-- used by: insert_invoice (uniqueness), get_chain_draft
CREATE UNIQUE INDEX invoices_one_draft_per_chain ON invoices (account_id, chain_id)
    WHERE status = 'draft';
-- used by: FK invoices_subscription_fkey
CREATE INDEX invoices_subscription_idx ON invoices (subscription_id, account_id);
-- No named query reads a chain's invoices but its draft: this serves the foreign key.
-- used by: FK invoices_chain_fkey
CREATE INDEX invoices_chain_idx ON invoices (chain_id, account_id);
-- The billing run takes the drafts in id order.
-- used by: list_drafts
CREATE INDEX invoices_drafts_idx ON invoices (id) WHERE status = 'draft';

-- -- invoice lines ----------------------------------------------------------------------------------
ALTER TABLE invoice_lines
    ADD COLUMN billing_period_id bigint,
    ADD COLUMN metered_quantity numeric(20, 6),
    ADD COLUMN pending_item_id bigint;
UPDATE invoice_lines l SET billing_period_id = i.billing_period_id
FROM invoices i
WHERE i.account_id = l.account_id AND i.id = l.invoice_id AND l.kind IN ('subscription', 'usage');
ALTER TABLE invoice_lines
    ADD CONSTRAINT invoice_lines_billing_period_fkey FOREIGN KEY (account_id, billing_period_id)
        REFERENCES billing_periods (account_id, id),
    -- A line that counts usage names the period and meter it bills.
    ADD CONSTRAINT invoice_lines_metered_check CHECK (
        (metered_quantity IS NOT NULL) <= (meter_code IS NOT NULL AND billing_period_id IS NOT NULL));
-- What was billed per period and meter: the sum of its lines.
-- used by: list_billed_usage, FK invoice_lines_billing_period_fkey
CREATE INDEX invoice_lines_billed_idx ON invoice_lines (billing_period_id, account_id, meter_code)
    INCLUDE (metered_quantity, amount_minor);

-- -- pending invoice items ---------------------------------------------------------------------------
-- indexes:
--   pending_invoice_items_pkey used by attach_pending_items (the primary key)
CREATE TABLE pending_invoice_items (
    account_id       bigint NOT NULL REFERENCES accounts (id),
    id               bigint GENERATED ALWAYS AS IDENTITY,
    chain_id         bigint NOT NULL,
    -- The subscription whose change made the item.
    subscription_id  bigint NOT NULL,
    kind             text NOT NULL CONSTRAINT pending_invoice_items_kind_check
                         CHECK (kind IN ('proration')),
    description      text NOT NULL CONSTRAINT pending_invoice_items_description_check
                         CHECK (length(description) BETWEEN 1 AND 500),
    amount_minor     bigint NOT NULL,
    currency         text NOT NULL CONSTRAINT pending_invoice_items_currency_check
                         CHECK (currency ~ '^[A-Z]{3}$'),
    service_start    timestamptz NOT NULL,
    service_end      timestamptz NOT NULL,
    invoice_id       bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pending_invoice_items_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT pending_invoice_items_chain_fkey FOREIGN KEY (account_id, chain_id)
        REFERENCES subscriptions (account_id, id),
    CONSTRAINT pending_invoice_items_subscription_fkey FOREIGN KEY (account_id, subscription_id)
        REFERENCES subscriptions (account_id, id),
    CONSTRAINT pending_invoice_items_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    CONSTRAINT pending_invoice_items_service_check CHECK (service_end >= service_start)
);
-- used by: attach_pending_items, list_pending_items, FK pending_invoice_items_chain_fkey
CREATE INDEX pending_invoice_items_chain_idx ON pending_invoice_items (account_id, chain_id, id);
-- used by: detach_pending_items, FK pending_invoice_items_invoice_fkey
CREATE INDEX pending_invoice_items_invoice_idx ON pending_invoice_items (account_id, invoice_id)
    WHERE invoice_id IS NOT NULL;
-- No named query reads items by subscription: this serves the foreign key.
-- used by: FK pending_invoice_items_subscription_fkey
CREATE INDEX pending_invoice_items_subscription_idx
    ON pending_invoice_items (subscription_id, account_id);
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_pending_item_fkey
    FOREIGN KEY (account_id, pending_item_id) REFERENCES pending_invoice_items (account_id, id);
-- A pending item is billed by one line.
-- used by: FK invoice_lines_pending_item_fkey (uniqueness: an item is on one line)
CREATE UNIQUE INDEX invoice_lines_pending_item_key ON invoice_lines (account_id, pending_item_id)
    WHERE pending_item_id IS NOT NULL;

-- -- payments, credit notes, refunds ----------------------------------------------------------------
ALTER TABLE payments
    ADD COLUMN applied_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN refunded_minor bigint NOT NULL DEFAULT 0;
-- What each payment settled of its invoice: the first payments first.
UPDATE payments p SET applied_minor = greatest(0, least(p.amount_minor, i.total_minor - coalesce((
    SELECT sum(q.amount_minor) FROM payments q
    WHERE q.account_id = p.account_id AND q.invoice_id = p.invoice_id AND q.id < p.id
      AND q.status IN ('succeeded', 'refunded')), 0)))
FROM invoices i
WHERE i.account_id = p.account_id AND i.id = p.invoice_id AND p.status IN ('succeeded', 'refunded');
ALTER TABLE payments ADD CONSTRAINT payments_applied_check
    CHECK (refunded_minor >= 0 AND refunded_minor <= applied_minor
           AND applied_minor <= amount_minor);

-- indexes:
--   credit_notes_pkey used by insert_credit_note (the primary key)
--   credit_notes_idempotency_key used by get_credit_note_by_key,
--     insert_credit_note (ON CONFLICT arbiter)
CREATE TABLE credit_notes (
    account_id       bigint NOT NULL REFERENCES accounts (id),
    id               bigint GENERATED ALWAYS AS IDENTITY,
    invoice_id       bigint NOT NULL,
    amount_minor     bigint NOT NULL CONSTRAINT credit_notes_amount_check CHECK (amount_minor > 0),
    -- Reduces what is due (pre) / gives back what was paid (post).
    pre_minor        bigint NOT NULL CONSTRAINT credit_notes_pre_check CHECK (pre_minor >= 0),
    post_minor       bigint NOT NULL CONSTRAINT credit_notes_post_check CHECK (post_minor >= 0),
    refund           boolean NOT NULL,
    reason           text NOT NULL CONSTRAINT credit_notes_reason_check
                         CHECK (length(reason) BETWEEN 1 AND 500),
    idempotency_key  text NOT NULL CONSTRAINT credit_notes_idempotency_key_check
                         CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_notes_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT credit_notes_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT credit_notes_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    CONSTRAINT credit_notes_split_check CHECK (pre_minor + post_minor = amount_minor)
);
-- used by: list_credit_notes, FK credit_notes_invoice_fkey
CREATE INDEX credit_notes_invoice_idx ON credit_notes (account_id, invoice_id);

-- indexes:
--   refunds_pkey used by get_refund, mark_refund_succeeded
--   refunds_provider_refund_key used by mark_refund_succeeded (uniqueness: a provider's
--     refund is recorded once)
CREATE TABLE refunds (
    account_id          bigint NOT NULL REFERENCES accounts (id),
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    invoice_id          bigint NOT NULL,
    credit_note_id      bigint NOT NULL,
    payment_id          bigint NOT NULL,
    amount_minor        bigint NOT NULL CONSTRAINT refunds_amount_check CHECK (amount_minor > 0),
    currency            text NOT NULL CONSTRAINT refunds_currency_check
                            CHECK (currency ~ '^[A-Z]{3}$'),
    status              text NOT NULL DEFAULT 'pending' CONSTRAINT refunds_status_check
                            CHECK (status IN ('pending', 'succeeded')),
    provider            text NOT NULL,
    provider_refund_id  text CONSTRAINT refunds_provider_refund_id_check
                            CHECK (length(provider_refund_id) BETWEEN 1 AND 200),
    created_at          timestamptz NOT NULL DEFAULT now(),
    succeeded_at        timestamptz,
    CONSTRAINT refunds_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT refunds_provider_refund_key UNIQUE (account_id, provider, provider_refund_id),
    CONSTRAINT refunds_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    CONSTRAINT refunds_credit_note_fkey FOREIGN KEY (account_id, credit_note_id)
        REFERENCES credit_notes (account_id, id),
    CONSTRAINT refunds_payment_fkey FOREIGN KEY (account_id, payment_id)
        REFERENCES payments (account_id, id),
    CONSTRAINT refunds_succeeded_check CHECK (
        (status = 'succeeded') = (succeeded_at IS NOT NULL AND provider_refund_id IS NOT NULL))
);
-- used by: list_credit_note_refunds, FK refunds_credit_note_fkey
CREATE INDEX refunds_credit_note_idx ON refunds (account_id, credit_note_id);
-- No named query reads refunds by invoice or payment: these serve the foreign keys.
-- used by: FK refunds_invoice_fkey
CREATE INDEX refunds_invoice_idx ON refunds (invoice_id, account_id);
-- used by: FK refunds_payment_fkey
CREATE INDEX refunds_payment_idx ON refunds (payment_id, account_id);

-- -- customer credit ------------------------------------------------------------------------------
-- indexes:
--   credit_grants_pkey used by apply_credit (the primary key)
CREATE TABLE credit_grants (
    account_id      bigint NOT NULL REFERENCES accounts (id),
    id              bigint GENERATED ALWAYS AS IDENTITY,
    currency        text NOT NULL CONSTRAINT credit_grants_currency_check
                        CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor    bigint NOT NULL CONSTRAINT credit_grants_amount_check CHECK (amount_minor > 0),
    remaining_minor bigint NOT NULL,
    source          text NOT NULL CONSTRAINT credit_grants_source_check
                        CHECK (source IN ('overpayment', 'credit_note', 'carryover', 'void',
                                          'migrated')),
    invoice_id      bigint,
    payment_id      bigint,
    credit_note_id  bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_grants_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT credit_grants_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    CONSTRAINT credit_grants_payment_fkey FOREIGN KEY (account_id, payment_id)
        REFERENCES payments (account_id, id),
    CONSTRAINT credit_grants_credit_note_fkey FOREIGN KEY (account_id, credit_note_id)
        REFERENCES credit_notes (account_id, id),
    CONSTRAINT credit_grants_remaining_check
        CHECK (remaining_minor >= 0 AND remaining_minor <= amount_minor)
);
-- Credit is applied oldest first.
-- used by: apply_credit
CREATE INDEX credit_grants_open_idx ON credit_grants (account_id, currency, id)
    WHERE remaining_minor > 0;
-- No named query reads grants by invoice, payment or credit note: these serve the foreign keys.
-- used by: FK credit_grants_invoice_fkey
CREATE INDEX credit_grants_invoice_idx ON credit_grants (account_id, invoice_id)
    WHERE invoice_id IS NOT NULL;
-- used by: FK credit_grants_payment_fkey
CREATE INDEX credit_grants_payment_idx ON credit_grants (account_id, payment_id)
    WHERE payment_id IS NOT NULL;
-- used by: FK credit_grants_credit_note_fkey
CREATE INDEX credit_grants_credit_note_idx ON credit_grants (account_id, credit_note_id)
    WHERE credit_note_id IS NOT NULL;

-- indexes:
--   credit_applications_pkey used by apply_credit (the primary key)
CREATE TABLE credit_applications (
    account_id    bigint NOT NULL REFERENCES accounts (id),
    id            bigint GENERATED ALWAYS AS IDENTITY,
    grant_id      bigint NOT NULL,
    invoice_id    bigint NOT NULL,
    amount_minor  bigint NOT NULL CONSTRAINT credit_applications_amount_check
                      CHECK (amount_minor > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credit_applications_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT credit_applications_grant_fkey FOREIGN KEY (account_id, grant_id)
        REFERENCES credit_grants (account_id, id),
    CONSTRAINT credit_applications_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id)
);
-- No named query reads applications by grant or invoice: these serve the foreign keys.
-- used by: FK credit_applications_grant_fkey
CREATE INDEX credit_applications_grant_idx ON credit_applications (grant_id, account_id);
-- used by: FK credit_applications_invoice_fkey
CREATE INDEX credit_applications_invoice_idx ON credit_applications (invoice_id, account_id);

-- Credit already in the ledger becomes one grant per account and currency, so
-- that grants minus applications equals the ledger's customer credit.
INSERT INTO credit_grants (account_id, currency, amount_minor, remaining_minor, source)
SELECT account_id, currency, -sum(amount_minor), -sum(amount_minor), 'migrated'
FROM ledger_entries
WHERE ledger_account = 'customer_credit'
GROUP BY account_id, currency
HAVING sum(amount_minor) < 0;

-- -- the ledger ---------------------------------------------------------------------------------------
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_ledger_account_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_ledger_account_check
    CHECK (ledger_account IN ('receivable', 'revenue', 'cash', 'customer_credit', 'tax',
                              'bad_debt', 'refunds_payable')) NOT VALID;
ALTER TABLE ledger_entries VALIDATE CONSTRAINT ledger_entries_ledger_account_check;
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check
    CHECK (kind IN ('invoice_finalized', 'payment', 'invoice_voided', 'credit', 'refund',
                    'write_off', 'adjustment', 'credit_note')) NOT VALID;
ALTER TABLE ledger_transactions VALIDATE CONSTRAINT ledger_transactions_kind_check;
