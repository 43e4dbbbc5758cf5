-- Rollups: draining the queues that usage and analytics inserts fill, and
-- recomputing the affected buckets from the raw events. Every refresh batch
-- runs in one transaction holding lock_rollups, so two refreshers never
-- interleave their hour and day writes. The queues are drained account by
-- account: every statement but the two queued_*_accounts reads is scoped to one
-- :account_id, a single-shard query on Citus (where FOR UPDATE SKIP LOCKED
-- across shards is not supported).

-- name: lock_rollups :exec
-- Serialise rollup refreshers for the rest of the transaction.
SELECT pg_advisory_xact_lock(hashtext('datalayer.rollups'));

-- name: queued_usage_accounts :scalar
-- Up to :limit accounts with queued hour buckets, the longest waiting first.
SELECT coalesce(array_agg(account_id ORDER BY first_id), '{}')
FROM (
    SELECT account_id, min(id) AS first_id
    FROM usage_rollup_queue
    GROUP BY account_id
    ORDER BY first_id
    LIMIT :limit
) q;

-- name: refresh_usage_hours :many
-- Claim up to :batch_size of an account's queued hour buckets, recompute each from the raw
-- events of that hour (one partition) that are not cancelled (an anti-join on
-- usage_cancellations_pkey; cancelling queues the event's hour), upsert
-- non-empty buckets and delete empty ones. Returns the distinct days touched,
-- for refresh_usage_days.
WITH claimed AS (
    DELETE FROM usage_rollup_queue
    WHERE account_id = :account_id
      AND id IN (
          SELECT id FROM usage_rollup_queue
          WHERE account_id = :account_id
          ORDER BY id
          LIMIT :batch_size
          FOR UPDATE SKIP LOCKED
      )
    RETURNING account_id, meter_code, hour_start
), buckets AS (
    SELECT DISTINCT account_id, meter_code, hour_start FROM claimed
), fresh AS (
    SELECT b.account_id, b.meter_code, b.hour_start,
           count(e.id) AS event_count,
           coalesce(sum(e.quantity), 0) AS quantity_sum,
           coalesce(max(e.quantity), 0) AS quantity_max
    FROM buckets b
    LEFT JOIN usage_events e
      ON e.account_id = :account_id
     AND e.meter_code = b.meter_code
     AND e.occurred_at >= b.hour_start
     AND e.occurred_at < b.hour_start + interval '1 hour'
     AND NOT EXISTS (
         SELECT 1 FROM usage_cancellations c
         WHERE c.account_id = :account_id AND c.event_id = e.id)
    GROUP BY b.account_id, b.meter_code, b.hour_start
), emptied AS (
    DELETE FROM usage_rollups r
    USING fresh f
    WHERE f.event_count = 0
      AND r.account_id = :account_id AND r.meter_code = f.meter_code
      AND r.granularity = 'hour' AND r.bucket_start = f.hour_start
), upserted AS (
    INSERT INTO usage_rollups
        (account_id, meter_code, granularity, bucket_start, event_count, quantity_sum,
         quantity_max, refreshed_at)
    SELECT account_id, meter_code, 'hour', hour_start, event_count, quantity_sum, quantity_max,
           now()
    FROM fresh
    WHERE event_count > 0
    ON CONFLICT (account_id, meter_code, granularity, bucket_start) DO UPDATE
    SET event_count = EXCLUDED.event_count,
        quantity_sum = EXCLUDED.quantity_sum,
        quantity_max = EXCLUDED.quantity_max,
        -- now(), from the insert: Citus refuses a non-immutable function in DO UPDATE SET.
        refreshed_at = EXCLUDED.refreshed_at
)
SELECT DISTINCT account_id, meter_code, date_trunc('day', hour_start, 'UTC') AS day_start
FROM buckets;

-- name: refresh_usage_days :execrows
-- Recompute an account's day buckets listed in the parallel arrays from their
-- hour buckets.
WITH days AS (
    SELECT * FROM unnest(:meter_codes::text[], :day_starts::timestamptz[])
        AS d(meter_code, day_start)
), fresh AS (
    SELECT :account_id::bigint AS account_id, d.meter_code, d.day_start,
           coalesce(sum(r.event_count), 0) AS event_count,
           coalesce(sum(r.quantity_sum), 0) AS quantity_sum,
           coalesce(max(r.quantity_max), 0) AS quantity_max
    FROM days d
    LEFT JOIN usage_rollups r
      ON r.account_id = :account_id
     AND r.meter_code = d.meter_code
     AND r.granularity = 'hour'
     AND r.bucket_start >= d.day_start
     AND r.bucket_start < d.day_start + interval '24 hours'  -- a UTC day, in any session
    GROUP BY d.meter_code, d.day_start
), emptied AS (
    DELETE FROM usage_rollups r
    USING fresh f
    WHERE f.event_count = 0
      AND r.account_id = :account_id AND r.meter_code = f.meter_code
      AND r.granularity = 'day' AND r.bucket_start = f.day_start
), upserted AS (
    -- A CTE under a SELECT: Citus refuses a top-level INSERT … SELECT from CTEs with
    -- parameters. The rows written are the rows selected below.
    INSERT INTO usage_rollups
        (account_id, meter_code, granularity, bucket_start, event_count, quantity_sum,
         quantity_max, refreshed_at)
    SELECT account_id, meter_code, 'day', day_start, event_count, quantity_sum, quantity_max,
           now()
    FROM fresh
    WHERE event_count > 0
    ON CONFLICT (account_id, meter_code, granularity, bucket_start) DO UPDATE
    SET event_count = EXCLUDED.event_count,
        quantity_sum = EXCLUDED.quantity_sum,
        quantity_max = EXCLUDED.quantity_max,
        -- now(), from the insert: Citus refuses a non-immutable function in DO UPDATE SET.
        refreshed_at = EXCLUDED.refreshed_at
    RETURNING 1
)
SELECT FROM upserted;

-- name: queued_analytics_accounts :scalar
-- Up to :limit accounts with queued account-days, the longest waiting first.
SELECT coalesce(array_agg(account_id ORDER BY first_id), '{}')
FROM (
    SELECT account_id, min(id) AS first_id
    FROM analytics_rollup_queue
    GROUP BY account_id
    ORDER BY first_id
    LIMIT :limit
) q;

-- name: claim_analytics_days :many
-- Claim up to :batch_size of an account's queued days; returns each distinct one once.
WITH claimed AS (
    DELETE FROM analytics_rollup_queue
    WHERE account_id = :account_id
      AND id IN (
          SELECT id FROM analytics_rollup_queue
          WHERE account_id = :account_id
          ORDER BY id
          LIMIT :batch_size
          FOR UPDATE SKIP LOCKED
      )
    RETURNING account_id, day
)
SELECT DISTINCT account_id, day FROM claimed;

-- name: delete_analytics_rollups :execrows
-- Remove an account's daily rollups and active users of the listed days.
WITH users_gone AS (
    DELETE FROM analytics_daily_users
    WHERE account_id = :account_id AND day = ANY(:days::date[])
)
DELETE FROM analytics_daily_rollups
WHERE account_id = :account_id AND day = ANY(:days::date[]);

-- name: insert_analytics_rollups :execrows
-- Aggregate the raw events of an account's listed days (each day scans only its
-- own partition): counts, distinct users, latency percentiles.
WITH days AS (
    SELECT DISTINCT day FROM unnest(:days::date[]) AS d(day)
)
INSERT INTO analytics_daily_rollups
    (account_id, day, category, name, event_count, user_count,
     duration_p50, duration_p95, duration_p99, duration_max)
SELECT e.account_id, d.day, e.category, e.name,
       count(*),
       count(DISTINCT e.user_id),
       percentile_cont(0.50) WITHIN GROUP (ORDER BY e.duration_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY e.duration_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY e.duration_ms),
       max(e.duration_ms)
FROM days d
JOIN analytics_events e
  ON e.account_id = :account_id
 AND e.occurred_at >= d.day::timestamp AT TIME ZONE 'UTC'
 AND e.occurred_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
GROUP BY e.account_id, d.day, e.category, e.name;

-- name: insert_analytics_daily_users :execrows
-- The distinct users active on each of an account's listed days.
WITH days AS (
    SELECT DISTINCT day FROM unnest(:days::date[]) AS d(day)
)
INSERT INTO analytics_daily_users (account_id, day, user_id)
SELECT DISTINCT e.account_id, d.day, e.user_id
FROM days d
JOIN analytics_events e
  ON e.account_id = :account_id
 AND e.occurred_at >= d.day::timestamp AT TIME ZONE 'UTC'
 AND e.occurred_at < (d.day + 1)::timestamp AT TIME ZONE 'UTC'
WHERE e.user_id IS NOT NULL;
