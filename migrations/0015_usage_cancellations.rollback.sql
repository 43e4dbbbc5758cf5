-- Rolling back un-cancels every cancelled event: their hour buckets are queued
-- first, so the next `rollups refresh` counts those events again (reports read
-- queued hours from the raw events, so they count them at once).
-- squawk-ignore-file ban-drop-table
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
SELECT DISTINCT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
FROM usage_cancellations;

DROP TABLE usage_cancellations;
