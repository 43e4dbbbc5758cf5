-- The queues keyed by id again, filled by the statement triggers of 0004 and 0005.
-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, adding-serial-primary-key-field, ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

ALTER TABLE analytics_rollup_queue
    DROP CONSTRAINT analytics_rollup_queue_pkey,
    ADD CONSTRAINT analytics_rollup_queue_pkey PRIMARY KEY (id);
ALTER TABLE usage_rollup_queue
    DROP CONSTRAINT usage_rollup_queue_pkey,
    ADD CONSTRAINT usage_rollup_queue_pkey PRIMARY KEY (id);

CREATE FUNCTION usage_events_queue_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
        SELECT DISTINCT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
        FROM changed_rows;
    ELSE
        INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
        SELECT DISTINCT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
        FROM new_rows;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_events_queue_rollup_insert
    AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_queue_rollup();
CREATE TRIGGER usage_events_queue_rollup_delete
    AFTER DELETE ON usage_events REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_queue_rollup();

CREATE FUNCTION analytics_events_queue_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO analytics_rollup_queue (account_id, day)
        SELECT DISTINCT account_id, (occurred_at AT TIME ZONE 'UTC')::date FROM changed_rows;
    ELSE
        INSERT INTO analytics_rollup_queue (account_id, day)
        SELECT DISTINCT account_id, (occurred_at AT TIME ZONE 'UTC')::date FROM new_rows;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER analytics_events_queue_rollup_insert
    AFTER INSERT ON analytics_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_events_queue_rollup();

