-- The seals give way to the triggers of 0002 again.
-- squawk-ignore-file ban-drop-table, ban-drop-column, ban-drop-constraint, require-concurrent-index-deletion
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

ALTER TABLE plan_meters
    DROP CONSTRAINT plan_meters_seal_fkey,
    DROP CONSTRAINT plan_meters_plan_seal_fkey;
ALTER TABLE plans
    DROP CONSTRAINT plans_archival_fkey,
    DROP CONSTRAINT plans_seal_fkey;
DROP TABLE plan_meter_seals;
DROP INDEX plan_meters_plan_seal_idx;
DROP TABLE plan_archivals;
DROP TABLE plan_seals;
ALTER TABLE plan_meters
    DROP CONSTRAINT plan_meters_sealed_fields_key,
    DROP COLUMN seal_ref,
    DROP COLUMN plan_seal_state;
ALTER TABLE plans
    DROP CONSTRAINT plans_id_status_key,
    DROP CONSTRAINT plans_seal_state_key,
    DROP CONSTRAINT plans_sealed_fields_key,
    DROP COLUMN archived_status,
    DROP COLUMN seal_state;

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
