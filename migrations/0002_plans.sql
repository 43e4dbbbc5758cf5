-- depends: 0001_accounts_users
-- Meters and versioned plans: shared reference tables (no account_id), read by every tenant.
--
-- A plan is a price book identified by (code, version). A published version is
-- never edited: plans_published_immutable refuses any change to it except
-- archiving, and plan_meters of a non-draft plan cannot change at all.

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   meters_pkey used by usage_target_exists, record_usage_event, find_known_meters,
--     insert_staged_usage
CREATE TABLE meters (
    code         text PRIMARY KEY CONSTRAINT meters_code_check CHECK (code ~ '^[a-z][a-z0-9_]{0,62}$'),
    name         text NOT NULL CONSTRAINT meters_name_check CHECK (length(name) BETWEEN 1 AND 200),
    unit         text NOT NULL CONSTRAINT meters_unit_check CHECK (length(unit) BETWEEN 1 AND 50),
    aggregation  text NOT NULL CONSTRAINT meters_aggregation_check
                     CHECK (aggregation IN ('sum', 'count', 'max')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- indexes:
--   plans_pkey used by get_plan_row, get_plan, publish_plan, archive_plan, update_draft_plan,
--     list_public_plans, start_subscription, insert_upgrade, schedule_downgrade,
--     compute_proration, renew_due_subscriptions
--   plans_code_version_key used by create_plan (the code's highest version, and uniqueness)
CREATE TABLE plans (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code              text NOT NULL CONSTRAINT plans_code_check CHECK (code ~ '^[a-z][a-z0-9_-]{0,62}$'),
    version           bigint NOT NULL CONSTRAINT plans_version_check CHECK (version >= 1),
    name              text NOT NULL CONSTRAINT plans_name_check CHECK (length(name) BETWEEN 1 AND 200),
    status            text NOT NULL DEFAULT 'draft' CONSTRAINT plans_status_check
                          CHECK (status IN ('draft', 'published', 'archived')),
    billing_interval  text NOT NULL CONSTRAINT plans_billing_interval_check
                          CHECK (billing_interval IN ('day', 'week', 'month', 'year')),
    interval_count    bigint NOT NULL DEFAULT 1 CONSTRAINT plans_interval_count_check
                          CHECK (interval_count BETWEEN 1 AND 365),
    base_price_minor  bigint NOT NULL CONSTRAINT plans_base_price_check CHECK (base_price_minor >= 0),
    currency          text NOT NULL CONSTRAINT plans_currency_check CHECK (currency ~ '^[A-Z]{3}$'),
    trial_days        bigint NOT NULL DEFAULT 0 CONSTRAINT plans_trial_days_check
                          CHECK (trial_days BETWEEN 0 AND 365),
    is_public         boolean NOT NULL DEFAULT true,
    published_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT plans_code_version_key UNIQUE (code, version),
    CONSTRAINT plans_published_at_check CHECK ((status = 'draft') = (published_at IS NULL))
);

-- The current published version of a code. (Public plans are listed in id
-- order, through plans_pkey.)
-- used by: get_current_plan
CREATE INDEX plans_published_idx ON plans (code, version DESC) WHERE status = 'published';

-- Included quota and overage price of one meter in one plan version.
-- indexes:
--   plan_meters_pkey used by get_plan, get_current_plan, list_public_plans, consume_quota,
--     reserve_quota, get_quota_states, open_quota_counter, add_plan_meters (uniqueness)
CREATE TABLE plan_meters (
    plan_id                   bigint NOT NULL REFERENCES plans (id),
    meter_code                text NOT NULL REFERENCES meters (code),
    included_quantity         numeric(20, 6) NOT NULL DEFAULT 0
                                  CONSTRAINT plan_meters_included_check CHECK (included_quantity >= 0),
    limit_kind                text NOT NULL DEFAULT 'soft' CONSTRAINT plan_meters_limit_kind_check
                                  CHECK (limit_kind IN ('hard', 'soft', 'none')),
    -- Price of one unit above the included quantity, in minor units; fractions
    -- allowed (0.05 cents per API call), rounded once per invoice line.
    overage_unit_price_minor  numeric(20, 6) NOT NULL DEFAULT 0
                                  CONSTRAINT plan_meters_overage_price_check
                                  CHECK (overage_unit_price_minor >= 0),
    CONSTRAINT plan_meters_pkey PRIMARY KEY (plan_id, meter_code)
);

-- The foreign key's index (deleting a meter or changing its code finds its
-- plan_meters here). Queries reach plan_meters by plan (plan_meters_pkey); on a
-- table this small the planner may filter one meter here instead.
-- used by: FK plan_meters_meter_code_fkey, open_quota_counter (small-table plans)
CREATE INDEX plan_meters_meter_code_idx ON plan_meters (meter_code);

CREATE FUNCTION plans_guard_published() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'draft' THEN
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    -- Archiving a published version is the only change allowed after publishing.
    IF OLD.status = 'published' AND NEW.status = 'archived'
       AND (NEW.id, NEW.code, NEW.version, NEW.name, NEW.billing_interval, NEW.interval_count,
            NEW.base_price_minor, NEW.currency, NEW.trial_days, NEW.is_public, NEW.published_at,
            NEW.created_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.code, OLD.version, OLD.name, OLD.billing_interval, OLD.interval_count,
            OLD.base_price_minor, OLD.currency, OLD.trial_days, OLD.is_public, OLD.published_at,
            OLD.created_at)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'plan % version % is %: published versions are immutable',
        OLD.code, OLD.version, OLD.status
        USING ERRCODE = 'check_violation', CONSTRAINT = 'plans_published_immutable',
              TABLE = 'plans';
END
$$;

CREATE TRIGGER plans_published_immutable
    BEFORE UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION plans_guard_published();

CREATE FUNCTION plan_meters_guard_published() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    plan_id bigint;
    plan_status text;
BEGIN
    -- Both the plan a row leaves and the plan it joins must be drafts.
    FOREACH plan_id IN ARRAY ARRAY[
        CASE WHEN TG_OP <> 'INSERT' THEN OLD.plan_id END,
        CASE WHEN TG_OP <> 'DELETE' THEN NEW.plan_id END]
    LOOP
        CONTINUE WHEN plan_id IS NULL;
        SELECT p.status INTO plan_status FROM plans p WHERE p.id = plan_id FOR SHARE;
        IF plan_status IS DISTINCT FROM 'draft' THEN
            RAISE EXCEPTION 'plan % is %: its meters cannot change', plan_id, plan_status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'plans_published_immutable',
                      TABLE = 'plan_meters';
        END IF;
    END LOOP;
    RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER plan_meters_published_immutable
    BEFORE INSERT OR UPDATE OR DELETE ON plan_meters
    FOR EACH ROW EXECUTE FUNCTION plan_meters_guard_published();
