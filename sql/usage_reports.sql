-- Usage reports read rollups, and compute from raw events only what is not
-- (yet) rolled up: the hours with a row in usage_rollup_queue (changed since
-- the last refresh) and the partial hours at the edges of an unaligned range.
--
-- A refresh batch rewrites an hour rollup, the day rollup above it and drains
-- the hour's queue rows in one transaction, so within one statement's
-- snapshot: a clean hour's rollup equals its raw events, and a day whose hours
-- of a meter are all clean has a day rollup equal to the sum of those hours.
--
-- Usage means accepted events that are not cancelled. A cancellation
-- (usage_cancellations) queues its event's hour in the same statement, so the
-- hour is dirty until the next refresh recomputes it without the event; every
-- read of raw events below leaves cancelled ones out with an anti-join on
-- usage_cancellations_pkey (account, event id).
--
-- The account-scoped queries below split a range accordingly:
--
--   [lo, h_lo)        partial first hour          raw events
--   [h_lo, d_lo)      whole hours before day 1    hour rollups, raw for dirty hours
--   [d_lo, d_hi)      whole days                  day rollups; for a day with a dirty
--                                                 hour of that meter, its hour rollups
--                                                 and raw for the dirty hours
--   [d_hi, h_hi)      whole hours after the days  hour rollups, raw for dirty hours
--   [h_hi, hi)        partial last hour           raw events
--
-- A month is then ~30 day rollups per meter, at most 46 hour rollups per
-- meter, and raw events of the dirty hours only. Raw events are reached by
-- usage_events_account_meter_time_idx, one hour of one meter at a time.
-- The meter list comes from `meters` (ingestion refuses events of an unknown
-- meter, and no query deletes one), so each rollup read is an exact range of
-- usage_rollups_pkey (account, meter, granularity, bucket) rather than a walk
-- over all of the account's rollups.
-- Intervals are written '24 hours', not '1 day', so that the arithmetic is UTC
-- whatever the session's TimeZone.

-- name: get_period_totals :many
-- Per meter: event count, quantity sum and max of an account's usage in
-- [:period_start, :period_end). Day rollups for whole days without a dirty hour
-- of the meter, hour rollups for the other clean whole hours, raw events for
-- dirty or partial hours: always equal to a fresh aggregate of the raw events
-- that are not cancelled. Billing reads accepted usage here.
WITH edges AS (
    SELECT :period_start::timestamptz AS lo, :period_end::timestamptz AS hi,
           date_trunc('hour', :period_start::timestamptz, 'UTC') AS lo_hour,
           date_trunc('day', :period_start::timestamptz, 'UTC') AS lo_day
), b AS (
    SELECT lo, hi, h_lo, h_hi, d_lo, d_hi,
           -- Hour rollups cover [h_lo, head_hi) and [tail_lo, h_hi): around the
           -- whole days, or every whole hour when the range holds no whole day.
           CASE WHEN d_lo < d_hi THEN d_lo ELSE h_hi END AS head_hi,
           CASE WHEN d_lo < d_hi THEN d_hi ELSE h_hi END AS tail_lo
    FROM (
        SELECT lo, hi,
               lo_hour + CASE WHEN lo_hour < lo THEN interval '1 hour' ELSE interval '0' END
                   AS h_lo,
               date_trunc('hour', hi, 'UTC') AS h_hi,
               lo_day + CASE WHEN lo_day < lo THEN interval '24 hours' ELSE interval '0' END
                   AS d_lo,
               date_trunc('day', hi, 'UTC') AS d_hi
        FROM edges
    ) aligned
), dirty AS (
    -- Whole hours of the range changed since their last refresh.
    SELECT DISTINCT q.meter_code, q.hour_start
    FROM usage_rollup_queue q, b
    WHERE q.account_id = :account_id AND q.hour_start >= b.h_lo AND q.hour_start < b.h_hi
), dirty_days AS (
    SELECT DISTINCT d.meter_code, date_trunc('day', d.hour_start, 'UTC') AS day_start
    FROM dirty d, b
    WHERE d.hour_start >= b.d_lo AND d.hour_start < b.d_hi
), hour_spans AS (
    SELECT m.code AS meter_code, s.lo, s.hi
    FROM meters m, b, LATERAL (VALUES (b.h_lo, b.head_hi), (b.tail_lo, b.h_hi)) AS s(lo, hi)
    WHERE s.lo < s.hi
    UNION ALL
    SELECT meter_code, day_start, day_start + interval '24 hours' FROM dirty_days
), raw_spans AS (
    SELECT meter_code, hour_start AS lo, hour_start + interval '1 hour' AS hi FROM dirty
    UNION ALL
    SELECT m.code, s.lo, s.hi
    FROM meters m, b,
         LATERAL (VALUES (b.lo, least(b.h_lo, b.hi)), (greatest(b.h_hi, b.h_lo), b.hi)) AS s(lo, hi)
    WHERE s.lo < s.hi
), parts AS (
    -- Each part is a LATERAL subquery with an aggregate, run once per meter or
    -- span: the plan stays a nested loop of exact index ranges (rollups by
    -- usage_rollups_pkey, events by their account/meter/time index), never a
    -- scan of the account's rollups or events; the bounds of the whole range
    -- also let the planner drop the event partitions outside it.
    SELECT m.code AS meter_code, x.event_count, x.quantity_sum, x.quantity_max
    FROM meters m
    CROSS JOIN b
    CROSS JOIN LATERAL (
        SELECT sum(r.event_count) AS event_count, sum(r.quantity_sum) AS quantity_sum,
               max(r.quantity_max) AS quantity_max
        FROM usage_rollups r
        WHERE r.account_id = :account_id AND r.meter_code = m.code AND r.granularity = 'day'
          AND r.bucket_start >= b.d_lo AND r.bucket_start < b.d_hi
          AND NOT EXISTS (
              SELECT 1 FROM dirty_days d
              WHERE d.meter_code = r.meter_code AND d.day_start = r.bucket_start)
    ) x
    UNION ALL
    SELECT s.meter_code, x.event_count, x.quantity_sum, x.quantity_max
    FROM hour_spans s
    CROSS JOIN LATERAL (
        SELECT sum(r.event_count) AS event_count, sum(r.quantity_sum) AS quantity_sum,
               max(r.quantity_max) AS quantity_max
        FROM usage_rollups r
        WHERE r.account_id = :account_id AND r.meter_code = s.meter_code
          AND r.granularity = 'hour' AND r.bucket_start >= s.lo AND r.bucket_start < s.hi
          AND NOT EXISTS (
              SELECT 1 FROM dirty d
              WHERE d.meter_code = r.meter_code AND d.hour_start = r.bucket_start)
    ) x
    UNION ALL
    SELECT s.meter_code, x.event_count, x.quantity_sum, x.quantity_max
    FROM raw_spans s
    CROSS JOIN LATERAL (
        SELECT count(*) AS event_count, sum(e.quantity) AS quantity_sum,
               max(e.quantity) AS quantity_max
        FROM usage_events e
        WHERE e.account_id = :account_id AND e.meter_code = s.meter_code
          AND e.occurred_at >= s.lo AND e.occurred_at < s.hi
          AND e.occurred_at >= :period_start::timestamptz
          AND e.occurred_at < :period_end::timestamptz
          AND NOT EXISTS (
              SELECT 1 FROM usage_cancellations c
              WHERE c.account_id = :account_id AND c.event_id = e.id)
    ) x
)
SELECT meter_code,
       sum(event_count)::bigint AS event_count,
       sum(quantity_sum) AS quantity_sum,
       max(quantity_max) AS quantity_max
FROM parts
WHERE event_count > 0
GROUP BY meter_code
ORDER BY meter_code;

-- name: get_usage_time_series :many
-- One meter of an account in [:range_start, :range_end), per :bucket ('hour'
-- or 'day', UTC): event count, quantity sum and max of each bucket with usage
-- (empty buckets are absent). The first and last buckets of an unaligned
-- range hold only their part inside it. Day buckets come from day rollups
-- when the day is whole and clean for the meter; everything else as in
-- get_period_totals, so every bucket equals a fresh aggregate of the
-- raw events that are not cancelled.
WITH edges AS (
    SELECT :range_start::timestamptz AS lo, :range_end::timestamptz AS hi,
           date_trunc('hour', :range_start::timestamptz, 'UTC') AS lo_hour,
           date_trunc('day', :range_start::timestamptz, 'UTC') AS lo_day,
           :bucket::text = 'day' AS by_day
), b AS (
    SELECT lo, hi, h_lo, h_hi, d_lo, d_hi, use_days,
           CASE WHEN use_days THEN d_lo ELSE h_hi END AS head_hi,
           CASE WHEN use_days THEN d_hi ELSE h_hi END AS tail_lo
    FROM (
        SELECT lo, hi,
               lo_hour + CASE WHEN lo_hour < lo THEN interval '1 hour' ELSE interval '0' END
                   AS h_lo,
               date_trunc('hour', hi, 'UTC') AS h_hi,
               lo_day + CASE WHEN lo_day < lo THEN interval '24 hours' ELSE interval '0' END
                   AS d_lo,
               date_trunc('day', hi, 'UTC') AS d_hi,
               by_day
        FROM edges
    ) aligned,
    LATERAL (SELECT by_day AND d_lo < d_hi AS use_days) u
), dirty AS (
    SELECT DISTINCT q.hour_start
    FROM usage_rollup_queue q, b
    WHERE q.account_id = :account_id AND q.meter_code = :meter_code
      AND q.hour_start >= b.h_lo AND q.hour_start < b.h_hi
), dirty_days AS (
    SELECT DISTINCT date_trunc('day', d.hour_start, 'UTC') AS day_start
    FROM dirty d, b
    WHERE b.use_days AND d.hour_start >= b.d_lo AND d.hour_start < b.d_hi
), hour_spans AS (
    SELECT s.lo, s.hi
    FROM b, LATERAL (VALUES (b.h_lo, b.head_hi), (b.tail_lo, b.h_hi)) AS s(lo, hi)
    WHERE s.lo < s.hi
    UNION ALL
    SELECT day_start, day_start + interval '24 hours' FROM dirty_days
), raw_spans AS (
    SELECT hour_start AS lo, hour_start + interval '1 hour' AS hi FROM dirty
    UNION ALL
    SELECT s.lo, s.hi
    FROM b, LATERAL (VALUES (b.lo, least(b.h_lo, b.hi)), (greatest(b.h_hi, b.h_lo), b.hi)) AS s(lo, hi)
    WHERE s.lo < s.hi
), parts AS (
    -- LATERAL subqueries with an aggregate, per span, as in get_period_totals.
    SELECT x.bucket_start, x.event_count, x.quantity_sum, x.quantity_max
    FROM b
    CROSS JOIN LATERAL (
        SELECT r.bucket_start, sum(r.event_count) AS event_count,
               sum(r.quantity_sum) AS quantity_sum, max(r.quantity_max) AS quantity_max
        FROM usage_rollups r
        WHERE b.use_days
          AND r.account_id = :account_id AND r.meter_code = :meter_code
          AND r.granularity = 'day' AND r.bucket_start >= b.d_lo AND r.bucket_start < b.d_hi
          AND NOT EXISTS (SELECT 1 FROM dirty_days d WHERE d.day_start = r.bucket_start)
        GROUP BY r.bucket_start
    ) x
    UNION ALL
    SELECT x.bucket_start, x.event_count, x.quantity_sum, x.quantity_max
    FROM hour_spans s
    CROSS JOIN LATERAL (
        SELECT date_trunc(:bucket::text, r.bucket_start, 'UTC') AS bucket_start,
               sum(r.event_count) AS event_count, sum(r.quantity_sum) AS quantity_sum,
               max(r.quantity_max) AS quantity_max
        FROM usage_rollups r
        WHERE r.account_id = :account_id AND r.meter_code = :meter_code
          AND r.granularity = 'hour' AND r.bucket_start >= s.lo AND r.bucket_start < s.hi
          AND NOT EXISTS (SELECT 1 FROM dirty d WHERE d.hour_start = r.bucket_start)
        GROUP BY 1
    ) x
    UNION ALL
    SELECT date_trunc('hour', s.lo, 'UTC'), x.event_count, x.quantity_sum, x.quantity_max
    FROM raw_spans s
    CROSS JOIN LATERAL (
        SELECT count(*) AS event_count, sum(e.quantity) AS quantity_sum,
               max(e.quantity) AS quantity_max
        FROM usage_events e
        WHERE e.account_id = :account_id AND e.meter_code = :meter_code
          AND e.occurred_at >= s.lo AND e.occurred_at < s.hi
          AND e.occurred_at >= :range_start::timestamptz
          AND e.occurred_at < :range_end::timestamptz
          AND NOT EXISTS (
              SELECT 1 FROM usage_cancellations c
              WHERE c.account_id = :account_id AND c.event_id = e.id)
    ) x
    WHERE x.event_count > 0
)
SELECT date_trunc(:bucket::text, bucket_start, 'UTC') AS bucket_start,
       sum(event_count)::bigint AS event_count,
       sum(quantity_sum) AS quantity_sum,
       max(quantity_max) AS quantity_max
FROM parts
GROUP BY 1
ORDER BY 1;

-- name: get_top_accounts :many
-- The :limit accounts with the largest quantity of one meter in
-- [:range_start, :range_end) (whole UTC hours), ties by account id: day
-- rollups for whole days, hour rollups for the hours around them, read across
-- accounts through usage_rollups_meter_bucket_idx. Rollups only: usage not yet
-- rolled up (hours queued since the last refresh, new events and cancellations
-- alike) counts as of that refresh.
WITH b AS (
    SELECT lo, hi, d_lo, d_hi,
           CASE WHEN d_lo < d_hi THEN d_lo ELSE hi END AS head_hi,
           CASE WHEN d_lo < d_hi THEN d_hi ELSE hi END AS tail_lo
    FROM (
        SELECT lo, hi,
               lo_day + CASE WHEN lo_day < lo THEN interval '24 hours' ELSE interval '0' END
                   AS d_lo,
               date_trunc('day', hi, 'UTC') AS d_hi
        FROM (
            SELECT :range_start::timestamptz AS lo, :range_end::timestamptz AS hi,
                   date_trunc('day', :range_start::timestamptz, 'UTC') AS lo_day
        ) edges
    ) aligned
), spans AS (
    -- Day rollups for the whole days, hour rollups for the hours around them.
    SELECT 'day' AS granularity, d_lo AS lo, d_hi AS hi FROM b WHERE d_lo < d_hi
    UNION ALL
    SELECT 'hour', lo, head_hi FROM b WHERE lo < head_hi
    UNION ALL
    SELECT 'hour', tail_lo, hi FROM b WHERE tail_lo < hi
), parts AS (
    -- One range of usage_rollups_meter_bucket_idx per span (a LATERAL subquery
    -- with an aggregate runs once per span).
    SELECT x.account_id, x.event_count, x.quantity_sum, x.quantity_max
    FROM spans s
    CROSS JOIN LATERAL (
        SELECT r.account_id, sum(r.event_count) AS event_count,
               sum(r.quantity_sum) AS quantity_sum, max(r.quantity_max) AS quantity_max
        FROM usage_rollups r
        WHERE r.meter_code = :meter_code AND r.granularity = s.granularity
          AND r.bucket_start >= s.lo AND r.bucket_start < s.hi
        GROUP BY r.account_id
    ) x
)
SELECT account_id,
       sum(event_count)::bigint AS event_count,
       sum(quantity_sum) AS quantity_sum,
       max(quantity_max) AS quantity_max
FROM parts
GROUP BY account_id
ORDER BY quantity_sum DESC, account_id
LIMIT :limit;
