-- Subscriptions: an account on a plan version and its billing cycle.
--
-- Live statuses are trialing, active and past_due (the predicate of
-- subscriptions_one_live_per_account). Every status change is a guarded
-- UPDATE that names the statuses it expects; :now is the caller's clock, or
-- the transaction's time when NULL. Calendar arithmetic (months, years) runs
-- in the session time zone, which datalayer sets to UTC. A statement that
-- writes several tables names :account_id in each one's condition (not only
-- in a join to a CTE's rows), so that Citus routes all of it to the account's
-- shard.

-- name: start_subscription :one
-- Subscribe an account to a published plan: trialing for trial_days when a
-- trial is requested and the plan has one, else active; the first period is
-- [now, now + interval_count * billing_interval) and the billing anchor is
-- its start. The subscription starts its own chain (chain_id = id) and the
-- period's billing_periods row is written with it. No row when the plan is
-- missing or not published.
WITH new AS (
    SELECT nextval(pg_get_serial_sequence('subscriptions', 'id')) AS id
), sub AS (
    INSERT INTO subscriptions (id, chain_id, account_id, plan_id, status, current_period_start,
                               current_period_end, billing_anchor, trial_end)
    OVERRIDING SYSTEM VALUE
    SELECT new.id, new.id, :account_id, p.id,
           CASE WHEN t.trial THEN 'trialing' ELSE 'active' END,
           c.at,
           -- Calendar arithmetic in UTC whatever the session's time zone (DOMAIN.md).
           (c.at AT TIME ZONE 'UTC' + make_interval(
               months => (CASE p.billing_interval WHEN 'month' THEN 1 WHEN 'year' THEN 12 ELSE 0 END
                          * p.interval_count)::int,
               days => (CASE p.billing_interval WHEN 'day' THEN 1 WHEN 'week' THEN 7 ELSE 0 END
                        * p.interval_count)::int)) AT TIME ZONE 'UTC',
           c.at,
           CASE WHEN t.trial
               THEN (c.at AT TIME ZONE 'UTC' + make_interval(days => p.trial_days::int))
                    AT TIME ZONE 'UTC'
           END
    FROM plans p
    CROSS JOIN new
    CROSS JOIN LATERAL (SELECT coalesce(:now::timestamptz, now()) AS at) c
    CROSS JOIN LATERAL (SELECT :trial::boolean AND p.trial_days > 0 AS trial) t
    WHERE p.id = :plan_id AND p.status = 'published'
    RETURNING account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
              billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
              canceled_at, ended_at, created_at, updated_at
), period AS (
    INSERT INTO billing_periods (account_id, chain_id, subscription_id, base_plan_id,
                                 period_start, period_end, closes_at, trial_end)
    SELECT account_id, chain_id, id, plan_id, current_period_start, current_period_end,
           current_period_end, trial_end
    FROM sub
)
SELECT account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
       billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
       canceled_at, ended_at, created_at, updated_at
FROM sub;

-- name: get_subscription :one
-- One subscription of an account by id, in any status.
SELECT account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
       billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
       canceled_at, ended_at, created_at, updated_at
FROM subscriptions
WHERE account_id = :account_id AND id = :id;

-- name: get_live_subscription :one
-- The account's live subscription, if any (at most one, by the partial unique index).
SELECT account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
       billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
       canceled_at, ended_at, created_at, updated_at
FROM subscriptions
WHERE account_id = :account_id AND status IN ('trialing', 'active', 'past_due');

-- name: list_subscriptions :many
-- A page of an account's subscriptions, newest first, before the keyset cursor :after_id.
SELECT account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
       billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
       canceled_at, ended_at, created_at, updated_at
FROM subscriptions
WHERE account_id = :account_id AND id < :after_id
ORDER BY id DESC
LIMIT :limit;

-- name: replace_subscription :one
-- First step of an upgrade: trialing or active -> replaced, ended at :now,
-- which must fall inside the current period. No row otherwise.
UPDATE subscriptions s
SET status = 'replaced', ended_at = c.at, updated_at = now()
FROM (SELECT coalesce(:now::timestamptz, now()) AS at) c
WHERE s.account_id = :account_id AND s.id = :id
  AND s.status IN ('trialing', 'active')
  AND s.current_period_start <= c.at AND c.at < s.current_period_end
RETURNING s.account_id, s.id, s.chain_id, s.plan_id, s.status, s.current_period_start,
          s.current_period_end,
          s.billing_anchor, s.trial_end, s.cancel_at_period_end, s.pending_plan_id,
          s.replaces_id, s.canceled_at, s.ended_at, s.created_at, s.updated_at;

-- name: insert_upgrade :one
-- Second step of an upgrade: an active subscription on :plan_id replacing
-- :replaces_id, in the same chain and billing cycle (period and anchor); the
-- chain's billing period now closes under it (its plan prices the period's
-- usage). No row unless the new plan is published, differs from the old one,
-- and has its currency and interval.
WITH sub AS (
    INSERT INTO subscriptions (account_id, chain_id, plan_id, status, current_period_start,
                               current_period_end, billing_anchor, replaces_id)
    SELECT o.account_id, o.chain_id, np.id, 'active', o.current_period_start,
           o.current_period_end, o.billing_anchor, o.id
    FROM subscriptions o
    JOIN plans op ON op.id = o.plan_id
    JOIN plans np ON np.id = :plan_id
    WHERE o.account_id = :account_id AND o.id = :replaces_id AND o.status = 'replaced'
      AND np.status = 'published' AND np.id <> op.id AND np.currency = op.currency
      AND np.billing_interval = op.billing_interval AND np.interval_count = op.interval_count
    RETURNING account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
              billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
              canceled_at, ended_at, created_at, updated_at
), period AS (
    UPDATE billing_periods b
    SET subscription_id = sub.id
    FROM sub
    WHERE b.account_id = :account_id AND b.chain_id = sub.chain_id
      AND b.period_start = sub.current_period_start
)
SELECT account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
       billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
       canceled_at, ended_at, created_at, updated_at
FROM sub;

-- name: compute_proration :one
-- What the switch from the replaced subscription's plan to :subscription_id's
-- plan at :now is worth for the rest of the period, from the stored prices:
-- the new plan is charged for [now, period end); the old one is credited for
-- the part of that time it would have charged, [max(now, its trial end),
-- period end) (a trial's time is free, so not credited). Each amount is its
-- price times the exact fraction of the period, rounded half-up once (integer
-- division of 2 * price * part + total by 2 * total, in microseconds).
SELECT n.account_id, n.id AS subscription_id, o.id AS replaced_id, op.id AS old_plan_id,
       np.id AS new_plan_id, np.currency, c.at AS effective_at,
       n.current_period_start AS period_start, n.current_period_end AS period_end,
       round(f.unused / f.total, 10) AS fraction,
       div(2 * op.base_price_minor * f.paid_unused + f.total, 2 * f.total)::bigint AS credit_minor,
       div(2 * np.base_price_minor * f.unused + f.total, 2 * f.total)::bigint AS charge_minor,
       (div(2 * np.base_price_minor * f.unused + f.total, 2 * f.total)
        - div(2 * op.base_price_minor * f.paid_unused + f.total, 2 * f.total))::bigint AS net_minor
FROM subscriptions n
JOIN subscriptions o ON o.account_id = n.account_id AND o.id = n.replaces_id
JOIN plans op ON op.id = o.plan_id
JOIN plans np ON np.id = n.plan_id
CROSS JOIN LATERAL (SELECT coalesce(:now::timestamptz, now()) AS at) c
CROSS JOIN LATERAL (
    SELECT (extract(epoch FROM n.current_period_end) - extract(epoch FROM c.at)) * 1000000
               AS unused,
           greatest(0, extract(epoch FROM n.current_period_end)
                       - extract(epoch FROM greatest(c.at, coalesce(o.trial_end, c.at))))
               * 1000000 AS paid_unused,
           (extract(epoch FROM n.current_period_end)
            - extract(epoch FROM n.current_period_start)) * 1000000 AS total) f
WHERE n.account_id = :account_id AND n.id = :subscription_id;

-- name: insert_proration_items :many
-- The proration of an upgrade as pending invoice items of the chain, written
-- in the upgrade's transaction from compute_proration's amounts: a credit of
-- the old plan's unused time and a charge of the new plan's, for the service
-- period [effective_at, period_end). The chain's next invoice bills them.
INSERT INTO pending_invoice_items (account_id, chain_id, subscription_id, kind, description,
                                   amount_minor, currency, service_start, service_end)
SELECT :account_id, :chain_id, :subscription_id, 'proration', i.description, i.amount_minor,
       :currency, :effective_at, :period_end
FROM unnest(:descriptions::text[], :amounts_minor::bigint[]) WITH ORDINALITY
     AS i (description, amount_minor, n)
ORDER BY i.n
RETURNING account_id, id, chain_id, subscription_id, kind, description, amount_minor, currency,
          service_start, service_end, invoice_id, created_at;

-- name: schedule_downgrade :one
-- Set the plan a live subscription moves to at the end of its period
-- (applied by renew_due_subscriptions). No row unless the subscription is
-- live and the plan is published, differs from the current one and has its
-- currency.
UPDATE subscriptions s
SET pending_plan_id = np.id, updated_at = now()
FROM plans op, plans np
WHERE s.account_id = :account_id AND s.id = :id
  AND s.status IN ('trialing', 'active', 'past_due')
  AND op.id = s.plan_id AND np.id = :plan_id
  AND np.status = 'published' AND np.id <> op.id AND np.currency = op.currency
RETURNING s.account_id, s.id, s.chain_id, s.plan_id, s.status, s.current_period_start,
          s.current_period_end,
          s.billing_anchor, s.trial_end, s.cancel_at_period_end, s.pending_plan_id,
          s.replaces_id, s.canceled_at, s.ended_at, s.created_at, s.updated_at;

-- name: cancel_subscription_now :one
-- A live subscription -> canceled at :now (canceled_at = ended_at = :now;
-- a pending downgrade is dropped), and its chain's open billing period closes
-- at :now (its usage window ends there; the base fee is billed in full). No
-- row unless it is live.
WITH sub AS (
    UPDATE subscriptions s
    SET status = 'canceled', canceled_at = c.at, ended_at = c.at, pending_plan_id = NULL,
        updated_at = now()
    FROM (SELECT coalesce(:now::timestamptz, now()) AS at) c
    WHERE s.account_id = :account_id AND s.id = :id
      AND s.status IN ('trialing', 'active', 'past_due')
    RETURNING s.account_id, s.id, s.chain_id, s.plan_id, s.status, s.current_period_start,
              s.current_period_end, s.billing_anchor, s.trial_end, s.cancel_at_period_end,
              s.pending_plan_id, s.replaces_id, s.canceled_at, s.ended_at, s.created_at,
              s.updated_at
), period AS (
    UPDATE billing_periods b
    SET closes_at = greatest(b.period_start, least(b.closes_at, sub.ended_at))
    FROM sub
    WHERE b.account_id = :account_id AND b.chain_id = sub.chain_id
      AND b.period_start = sub.current_period_start
)
SELECT account_id, id, chain_id, plan_id, status, current_period_start, current_period_end,
       billing_anchor, trial_end, cancel_at_period_end, pending_plan_id, replaces_id,
       canceled_at, ended_at, created_at, updated_at
FROM sub;

-- name: cancel_subscription_at_period_end :one
-- Flag a live subscription to end with its period (canceled_at records the
-- request, as Stripe does); renewal then cancels it. No row unless it is live.
UPDATE subscriptions s
SET cancel_at_period_end = true, canceled_at = c.at, updated_at = now()
FROM (SELECT coalesce(:now::timestamptz, now()) AS at) c
WHERE s.account_id = :account_id AND s.id = :id
  AND s.status IN ('trialing', 'active', 'past_due')
RETURNING s.account_id, s.id, s.chain_id, s.plan_id, s.status, s.current_period_start,
          s.current_period_end,
          s.billing_anchor, s.trial_end, s.cancel_at_period_end, s.pending_plan_id,
          s.replaces_id, s.canceled_at, s.ended_at, s.created_at, s.updated_at;

-- name: renew_due_subscriptions :many
-- Renew up to :batch live subscriptions whose period ended by :now, skipping
-- rows another renewer holds (so concurrent renewers never take one twice),
-- and return the subscriptions handled. Each one, by what it asks for:
--   cancel_at_period_end -> canceled, ended at the period end;
--   pending_plan_id      -> replaced, ended at the period end, and a successor
--                           on the pending plan (replaces_id = the old one)
--                           starts the next period; the old row is updated
--                           before its successor is inserted, so the one-live
--                           index never sees two;
--   otherwise            -> the period moves forward by one interval.
-- A trial that ended by the period end becomes active. Period ends fall on
-- the billing anchor plus whole intervals (Jan 31 -> Feb 28 -> Mar 31); a
-- switch to a plan with another interval re-anchors at the switch. Every
-- chain that goes on (renewed, or its successor) opens its next billing
-- period in the same statement.
WITH due AS (
    SELECT s.account_id, s.id, s.chain_id, s.trial_end, np.id AS next_plan_id,
           s.cancel_at_period_end AS cancel,
           s.pending_plan_id IS NOT NULL AND NOT s.cancel_at_period_end AS switch,
           CASE WHEN s.status = 'trialing' AND s.trial_end <= s.current_period_end THEN 'active'
                ELSE s.status END AS next_status,
           g.anchor,
           s.current_period_end AS next_start,
           -- Calendar arithmetic in UTC whatever the session's time zone (DOMAIN.md).
           CASE WHEN g.step_months = 0
                    THEN (s.current_period_end AT TIME ZONE 'UTC'
                          + make_interval(days => g.step_days)) AT TIME ZONE 'UTC'
                WHEN (g.anchor AT TIME ZONE 'UTC' + make_interval(months => k.whole * g.step_months))
                     AT TIME ZONE 'UTC' > s.current_period_end
                    THEN (g.anchor AT TIME ZONE 'UTC'
                          + make_interval(months => k.whole * g.step_months)) AT TIME ZONE 'UTC'
                ELSE (g.anchor AT TIME ZONE 'UTC'
                      + make_interval(months => (k.whole + 1) * g.step_months)) AT TIME ZONE 'UTC'
           END AS next_end
    FROM subscriptions s
    JOIN plans cp ON cp.id = s.plan_id
    JOIN plans np ON np.id = coalesce(s.pending_plan_id, s.plan_id)
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.pending_plan_id IS NOT NULL
                         AND (np.billing_interval, np.interval_count)
                             IS DISTINCT FROM (cp.billing_interval, cp.interval_count)
                    THEN s.current_period_end ELSE s.billing_anchor END AS anchor,
               (CASE np.billing_interval WHEN 'day' THEN 1 WHEN 'week' THEN 7 ELSE 0 END
                * np.interval_count)::int AS step_days,
               (CASE np.billing_interval WHEN 'month' THEN 1 WHEN 'year' THEN 12 ELSE 0 END
                * np.interval_count)::int AS step_months) g
    CROSS JOIN LATERAL (
        SELECT CASE WHEN g.step_months = 0 THEN 0
                    ELSE (((extract(year FROM s.current_period_end)
                            - extract(year FROM g.anchor)) * 12
                           + extract(month FROM s.current_period_end)
                           - extract(month FROM g.anchor))::int / g.step_months)
               END AS whole) k
    WHERE s.status IN ('trialing', 'active', 'past_due')
      AND s.current_period_end <= coalesce(:now::timestamptz, now())
    ORDER BY s.current_period_end, s.account_id, s.id
    LIMIT :batch
    FOR UPDATE OF s SKIP LOCKED
),
renewed AS (
    UPDATE subscriptions s
    SET status = CASE WHEN d.cancel THEN 'canceled'
                      WHEN d.switch THEN 'replaced'
                      ELSE d.next_status END,
        canceled_at = CASE WHEN d.cancel THEN coalesce(s.canceled_at, s.current_period_end)
                           ELSE s.canceled_at END,
        ended_at = CASE WHEN d.cancel OR d.switch THEN s.current_period_end END,
        current_period_start = CASE WHEN d.cancel OR d.switch THEN s.current_period_start
                                    ELSE d.next_start END,
        current_period_end = CASE WHEN d.cancel OR d.switch THEN s.current_period_end
                                  ELSE d.next_end END,
        updated_at = now()
    FROM due d
    WHERE s.account_id = d.account_id AND s.id = d.id
    RETURNING s.account_id, s.id, s.chain_id, s.plan_id, s.status, s.current_period_start,
              s.current_period_end, s.trial_end
),
successors AS (
    INSERT INTO subscriptions (account_id, chain_id, plan_id, status, current_period_start,
                               current_period_end, billing_anchor, trial_end, replaces_id)
    SELECT d.account_id, d.chain_id, d.next_plan_id, d.next_status, d.next_start, d.next_end,
           d.anchor, CASE WHEN d.next_status = 'trialing' THEN d.trial_end END, d.id
    FROM renewed r
    JOIN due d ON d.account_id = r.account_id AND d.id = r.id
    WHERE r.status = 'replaced'
    RETURNING account_id, id, chain_id, plan_id, current_period_start, current_period_end,
              trial_end
),
periods AS (
    -- The next period of each chain that goes on, opened by its plan.
    INSERT INTO billing_periods (account_id, chain_id, subscription_id, base_plan_id,
                                 period_start, period_end, closes_at, trial_end)
    SELECT r.account_id, r.chain_id, r.id, r.plan_id, r.current_period_start,
           r.current_period_end, r.current_period_end,
           CASE WHEN r.trial_end > r.current_period_start THEN r.trial_end END
    FROM renewed r
    WHERE r.status IN ('trialing', 'active', 'past_due')
    UNION ALL
    SELECT s.account_id, s.chain_id, s.id, s.plan_id, s.current_period_start,
           s.current_period_end, s.current_period_end,
           CASE WHEN s.trial_end > s.current_period_start THEN s.trial_end END
    FROM successors s
)
SELECT account_id, id FROM renewed ORDER BY account_id, id;
