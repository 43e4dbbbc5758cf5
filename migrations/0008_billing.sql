-- depends: 0003_subscriptions 0004_usage
-- Billing: invoices and their lines, payments, and a double-entry ledger.
--
-- Invoices go draft -> open -> paid | void | uncollectible; the number is
-- assigned when a draft is finalised, from invoice_number_counters (one row
-- per year, gap-free: the counter is bumped in the finalising transaction).
-- The ledger is append-only and every transaction's entries sum to zero per
-- currency, checked at commit (ledger_entries_balanced).

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   invoice_number_counters_pkey used by finalize_invoice (ON CONFLICT arbiter)
CREATE TABLE invoice_number_counters (
    year         bigint PRIMARY KEY CONSTRAINT invoice_number_counters_year_check
                     CHECK (year BETWEEN 2000 AND 9999),
    last_number  bigint NOT NULL DEFAULT 0 CONSTRAINT invoice_number_counters_last_check
                     CHECK (last_number >= 0)
);

-- indexes:
--   invoices_pkey used by get_invoice, lock_invoice, list_invoices, finalize_invoice,
--     void_invoice, mark_invoice_uncollectible, apply_payment, claim_drafts
--   invoices_number_key used by finalize_invoice (uniqueness of the number it assigns)
CREATE TABLE invoices (
    account_id         bigint NOT NULL REFERENCES accounts (id),
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    subscription_id    bigint,
    -- Unique per account by constraint; unique across accounts by construction
    -- (one counter per year), so the tenant rule holds.
    number             text CONSTRAINT invoices_number_check CHECK (number ~ '^[0-9]{4}-[0-9]{6,}$'),
    status             text NOT NULL DEFAULT 'draft' CONSTRAINT invoices_status_check
                           CHECK (status IN ('draft', 'open', 'paid', 'void', 'uncollectible')),
    currency           text NOT NULL CONSTRAINT invoices_currency_check
                           CHECK (currency ~ '^[A-Z]{3}$'),
    period_start       timestamptz NOT NULL,
    period_end         timestamptz NOT NULL,
    subtotal_minor     bigint NOT NULL DEFAULT 0,
    tax_minor          bigint NOT NULL DEFAULT 0 CONSTRAINT invoices_tax_check CHECK (tax_minor >= 0),
    total_minor        bigint NOT NULL DEFAULT 0 CONSTRAINT invoices_total_check CHECK (total_minor >= 0),
    amount_paid_minor  bigint NOT NULL DEFAULT 0 CONSTRAINT invoices_amount_paid_check
                           CHECK (amount_paid_minor >= 0),
    finalized_at       timestamptz,
    due_at             timestamptz,
    paid_at            timestamptz,
    voided_at          timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invoices_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT invoices_subscription_fkey FOREIGN KEY (account_id, subscription_id)
        REFERENCES subscriptions (account_id, id),
    -- Generating the invoice of a subscription period twice yields one invoice.
    -- (Dropped by 0016_billing_cycle: a billing period has one invoice instead.)
    CONSTRAINT invoices_subscription_period_key UNIQUE (account_id, subscription_id, period_start),
    CONSTRAINT invoices_number_key UNIQUE (account_id, number),
    CONSTRAINT invoices_period_check CHECK (period_end > period_start),
    CONSTRAINT invoices_total_sum_check CHECK (total_minor = subtotal_minor + tax_minor),
    CONSTRAINT invoices_number_assigned_check CHECK (
        (status = 'draft') = (number IS NULL) AND (number IS NULL) = (finalized_at IS NULL)),
    CONSTRAINT invoices_paid_check CHECK (
        (status = 'paid') <= (paid_at IS NOT NULL AND amount_paid_minor >= total_minor)),
    CONSTRAINT invoices_void_check CHECK ((status = 'void') = (voided_at IS NOT NULL))
);

-- Dropped by 0011_index_review: no named query reads invoices by created_at.
CREATE INDEX invoices_account_created_idx ON invoices (account_id, created_at, id);
-- Dropped by 0011_index_review: no named query reads open invoices by due_at.
CREATE INDEX invoices_open_due_idx ON invoices (due_at) WHERE status = 'open';
-- The monthly revenue report reads finalised invoices by time.
-- used by: get_monthly_revenue
CREATE INDEX invoices_finalized_idx ON invoices (finalized_at) WHERE finalized_at IS NOT NULL;

-- indexes:
--   invoice_lines_pkey used by insert_invoice_lines (the primary key; lines are read by invoice)
CREATE TABLE invoice_lines (
    account_id         bigint NOT NULL,
    id                 bigint GENERATED ALWAYS AS IDENTITY,
    invoice_id         bigint NOT NULL,
    kind               text NOT NULL CONSTRAINT invoice_lines_kind_check
                           CHECK (kind IN ('subscription', 'usage', 'proration', 'credit',
                                           'adjustment')),
    description        text NOT NULL CONSTRAINT invoice_lines_description_check
                           CHECK (length(description) BETWEEN 1 AND 500),
    meter_code         text REFERENCES meters (code),
    quantity           numeric(20, 6) NOT NULL DEFAULT 1 CONSTRAINT invoice_lines_quantity_check
                           CHECK (quantity >= 0),
    unit_amount_minor  numeric(20, 6) NOT NULL DEFAULT 0,
    amount_minor       bigint NOT NULL,
    period_start       timestamptz,
    period_end         timestamptz,
    CONSTRAINT invoice_lines_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT invoice_lines_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    CONSTRAINT invoice_lines_sign_check CHECK (
        CASE kind WHEN 'credit' THEN amount_minor <= 0
                  WHEN 'subscription' THEN amount_minor >= 0
                  WHEN 'usage' THEN amount_minor >= 0
                  ELSE true END),
    CONSTRAINT invoice_lines_usage_meter_check CHECK ((kind = 'usage') <= (meter_code IS NOT NULL)),
    CONSTRAINT invoice_lines_period_check CHECK (period_end > period_start)
);

-- used by: list_invoice_lines, FK invoice_lines_invoice_fkey
CREATE INDEX invoice_lines_invoice_idx ON invoice_lines (account_id, invoice_id);
-- No named query reads lines by meter: this serves the foreign key.
-- used by: FK invoice_lines_meter_code_fkey
CREATE INDEX invoice_lines_meter_code_idx ON invoice_lines (meter_code) WHERE meter_code IS NOT NULL;

-- indexes:
--   payments_pkey used by insert_payment (the primary key; target of
--     ledger_transactions_payment_fkey)
--   payments_provider_payment_key used by get_payment_by_provider_id,
--     insert_payment (ON CONFLICT arbiter)
CREATE TABLE payments (
    account_id           bigint NOT NULL REFERENCES accounts (id),
    id                   bigint GENERATED ALWAYS AS IDENTITY,
    invoice_id           bigint,
    provider             text NOT NULL CONSTRAINT payments_provider_check
                             CHECK (provider ~ '^[a-z][a-z0-9_]{0,31}$'),
    provider_payment_id  text NOT NULL CONSTRAINT payments_provider_payment_id_check
                             CHECK (length(provider_payment_id) BETWEEN 1 AND 200),
    amount_minor         bigint NOT NULL CONSTRAINT payments_amount_check CHECK (amount_minor > 0),
    currency             text NOT NULL CONSTRAINT payments_currency_check
                             CHECK (currency ~ '^[A-Z]{3}$'),
    status               text NOT NULL CONSTRAINT payments_status_check
                             CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded')),
    created_at           timestamptz NOT NULL DEFAULT now(),
    succeeded_at         timestamptz,
    CONSTRAINT payments_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT payments_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    -- Recording a provider's payment twice stores it once.
    CONSTRAINT payments_provider_payment_key UNIQUE (account_id, provider, provider_payment_id),
    CONSTRAINT payments_succeeded_check CHECK (
        (status IN ('succeeded', 'refunded')) <= (succeeded_at IS NOT NULL))
);

-- used by: list_invoice_payments, FK payments_invoice_fkey
CREATE INDEX payments_invoice_idx ON payments (account_id, invoice_id) WHERE invoice_id IS NOT NULL;

-- indexes:
--   ledger_transactions_pkey used by list_ledger_transactions (newest first, by id)
--   ledger_transactions_idempotency_key used by insert_ledger_transaction (uniqueness:
--     a second event with the same key is refused)
CREATE TABLE ledger_transactions (
    account_id       bigint NOT NULL REFERENCES accounts (id),
    id               bigint GENERATED ALWAYS AS IDENTITY,
    kind             text NOT NULL CONSTRAINT ledger_transactions_kind_check
                         CHECK (kind IN ('invoice_finalized', 'payment', 'invoice_voided',
                                         'credit', 'refund', 'write_off', 'adjustment')),
    -- Deterministic per financial event ("invoice:42:finalized"): writing it twice is refused.
    idempotency_key  text NOT NULL CONSTRAINT ledger_transactions_idempotency_key_check
                         CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    invoice_id       bigint,
    payment_id       bigint,
    description      text NOT NULL DEFAULT '' CONSTRAINT ledger_transactions_description_check
                         CHECK (length(description) <= 500),
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_transactions_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT ledger_transactions_idempotency_key UNIQUE (account_id, idempotency_key),
    CONSTRAINT ledger_transactions_invoice_fkey FOREIGN KEY (account_id, invoice_id)
        REFERENCES invoices (account_id, id),
    CONSTRAINT ledger_transactions_payment_fkey FOREIGN KEY (account_id, payment_id)
        REFERENCES payments (account_id, id)
);

-- Dropped by 0011_index_review: no named query reads an account's ledger by
-- time (list_ledger_transactions pages by id, through the primary key).
CREATE INDEX ledger_transactions_history_idx ON ledger_transactions (account_id, occurred_at, id);
-- No named query reads the ledger by invoice: this serves the foreign key.
-- used by: FK ledger_transactions_invoice_fkey
CREATE INDEX ledger_transactions_invoice_idx ON ledger_transactions (account_id, invoice_id)
    WHERE invoice_id IS NOT NULL;
-- No named query reads the ledger by payment: this serves the foreign key.
-- used by: FK ledger_transactions_payment_fkey
CREATE INDEX ledger_transactions_payment_idx ON ledger_transactions (account_id, payment_id)
    WHERE payment_id IS NOT NULL;

-- Debits positive, credits negative, in minor units.
-- indexes:
--   ledger_entries_pkey used by insert_ledger_transaction (the primary key; entries are read
--     by transaction)
CREATE TABLE ledger_entries (
    account_id      bigint NOT NULL,
    id              bigint GENERATED ALWAYS AS IDENTITY,
    transaction_id  bigint NOT NULL,
    ledger_account  text NOT NULL CONSTRAINT ledger_entries_ledger_account_check
                        CHECK (ledger_account IN ('receivable', 'revenue', 'cash',
                                                  'customer_credit', 'tax', 'bad_debt')),
    amount_minor    bigint NOT NULL CONSTRAINT ledger_entries_amount_check CHECK (amount_minor <> 0),
    currency        text NOT NULL CONSTRAINT ledger_entries_currency_check
                        CHECK (currency ~ '^[A-Z]{3}$'),
    CONSTRAINT ledger_entries_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT ledger_entries_transaction_fkey FOREIGN KEY (account_id, transaction_id)
        REFERENCES ledger_transactions (account_id, id)
);

-- Also read by the deferred trigger ledger_entries_balanced below.
-- used by: list_ledger_transactions, get_monthly_revenue,
--   insert_ledger_transaction (its balance check at commit), FK ledger_entries_transaction_fkey
CREATE INDEX ledger_entries_transaction_idx ON ledger_entries (account_id, transaction_id);
-- The account balance sums one ledger account of one tenant.
-- used by: get_balances
CREATE INDEX ledger_entries_balance_idx ON ledger_entries (account_id, ledger_account, currency)
    INCLUDE (amount_minor);

CREATE FUNCTION ledger_entries_check_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT currency, sum(amount_minor) AS total INTO unbalanced
    FROM ledger_entries
    WHERE account_id = NEW.account_id AND transaction_id = NEW.transaction_id
    GROUP BY currency
    HAVING sum(amount_minor) <> 0
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % of account % does not balance: % % off',
            NEW.transaction_id, NEW.account_id, unbalanced.total, unbalanced.currency
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_entries_balanced',
                  TABLE = 'ledger_entries';
    END IF;
    RETURN NULL;
END
$$;

-- Checked at commit, when every entry of the transaction is in.
CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_check_balanced();

CREATE TRIGGER ledger_transactions_append_only
    BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_change('ledger_transactions_append_only');
CREATE TRIGGER ledger_transactions_no_truncate
    BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('ledger_transactions_append_only');
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change('ledger_entries_append_only');
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change('ledger_entries_append_only');
