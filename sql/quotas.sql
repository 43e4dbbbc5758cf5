-- Quotas: per account, meter and subscription period, the consumed and reserved
-- quantity. The limit comes from the live subscription's plan (plan_meters);
-- a new period starts a new counter, so counters reset with the period.

-- name: consume_quota :one
-- Add :quantity to the current period's counter unless that passes a hard
-- limit: one atomic statement. The counter's row lock serialises concurrent
-- consumers and READ COMMITTED re-checks the condition on the locked row, so N
-- callers can never overspend. The limit is read from the live plan (and
-- copied onto the counter), so an upgrade takes effect at once. No row back:
-- no counter for this period yet, no live plan with the meter, or refused.
UPDATE quota_counters c
SET used = c.used + :quantity,
    limit_kind = pm.limit_kind,
    limit_quantity = pm.included_quantity,
    updated_at = now()
FROM subscriptions s
JOIN plan_meters pm ON pm.plan_id = s.plan_id
WHERE s.account_id = :account_id
  AND s.status IN ('trialing', 'active', 'past_due')
  AND pm.meter_code = :meter_code
  AND c.account_id = s.account_id
  AND c.meter_code = pm.meter_code
  AND c.period_start = s.current_period_start
  AND (pm.limit_kind <> 'hard' OR c.used + c.reserved + :quantity <= pm.included_quantity)
RETURNING c.account_id, c.meter_code, c.period_start, c.period_end, c.limit_kind,
          c.limit_quantity, c.used, c.reserved;

-- name: open_quota_counter :execrows
-- Create the counter of the live subscription's current period for the meter,
-- if the plan has the meter and the counter does not exist yet. Returns one
-- row per counter created. The account comes from :account_id (the same value
-- as s.account_id): on Citus an INSERT ... SELECT that copies the distribution
-- column from a join with a reference table runs on every shard, while this
-- one reads on the account's shard and inserts through the coordinator (which
-- Citus plans with parameters only inside a CTE).
WITH opened AS (
    INSERT INTO quota_counters
        (account_id, meter_code, period_start, period_end, limit_kind, limit_quantity)
    SELECT :account_id, pm.meter_code, s.current_period_start, s.current_period_end,
           pm.limit_kind, pm.included_quantity
    FROM subscriptions s
    JOIN plan_meters pm ON pm.plan_id = s.plan_id
    WHERE s.account_id = :account_id
      AND s.status IN ('trialing', 'active', 'past_due')
      AND pm.meter_code = :meter_code
    ON CONFLICT (account_id, meter_code, period_start) DO NOTHING
    RETURNING 1
)
SELECT FROM opened;

-- name: get_quota_states :many
-- Every meter of the live subscription's plan (or only :meter_code when it is
-- not null) with its limit and this period's counter; used and reserved are 0
-- before the first consumption of the period.
SELECT s.account_id, pm.meter_code, s.current_period_start AS period_start,
       s.current_period_end AS period_end, pm.limit_kind,
       pm.included_quantity AS limit_quantity,
       coalesce(c.used, 0) AS used, coalesce(c.reserved, 0) AS reserved,
       c.account_id IS NOT NULL AS counter_exists
FROM subscriptions s
JOIN plan_meters pm ON pm.plan_id = s.plan_id
LEFT JOIN quota_counters c
  ON c.account_id = s.account_id
 AND c.meter_code = pm.meter_code
 AND c.period_start = s.current_period_start
WHERE s.account_id = :account_id
  AND s.status IN ('trialing', 'active', 'past_due')
  AND (:meter_code::text IS NULL OR pm.meter_code = :meter_code::text)
ORDER BY pm.meter_code;

-- name: reserve_quota :one
-- Hold :quantity of the current period's quota for a long job until :ttl has
-- passed, under the same hard-limit rule as consume_quota, in one statement.
-- Both writes are CTEs under a SELECT: Citus cannot plan a top-level
-- INSERT ... SELECT from a CTE with parameters, and runs these on the
-- account's shard.
WITH held AS (
    UPDATE quota_counters c
    SET reserved = c.reserved + :quantity,
        limit_kind = pm.limit_kind,
        limit_quantity = pm.included_quantity,
        updated_at = now()
    FROM subscriptions s
    JOIN plan_meters pm ON pm.plan_id = s.plan_id
    WHERE s.account_id = :account_id
      AND s.status IN ('trialing', 'active', 'past_due')
      AND pm.meter_code = :meter_code
      AND c.account_id = :account_id
      AND c.meter_code = pm.meter_code
      AND c.period_start = s.current_period_start
      AND (pm.limit_kind <> 'hard' OR c.used + c.reserved + :quantity <= pm.included_quantity)
    RETURNING c.account_id, c.meter_code, c.period_start
), reservation AS (
    INSERT INTO quota_reservations (account_id, meter_code, period_start, quantity, expires_at)
    SELECT account_id, meter_code, period_start, :quantity, statement_timestamp() + :ttl
    FROM held
    RETURNING account_id, id, meter_code, period_start, quantity, status, expires_at,
              created_at, settled_at
)
SELECT account_id, id, meter_code, period_start, quantity, status, expires_at, created_at,
       settled_at
FROM reservation;

-- name: settle_quota_reservation :one
-- Close a held reservation: its quantity leaves `reserved`, and :used (what
-- the job really consumed, 0 to release) is added to `used`. A hard limit still
-- applies to :used (quota_counters_hard_limit_check). No row back: the
-- reservation is not held (settled, released or expired) or does not exist.
-- The counter is pinned to :account_id (the reservation's account) so that
-- Citus routes the whole statement to the account's shard.
WITH closed AS (
    UPDATE quota_reservations
    SET status = :status, settled_at = statement_timestamp()
    WHERE account_id = :account_id AND id = :id AND status = 'held'
    RETURNING account_id, meter_code, period_start, quantity
)
UPDATE quota_counters c
SET reserved = c.reserved - r.quantity, used = c.used + :used, updated_at = now()
FROM closed r
WHERE c.account_id = :account_id
  AND c.meter_code = r.meter_code
  AND c.period_start = r.period_start
RETURNING c.account_id, c.meter_code, c.period_start, c.period_end, c.limit_kind,
          c.limit_quantity, c.used, c.reserved;

-- name: get_quota_reservation :one
-- One reservation of the account, in any status.
SELECT account_id, id, meter_code, period_start, quantity, status, expires_at, created_at,
       settled_at
FROM quota_reservations
WHERE account_id = :account_id AND id = :id;

-- name: expire_quota_reservations :scalar
-- Release every held reservation past its expiry (a crashed job's), in one
-- statement; returns how many expired.
WITH expired AS (
    UPDATE quota_reservations
    SET status = 'expired', settled_at = statement_timestamp()
    WHERE status = 'held' AND expires_at <= statement_timestamp()
    RETURNING account_id, meter_code, period_start, quantity
), totals AS (
    SELECT account_id, meter_code, period_start, sum(quantity) AS quantity
    FROM expired
    GROUP BY account_id, meter_code, period_start
), released AS (
    UPDATE quota_counters c
    SET reserved = c.reserved - t.quantity, updated_at = now()
    FROM totals t
    WHERE c.account_id = t.account_id
      AND c.meter_code = t.meter_code
      AND c.period_start = t.period_start
)
SELECT count(*) FROM expired;
