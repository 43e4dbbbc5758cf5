-- Usage reports read the hour rollups, and compute from raw events only the
-- hours that are not (yet) rolled: hours with a row in usage_rollup_queue
-- (changed since the last refresh) and the partial hours at the edges of an
-- unaligned range. Every other hour comes from its rollup, so a month costs a
-- few hundred rollup rows plus a handful of raw hours, whatever its volume.

-- name: get_period_totals :many
-- Per meter: event count, quantity sum and max of an account's usage in
-- [:period_start, :period_end). Rollups for clean whole hours, raw events for
-- dirty or partial hours.
WITH bounds AS (
    SELECT :period_start::timestamptz AS lo, :period_end::timestamptz AS hi,
           date_trunc('hour', :period_start::timestamptz, 'UTC') AS first_hour,
           date_trunc('hour', :period_end::timestamptz, 'UTC') AS last_hour
), raw_hours AS (
    -- Queued (dirty) hours of the account in the range, and the partial edge hours.
    SELECT DISTINCT q.meter_code, q.hour_start
    FROM usage_rollup_queue q, bounds b
    WHERE q.account_id = :account_id
      AND q.hour_start >= b.first_hour AND q.hour_start < b.hi
    UNION
    SELECT m.code, h.hour_start
    FROM meters m, bounds b,
         LATERAL (VALUES (b.first_hour), (b.last_hour)) AS h(hour_start)
    WHERE (h.hour_start = b.first_hour AND b.lo > b.first_hour)
       OR (h.hour_start = b.last_hour AND b.hi > b.last_hour)
), rolled AS (
    SELECT r.meter_code, sum(r.event_count) AS event_count, sum(r.quantity_sum) AS quantity_sum,
           max(r.quantity_max) AS quantity_max
    FROM usage_rollups r, bounds b
    WHERE r.account_id = :account_id
      AND r.granularity = 'hour'
      AND r.bucket_start >= b.lo
      AND r.bucket_start < b.hi
      AND r.bucket_start + interval '1 hour' <= b.hi
      AND NOT EXISTS (
          SELECT 1 FROM raw_hours h
          WHERE h.meter_code = r.meter_code AND h.hour_start = r.bucket_start)
    GROUP BY r.meter_code
), tail AS (
    SELECT e.meter_code, count(*) AS event_count, sum(e.quantity) AS quantity_sum,
           max(e.quantity) AS quantity_max
    FROM raw_hours h
    CROSS JOIN bounds b
    JOIN usage_events e
      ON e.account_id = :account_id
     AND e.meter_code = h.meter_code
     AND e.occurred_at >= greatest(h.hour_start, b.lo)
     AND e.occurred_at < least(h.hour_start + interval '1 hour', b.hi)
    GROUP BY e.meter_code
)
SELECT meter_code,
       sum(event_count)::bigint AS event_count,
       sum(quantity_sum) AS quantity_sum,
       max(quantity_max) AS quantity_max
FROM (SELECT * FROM rolled UNION ALL SELECT * FROM tail) parts
GROUP BY meter_code
ORDER BY meter_code;
