-- Rolling back means dropping what the migration created.
-- squawk-ignore-file ban-drop-table, ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP TABLE quota_reservations;
DROP TABLE quota_counters;
DROP TABLE usage_events;
DROP FUNCTION usage_events_queue_rollup();
DROP FUNCTION refuse_change();
DROP TABLE usage_rollup_queue;
DROP TABLE usage_rollups;
DROP TABLE usage_event_keys;
