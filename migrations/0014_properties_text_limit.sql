-- depends: 0011_index_review
-- Event properties are limited to 4096 bytes of JSON text, as the docs say,
-- not 4096 bytes after compression: pg_column_size() measured the stored
-- (possibly compressed) datum, so 50 KB of repetitive text passed. The limit
-- is now measured on jsonb's own rendering, octet_length(properties::text),
-- which the library computes exactly before sending (properties_refusal).
-- NOT VALID: rows stored before are left alone (no scan of every partition);
-- every new row is checked.
-- The old constraint is replaced by the new one in the same transaction.
-- squawk-ignore-file ban-drop-constraint
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';
ALTER TABLE usage_events DROP CONSTRAINT usage_events_properties_check;
ALTER TABLE usage_events ADD CONSTRAINT usage_events_properties_check
    CHECK (jsonb_typeof(properties) = 'object' AND octet_length(properties::text) <= 4096)
    NOT VALID;

ALTER TABLE analytics_events DROP CONSTRAINT analytics_events_properties_check;
ALTER TABLE analytics_events ADD CONSTRAINT analytics_events_properties_check
    CHECK (jsonb_typeof(properties) = 'object' AND octet_length(properties::text) <= 4096)
    NOT VALID;
