-- Rolling back means dropping what the migration created.
-- squawk-ignore-file ban-drop-table, ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP TABLE analytics_events;
DROP FUNCTION analytics_events_queue_rollup();
DROP TABLE analytics_rollup_queue;
DROP TABLE analytics_daily_users;
DROP TABLE analytics_daily_rollups;
