-- Plans: versioned price books (code + version) and their meters; a shared
-- reference table, so no account_id. A published version is never edited: its
-- seals (plan_seals, plan_meter_seals: migration 0021) refuse any change by
-- foreign key; only a draft's fields change.

-- name: create_plan :one
-- Insert a draft plan as the next version of :code (the highest version of
-- the code plus one, or 1). Two concurrent creates of one code collide on
-- plans_code_version_key: one of them fails and may retry. The insert is a
-- CTE under a SELECT: Citus cannot plan a top-level INSERT ... SELECT into
-- the reference table with parameters.
WITH created AS (
    INSERT INTO plans (code, version, name, billing_interval, interval_count, base_price_minor,
                       currency, trial_days, is_public)
    SELECT :code, coalesce(max(p.version), 0) + 1, :name, :billing_interval, :interval_count,
           :base_price_minor, :currency, :trial_days, :is_public
    FROM plans p
    WHERE p.code = :code
    RETURNING id, code, version, name, status, billing_interval, interval_count,
              base_price_minor, currency, trial_days, is_public, published_at, created_at
)
SELECT id, code, version, name, status, billing_interval, interval_count, base_price_minor,
       currency, trial_days, is_public, published_at, created_at
FROM created;

-- name: add_plan_meters :many
-- Attach meters to a draft plan, one row per element of the parallel arrays.
-- plan_seal_state is the plan's (the epoch while a draft): a row for a
-- published version would need a meter seal, which only publishing writes.
INSERT INTO plan_meters (plan_id, meter_code, included_quantity, limit_kind,
                         overage_unit_price_minor, plan_seal_state)
SELECT :plan_id, m.meter_code, m.included_quantity, m.limit_kind, m.overage_unit_price_minor,
       (SELECT p.seal_state FROM plans p WHERE p.id = :plan_id)
FROM unnest(:meter_codes::text[], :included_quantities::numeric[], :limit_kinds::text[],
            :overage_unit_prices_minor::numeric[])
     AS m (meter_code, included_quantity, limit_kind, overage_unit_price_minor)
RETURNING plan_id, meter_code, included_quantity, limit_kind, overage_unit_price_minor;

-- name: publish_plan :one
-- draft -> published, stamping published_at, and seal the version and its
-- meters in the same statement (plan_seals, plan_meter_seals: from then on
-- their foreign keys refuse any change); no row unless the plan is a draft.
WITH published AS (
    UPDATE plans
    SET status = 'published', published_at = now()
    WHERE id = :id AND status = 'draft'
    RETURNING id, code, version, name, status, billing_interval, interval_count,
              base_price_minor, currency, trial_days, is_public, published_at, created_at
), sealed AS (
    INSERT INTO plan_seals (plan_id, code, version, name, billing_interval, interval_count,
                            base_price_minor, currency, trial_days, is_public, published_at,
                            created_at)
    SELECT id, code, version, name, billing_interval, interval_count, base_price_minor,
           currency, trial_days, is_public, published_at, created_at
    FROM published
), meters_sealed AS (
    INSERT INTO plan_meter_seals (plan_id, meter_code, included_quantity, limit_kind,
                                  overage_unit_price_minor, published_at)
    SELECT m.plan_id, m.meter_code, m.included_quantity, m.limit_kind,
           m.overage_unit_price_minor, p.published_at
    FROM plan_meters m
    JOIN published p ON p.id = m.plan_id
)
SELECT id, code, version, name, status, billing_interval, interval_count, base_price_minor,
       currency, trial_days, is_public, published_at, created_at
FROM published;

-- name: archive_plan :one
-- published -> archived (no new subscriptions), for good: the archival row's
-- foreign key refuses any later change of status. No row unless the plan is
-- published.
WITH archived AS (
    UPDATE plans
    SET status = 'archived'
    WHERE id = :id AND status = 'published'
    RETURNING id, code, version, name, status, billing_interval, interval_count,
              base_price_minor, currency, trial_days, is_public, published_at, created_at
), recorded AS (
    INSERT INTO plan_archivals (plan_id) SELECT id FROM archived
)
SELECT id, code, version, name, status, billing_interval, interval_count, base_price_minor,
       currency, trial_days, is_public, published_at, created_at
FROM archived;

-- name: update_draft_plan :one
-- Change any subset of a draft's fields (set_<field> says which); no row
-- unless the plan is a draft.
UPDATE plans
SET name = CASE WHEN :set_name THEN :name ELSE name END,
    billing_interval = CASE WHEN :set_billing_interval THEN :billing_interval
                            ELSE billing_interval END,
    interval_count = CASE WHEN :set_interval_count THEN :interval_count ELSE interval_count END,
    base_price_minor = CASE WHEN :set_base_price_minor THEN :base_price_minor
                            ELSE base_price_minor END,
    currency = CASE WHEN :set_currency THEN :currency ELSE currency END,
    trial_days = CASE WHEN :set_trial_days THEN :trial_days ELSE trial_days END,
    is_public = CASE WHEN :set_is_public THEN :is_public ELSE is_public END
WHERE id = :id AND status = 'draft'
RETURNING id, code, version, name, status, billing_interval, interval_count, base_price_minor,
          currency, trial_days, is_public, published_at, created_at;

-- name: get_plan_row :one
-- One plan by id, without its meters (state checks read this).
SELECT id, code, version, name, status, billing_interval, interval_count, base_price_minor,
       currency, trial_days, is_public, published_at, created_at
FROM plans
WHERE id = :id;

-- name: get_plan :one
-- One plan by id, any status, with its meters in meter-code order (numerics
-- travel as JSON strings so that no digit is lost).
SELECT p.id, p.code, p.version, p.name, p.status, p.billing_interval, p.interval_count,
       p.base_price_minor, p.currency, p.trial_days, p.is_public, p.published_at, p.created_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'plan_id', pm.plan_id,
                   'meter_code', pm.meter_code,
                   'included_quantity', pm.included_quantity::text,
                   'limit_kind', pm.limit_kind,
                   'overage_unit_price_minor', pm.overage_unit_price_minor::text)
                   ORDER BY pm.meter_code), '[]'::jsonb)
        FROM plan_meters pm
        WHERE pm.plan_id = p.id) AS meters
FROM plans p
WHERE p.id = :id;

-- name: get_current_plan :one
-- The highest published version of :code with its meters (served by
-- plans_published_idx); no row when no version of the code is published.
SELECT p.id, p.code, p.version, p.name, p.status, p.billing_interval, p.interval_count,
       p.base_price_minor, p.currency, p.trial_days, p.is_public, p.published_at, p.created_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'plan_id', pm.plan_id,
                   'meter_code', pm.meter_code,
                   'included_quantity', pm.included_quantity::text,
                   'limit_kind', pm.limit_kind,
                   'overage_unit_price_minor', pm.overage_unit_price_minor::text)
                   ORDER BY pm.meter_code), '[]'::jsonb)
        FROM plan_meters pm
        WHERE pm.plan_id = p.id) AS meters
FROM plans p
WHERE p.code = :code AND p.status = 'published'
ORDER BY p.version DESC
LIMIT 1;

-- name: list_public_plans :many
-- A page of public published plan versions with their meters, in id order,
-- after the keyset cursor :after_id.
SELECT p.id, p.code, p.version, p.name, p.status, p.billing_interval, p.interval_count,
       p.base_price_minor, p.currency, p.trial_days, p.is_public, p.published_at, p.created_at,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'plan_id', pm.plan_id,
                   'meter_code', pm.meter_code,
                   'included_quantity', pm.included_quantity::text,
                   'limit_kind', pm.limit_kind,
                   'overage_unit_price_minor', pm.overage_unit_price_minor::text)
                   ORDER BY pm.meter_code), '[]'::jsonb)
        FROM plan_meters pm
        WHERE pm.plan_id = p.id) AS meters
FROM plans p
WHERE p.status = 'published' AND p.is_public AND p.id > :after_id
ORDER BY p.id
LIMIT :limit;

-- name: list_plan_subscriber_cache_keys :many
-- The accounts with a live subscription on the plan and their API keys' secret
-- hashes: whose cached subscription and auth views show the plan.
SELECT s.account_id, k.secret_hash
FROM subscriptions s
LEFT JOIN api_keys k ON k.account_id = s.account_id
WHERE s.plan_id = :plan_id AND s.status IN ('trialing', 'active', 'past_due');
