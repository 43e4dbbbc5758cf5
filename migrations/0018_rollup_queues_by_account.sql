-- depends: 0017_maintenance
-- The rollup queues become tenant tables that the library's own statements fill
-- (issue 16: the schema on a Citus cluster sharded by account_id).
--
-- Until now statement triggers with transition tables on usage_events and
-- analytics_events queued the buckets an INSERT or DELETE touched, and each
-- queue's primary key was its id alone. Citus refuses both: triggers on
-- distributed tables, and a primary key without the distribution column. So:
-- * every statement of the library that stores events queues their buckets in
--   the same statement (record_usage_event, insert_staged_usage,
--   insert_staged_analytics, cancel_usage_event) or the same transaction
--   (queue_usage_hours after the COPY fast path); a writer outside the library
--   queues its own buckets, or runs `datalayer rollups rebuild`;
-- * the queues are keyed (account_id, id) and drained account by account
--   (queued_usage_accounts, then one account's claim: a single-shard query, so
--   FOR UPDATE SKIP LOCKED stays exact on Citus too).
-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, adding-serial-primary-key-field, ban-drop-function
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP TRIGGER usage_events_queue_rollup_insert ON usage_events;
DROP TRIGGER usage_events_queue_rollup_delete ON usage_events;
DROP FUNCTION usage_events_queue_rollup();
DROP TRIGGER analytics_events_queue_rollup_insert ON analytics_events;
DROP TRIGGER analytics_events_queue_rollup_delete ON analytics_events;
DROP FUNCTION analytics_events_queue_rollup();

-- indexes:
--   usage_rollup_queue_pkey used by refresh_usage_hours (one account's oldest ids first),
--     queued_usage_accounts
-- The queues are small (buckets waiting for the next refresh): rebuilding their
-- primary key under the lock is cheaper than building it concurrently.
ALTER TABLE usage_rollup_queue
    DROP CONSTRAINT usage_rollup_queue_pkey,
    ADD CONSTRAINT usage_rollup_queue_pkey PRIMARY KEY (account_id, id);

-- indexes:
--   analytics_rollup_queue_pkey used by claim_analytics_days (one account's oldest ids
--     first), queued_analytics_accounts
ALTER TABLE analytics_rollup_queue
    DROP CONSTRAINT analytics_rollup_queue_pkey,
    ADD CONSTRAINT analytics_rollup_queue_pkey PRIMARY KEY (account_id, id);
