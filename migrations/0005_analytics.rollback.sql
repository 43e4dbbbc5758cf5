DROP TABLE analytics_events;
DROP FUNCTION analytics_events_queue_rollup();
DROP TABLE analytics_rollup_queue;
DROP TABLE analytics_daily_users;
DROP TABLE analytics_daily_rollups;
