-- squawk-ignore-file ban-drop-table, ban-drop-column
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

ALTER TABLE analytics_rollup_queue DROP COLUMN queued_at;
ALTER TABLE usage_rollup_queue DROP COLUMN queued_at;
DROP TABLE maintenance_runs;
DROP TABLE maintenance_jobs;
