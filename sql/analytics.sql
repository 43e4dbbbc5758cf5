-- Analytics: batched recording of behaviour, feature and performance events,
-- and dashboard queries. The dashboards read only the small daily tables that
-- `datalayer rollups refresh` maintains (analytics_daily_rollups,
-- analytics_daily_users), never analytics_events: their figures are those of
-- the last refresh, and analytics_rollup_queue tells which account-days have
-- changed since.

-- name: create_analytics_staging :exec
-- A staging table for one batch, private to the transaction and dropped at its
-- end (so it also works behind PgBouncer in transaction mode). duration_ms has
-- the type of the target column, so it is rounded exactly as stored.
CREATE TEMP TABLE analytics_staging (
    idx          integer NOT NULL,
    account_id   bigint NOT NULL,
    user_id      bigint,
    category     text NOT NULL,
    name         text NOT NULL,
    duration_ms  numeric(14, 3),
    occurred_at  timestamptz NOT NULL,
    properties   jsonb NOT NULL
) ON COMMIT DROP;

-- name: copy_analytics_staging :copy
-- Binary COPY of a batch into the staging table.
COPY analytics_staging (idx, account_id, user_id, category, name, duration_ms, occurred_at,
                        properties) FROM STDIN (FORMAT BINARY);

-- name: find_refused_analytics_staged :many
-- Staged events the database would refuse, with the reason: an unknown
-- account (the event tables carry no foreign keys, so this is the check), or
-- properties over the size the table's CHECK allows (measured by the same
-- expression, on the same stored value). The known accounts are read by the
-- batch's account ids, not joined to the staging rows: Citus cannot join a
-- distributed table to a temporary one.
WITH known AS (
    SELECT a.id FROM accounts a WHERE a.id IN (SELECT account_id FROM analytics_staging)
)
SELECT s.idx,
       CASE WHEN NOT EXISTS (SELECT 1 FROM known k WHERE k.id = s.account_id)
            THEN 'unknown account'
            ELSE 'bad properties: larger than 4096 bytes of JSON text'
       END AS reason
FROM analytics_staging s
WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.id = s.account_id)
   OR octet_length(s.properties::text) > 4096
ORDER BY s.idx;

-- name: insert_staged_analytics :scalar
-- Store every staged event that find_refused_analytics_staged does not refuse,
-- in batch order, and queue their account-days for the rollups, in one
-- statement: all of them or (on an error) none. Returns how many were stored.
-- The accounts are read by the batch's account ids, as in the query above.
WITH stored AS (
    INSERT INTO analytics_events
        (account_id, user_id, category, name, duration_ms, occurred_at, properties)
    SELECT s.account_id, s.user_id, s.category, s.name, s.duration_ms, s.occurred_at,
           s.properties
    FROM analytics_staging s
    WHERE s.account_id IN (
              SELECT a.id FROM accounts a WHERE a.id IN (SELECT account_id FROM analytics_staging))
      AND octet_length(s.properties::text) <= 4096
    ORDER BY s.idx
    RETURNING account_id, occurred_at
), queued AS (
    INSERT INTO analytics_rollup_queue (account_id, day)
    SELECT DISTINCT account_id, (occurred_at AT TIME ZONE 'UTC')::date FROM stored
)
SELECT count(*) FROM stored;

-- name: drop_analytics_staging :exec
-- Drop the staging table once the batch is stored, so that a unit of work can
-- record several batches (ON COMMIT DROP would only drop it at commit).
DROP TABLE analytics_staging;

-- name: count_active_users :many
-- Distinct active users of an account per :window ('day', 'week' = ISO week
-- from Monday, 'month'), for every period meeting [:start_date, :end_date),
-- zero included. A period is clipped to the range: period_start and
-- period_end (exclusive) are the days actually counted. Each active day is
-- mapped to its period arithmetically and joined on the period's start, so
-- the plan is one range scan of the account's days, prepared or not (a join
-- on day ranges became, as a generic prepared plan, a scan of every day of
-- the account: 33 ms instead of 2 ms for 30 days).
WITH periods AS (
    SELECT greatest(g::date, :start_date::date) AS period_start,
           least((g + s.step)::date, :end_date::date) AS period_end
    FROM (
        SELECT CASE :window::text
                   WHEN 'day' THEN interval '1 day'
                   WHEN 'week' THEN interval '7 days'
                   ELSE interval '1 month'
               END AS step
    ) s,
    generate_series(date_trunc(:window::text, :start_date::date::timestamp),
                    (:end_date::date - 1)::timestamp, s.step) AS g
), active AS (
    SELECT DISTINCT
           greatest(date_trunc(:window::text, u.day::timestamp)::date, :start_date::date)
               AS period_start,
           u.user_id
    FROM analytics_daily_users u
    WHERE u.account_id = :account_id
      AND u.day >= :start_date::date AND u.day < :end_date::date
)
SELECT p.period_start, p.period_end, count(a.user_id) AS active_users
FROM periods p
LEFT JOIN active a ON a.period_start = p.period_start
GROUP BY p.period_start, p.period_end
ORDER BY p.period_start;

-- name: list_top_features :many
-- The account's :limit most used features in [:start_date, :end_date): events,
-- days used, and the most distinct users on one day (distinct users over the
-- whole range are not in the daily rollups). Ties by name.
SELECT r.name,
       sum(r.event_count)::bigint AS event_count,
       count(*) AS days_used,
       max(r.user_count) AS peak_daily_users
FROM analytics_daily_rollups r
WHERE r.account_id = :account_id
  AND r.day >= :start_date::date AND r.day < :end_date::date
  AND r.category = 'feature'
GROUP BY r.name
ORDER BY event_count DESC, r.name
LIMIT :limit;

-- name: list_latency_percentiles :many
-- Per performance operation (optionally only :name) and UTC day in
-- [:start_date, :end_date): events and the p50/p95/p99/max of duration_ms,
-- as rolled up (percentile_cont over the day's durations, to 0.001 ms).
SELECT r.name, r.day, r.event_count,
       r.duration_p50, r.duration_p95, r.duration_p99, r.duration_max
FROM analytics_daily_rollups r
WHERE r.account_id = :account_id
  AND r.day >= :start_date::date AND r.day < :end_date::date
  AND r.category = 'performance'
  AND (:name::text IS NULL OR r.name = :name::text)
ORDER BY r.name, r.day;

-- name: list_pending_analytics_days :many
-- The account's days in [:start_date, :end_date) with events recorded since
-- the last rollup refresh: the dashboards do not show those events yet.
SELECT DISTINCT q.day
FROM analytics_rollup_queue q
WHERE q.account_id = :account_id
  AND q.day >= :start_date::date AND q.day < :end_date::date
ORDER BY q.day;
