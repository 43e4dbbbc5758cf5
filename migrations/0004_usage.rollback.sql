DROP TABLE quota_reservations;
DROP TABLE quota_counters;
DROP TABLE usage_events;
DROP FUNCTION usage_events_queue_rollup();
DROP FUNCTION refuse_update();
DROP TABLE usage_rollup_queue;
DROP TABLE usage_rollups;
DROP TABLE usage_event_keys;
