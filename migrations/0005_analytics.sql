-- depends: 0004_usage
-- Analytics: behaviour, feature use and performance measurements (partitioned by
-- month), kept for a retention window and rolled up into small daily tables that
-- dashboards read instead of the raw events.
--
-- Monthly partitions, like usage: at the default seed (200k events over three
-- months) a daily partition would hold ~2k rows and a 90-day query would plan
-- over 90 partitions; a month holds ~70k rows today and ~7M at 100x, still an
-- easy size for one partition, and retention works a month at a time.

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

CREATE SEQUENCE analytics_events_id_seq AS bigint;

-- No foreign keys, like usage_events (see 0004_usage.sql).
-- indexes:
--   analytics_events_pkey used by insert_analytics_rollups, insert_analytics_daily_users
CREATE TABLE analytics_events (
    account_id   bigint NOT NULL,
    id           bigint NOT NULL DEFAULT nextval('analytics_events_id_seq'),
    user_id      bigint,
    category     text NOT NULL CONSTRAINT analytics_events_category_check
                     CHECK (category IN ('behaviour', 'feature', 'performance')),
    name         text NOT NULL CONSTRAINT analytics_events_name_check
                     CHECK (name ~ '^[a-z][a-z0-9_.:-]{0,99}$'),
    duration_ms  numeric(14, 3) CONSTRAINT analytics_events_duration_check
                     CHECK (duration_ms >= 0),
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    properties   jsonb NOT NULL DEFAULT '{}' CONSTRAINT analytics_events_properties_check
                     CHECK (jsonb_typeof(properties) = 'object'
                            AND pg_column_size(properties) <= 4096),
    CONSTRAINT analytics_events_pkey PRIMARY KEY (account_id, occurred_at, id),
    CONSTRAINT analytics_events_duration_performance_check
        CHECK ((category = 'performance') <= (duration_ms IS NOT NULL))
) PARTITION BY RANGE (occurred_at);

ALTER SEQUENCE analytics_events_id_seq OWNED BY analytics_events.id;

CREATE TRIGGER analytics_events_append_only
    BEFORE UPDATE ON analytics_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change('analytics_events_append_only');

-- Per account, day, category and event name: counts, distinct users and, for
-- performance events, latency percentiles.
-- Derived tables: no foreign keys, like the events they come from.
-- indexes:
--   analytics_daily_rollups_pkey used by list_top_features, list_latency_percentiles,
--     delete_analytics_rollups, insert_analytics_rollups (uniqueness)
CREATE TABLE analytics_daily_rollups (
    account_id    bigint NOT NULL,
    day           date NOT NULL,
    category      text NOT NULL CONSTRAINT analytics_daily_rollups_category_check
                      CHECK (category IN ('behaviour', 'feature', 'performance')),
    name          text NOT NULL,
    event_count   bigint NOT NULL CONSTRAINT analytics_daily_rollups_count_check
                      CHECK (event_count > 0),
    user_count    bigint NOT NULL CONSTRAINT analytics_daily_rollups_users_check
                      CHECK (user_count >= 0),
    duration_p50  numeric(14, 3),
    duration_p95  numeric(14, 3),
    duration_p99  numeric(14, 3),
    duration_max  numeric(14, 3),
    refreshed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT analytics_daily_rollups_pkey PRIMARY KEY (account_id, day, category, name)
);

-- Distinct active users per account and day: daily/weekly/monthly active users
-- are counted from here, never from raw events.
-- indexes:
--   analytics_daily_users_pkey used by count_active_users, delete_analytics_rollups,
--     insert_analytics_daily_users (uniqueness)
CREATE TABLE analytics_daily_users (
    account_id  bigint NOT NULL,
    day         date NOT NULL,
    user_id     bigint NOT NULL,
    CONSTRAINT analytics_daily_users_pkey PRIMARY KEY (account_id, day, user_id)
);

-- Account-days whose analytics events changed since they were last rolled up
-- (appended by a statement trigger, drained by `datalayer rollups refresh`); a
-- log rather than a set, like usage_rollup_queue and for the same reasons.
-- indexes:
--   analytics_rollup_queue_pkey used by claim_analytics_days (claims the oldest ids first)
CREATE TABLE analytics_rollup_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL,
    day         date NOT NULL
);

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

CREATE TRIGGER analytics_events_queue_rollup_delete
    AFTER DELETE ON analytics_events REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics_events_queue_rollup();
