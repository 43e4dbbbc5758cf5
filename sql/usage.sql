-- Usage events: metered facts, stored exactly once per (account, idempotency key).

-- name: record_usage_event :one
-- Store one event unless its idempotency key was seen before for the account
-- (whatever the timestamp), and queue its hour bucket for the rollups. The
-- account and meter are checked here (the event tables carry no foreign keys).
-- The key, the event and the queued bucket go in one statement: a concurrent
-- sender of the same key waits for this one and then stores nothing. No row
-- back means a duplicate, or an unknown account or meter.
WITH target AS (
    SELECT a.id AS account_id, m.code AS meter_code
    FROM accounts a
    JOIN meters m ON m.code = :meter_code
    WHERE a.id = :account_id
), new_key AS (
    INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)
    SELECT t.account_id, :idempotency_key, nextval('usage_events_id_seq'), :occurred_at
    FROM target t
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING account_id, idempotency_key, event_id, occurred_at
), stored AS (
    INSERT INTO usage_events
        (account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at,
         idempotency_key, properties)
    SELECT k.account_id, k.event_id, :user_id, :api_key_id, t.meter_code, :quantity,
           k.occurred_at, k.idempotency_key, :properties
    FROM new_key k
    CROSS JOIN target t
    RETURNING account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at,
              received_at, idempotency_key, properties
), queued AS (
    INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
    SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
    FROM stored
)
SELECT account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at, received_at,
       idempotency_key, properties
FROM stored;

-- name: get_usage_event_by_key :one
-- The event stored under an idempotency key, found through the key table (one
-- partition probe, wherever the event's month is).
SELECT e.account_id, e.id, e.user_id, e.api_key_id, e.meter_code, e.quantity, e.occurred_at,
       e.received_at, e.idempotency_key, e.properties
FROM usage_event_keys k
JOIN usage_events e
  ON e.account_id = k.account_id AND e.occurred_at = k.occurred_at AND e.id = k.event_id
WHERE k.account_id = :account_id AND k.idempotency_key = :idempotency_key;

-- name: usage_target_exists :scalar
-- Whether both the account and the meter exist (record_usage_event stores
-- nothing for an unknown one, as for a duplicate; this tells them apart).
SELECT EXISTS (SELECT 1 FROM accounts WHERE id = :account_id)
   AND EXISTS (SELECT 1 FROM meters WHERE code = :meter_code);

-- name: find_known_accounts :scalar
-- Which of these accounts exist (a batch's events of any other are rejected).
SELECT coalesce(array_agg(id), '{}') FROM accounts WHERE id = ANY(:account_ids);

-- name: find_known_meters :scalar
-- Which of these meters exist (a batch's events of any other are rejected).
SELECT coalesce(array_agg(code), '{}') FROM meters WHERE code = ANY(:meter_codes);

-- name: reserve_usage_event_ids :scalar
-- Draw :count event ids in one round trip, for a batch's fast path.
SELECT array_agg(nextval('usage_events_id_seq')) FROM generate_series(1, :count);

-- name: copy_usage_event_keys :copy
-- The fast path of a batch, for when none of its keys was stored before (the
-- usual case: the client already dropped the batch's own repeats). The keys go
-- straight into the key table by binary COPY, sorted by account and key in
-- byte order; the primary key refuses any key stored before, or being stored by
-- a concurrent batch (after waiting for it), and the caller then rolls back to
-- its savepoint and takes the staged path (insert_staged_usage). Sorted keys
-- make two batches sharing keys wait on each other in one order: no deadlock.
COPY usage_event_keys (account_id, idempotency_key, event_id, occurred_at)
    FROM STDIN (FORMAT BINARY);

-- name: copy_usage_events :copy
-- The fast path's events, by binary COPY, after their keys.
COPY usage_events (account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at,
                   idempotency_key, properties) FROM STDIN (FORMAT BINARY);

-- name: queue_usage_hours :exec
-- Queue the hour buckets of events stored by COPY (the fast path, in its
-- transaction), given as parallel arrays, for the next rollup refresh.
INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
SELECT account_id, meter_code, hour_start
FROM unnest(:account_ids::bigint[], :meter_codes::text[], :hour_starts::timestamptz[])
    AS b (account_id, meter_code, hour_start);

-- name: create_usage_staging :exec
-- The staged path's table for one batch, private to the transaction and
-- dropped at its end (so it also works behind PgBouncer in transaction mode). Each staged
-- event draws its id as it is copied in (an id drawn for a duplicate is just a
-- gap), so the stored keys can be matched back to their events by id.
-- properties arrive as JSON text: cast once by the insert, and "{}" costs the
-- client nothing to encode.
CREATE TEMP TABLE usage_staging (
    event_id         bigint NOT NULL DEFAULT nextval('usage_events_id_seq'),
    account_id       bigint NOT NULL,
    user_id          bigint,
    api_key_id       bigint,
    meter_code       text NOT NULL,
    quantity         numeric NOT NULL,
    occurred_at      timestamptz NOT NULL,
    idempotency_key  text NOT NULL,
    properties       text NOT NULL
) ON COMMIT DROP;

-- name: copy_usage_staging :copy
-- Binary COPY of a batch into the staging table.
COPY usage_staging (account_id, user_id, api_key_id, meter_code, quantity, occurred_at,
                    idempotency_key, properties) FROM STDIN (FORMAT BINARY);

-- name: drop_usage_staging :exec
-- Drop the batch's staging table now, so that a unit of work can record several
-- batches (ON COMMIT DROP alone would keep it until the transaction ends).
DROP TABLE usage_staging;

-- name: set_batch_settings :exec
-- For this transaction only: room for the batch's sort and hash join in
-- memory, and no JIT (the planner's row estimates for a fresh staging table
-- are far off, and compiling the plan cost ~0.9 s on a 100k batch).
SELECT set_config('work_mem', '32MB', true), set_config('jit', 'off', true);

-- name: insert_staged_usage :scalar
-- The staged path of a batch (see copy_usage_event_keys for the fast one).
-- Store every staged event of a known account and meter whose key is new. The
-- batch holds each key once (the client keeps the first of a key within the
-- batch); a key stored before, by any batch and with any timestamp, is a
-- duplicate. One statement, so two batches racing on a key store it once:
-- the key insert's ON CONFLICT waits for the other and then skips it. Keys
-- go in sorted in byte order, as on the fast path, so two batches sharing keys
-- wait on each other in one order and cannot deadlock. The stored keys are matched back to their staged events by event id (a hash
-- join on a bigint). The stored events' hour buckets are queued for the rollups
-- in the same statement. Returns how many events were stored. The accounts are
-- looked up by the batch's account ids, not joined to the staging rows: Citus
-- cannot join a distributed table to a temporary one, but reads the accounts
-- of a list it is given.
WITH new_keys AS (
    INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)
    SELECT s.account_id, s.idempotency_key, s.event_id, s.occurred_at
    FROM usage_staging s
    WHERE s.account_id IN (
              SELECT a.id FROM accounts a WHERE a.id IN (SELECT account_id FROM usage_staging))
      AND EXISTS (SELECT 1 FROM meters m WHERE m.code = s.meter_code)
    ORDER BY s.account_id, s.idempotency_key COLLATE "C"
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING event_id
), stored AS (
    INSERT INTO usage_events
        (account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at,
         idempotency_key, properties)
    SELECT s.account_id, s.event_id, s.user_id, s.api_key_id, s.meter_code, s.quantity,
           s.occurred_at, s.idempotency_key, s.properties::jsonb
    FROM usage_staging s
    JOIN new_keys k ON k.event_id = s.event_id
    RETURNING account_id, meter_code, occurred_at
), queued AS (
    INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
    SELECT DISTINCT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
    FROM stored
)
SELECT count(*) FROM stored;

-- name: cancel_usage_event :one
-- Cancel the event stored under an idempotency key, if it occurred at or after
-- :oldest_accepted (the accepted window): store the cancellation (the audit
-- record) and queue the event's hour bucket, in one statement, so the next
-- rollup refresh recomputes that hour without the event and reports read the
-- hour from raw events (which leave it out) until then. usage_events and the
-- key are not touched: the key stays consumed. Cancelling twice stores once
-- (ON CONFLICT on the primary key; a concurrent canceller waits for this one,
-- then stores nothing). No row back: no such key or event, an event outside
-- the window, or already cancelled.
WITH target AS (
    SELECT k.account_id, k.event_id, e.occurred_at, e.meter_code, e.quantity, k.idempotency_key
    FROM usage_event_keys k
    JOIN usage_events e
      ON e.account_id = k.account_id AND e.occurred_at = k.occurred_at AND e.id = k.event_id
    WHERE k.account_id = :account_id AND k.idempotency_key = :idempotency_key
      AND k.occurred_at >= :oldest_accepted
), cancelled AS (
    INSERT INTO usage_cancellations
        (account_id, event_id, occurred_at, meter_code, quantity, idempotency_key, reason,
         cancelled_by)
    SELECT account_id, event_id, occurred_at, meter_code, quantity, idempotency_key, :reason,
           :cancelled_by
    FROM target
    ON CONFLICT (account_id, event_id) DO NOTHING
    RETURNING account_id, event_id, occurred_at, meter_code, quantity, idempotency_key, reason,
              cancelled_by, cancelled_at
), queued AS (
    INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
    SELECT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
    FROM cancelled
)
SELECT account_id, event_id, occurred_at, meter_code, quantity, idempotency_key, reason,
       cancelled_by, cancelled_at
FROM cancelled;

-- name: get_usage_cancellation_by_key :one
-- The cancellation of the event stored under an idempotency key, if it has one
-- (found while the key is kept: until the event's month is archived).
SELECT c.account_id, c.event_id, c.occurred_at, c.meter_code, c.quantity, c.idempotency_key,
       c.reason, c.cancelled_by, c.cancelled_at
FROM usage_event_keys k
JOIN usage_cancellations c ON c.account_id = k.account_id AND c.event_id = k.event_id
WHERE k.account_id = :account_id AND k.idempotency_key = :idempotency_key;
