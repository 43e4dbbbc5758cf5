-- Back to the compressed-size limit of 0004 and 0005.
-- squawk-ignore-file ban-drop-constraint
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';
ALTER TABLE usage_events DROP CONSTRAINT usage_events_properties_check;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_properties_check
    CHECK (jsonb_typeof(properties) = 'object' AND pg_column_size(properties) <= 4096)
    NOT VALID;

ALTER TABLE analytics_events DROP CONSTRAINT analytics_events_properties_check;
ALTER TABLE analytics_events ADD CONSTRAINT analytics_events_properties_check
    CHECK (jsonb_typeof(properties) = 'object' AND pg_column_size(properties) <= 4096)
    NOT VALID;
