-- Usage events: metered facts, stored exactly once per (account, idempotency key).

-- name: record_usage_event :one
-- Store one event unless its idempotency key was seen before for the account
-- (whatever the timestamp). The account and meter are checked here (the event
-- tables carry no foreign keys). The key and the event go in one statement: a
-- concurrent sender of the same key waits for this one and then stores
-- nothing. No row back means a duplicate, or an unknown account or meter.
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
)
INSERT INTO usage_events
    (account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at, idempotency_key,
     properties)
SELECT k.account_id, k.event_id, :user_id, :api_key_id, t.meter_code, :quantity, k.occurred_at,
       k.idempotency_key, :properties
FROM new_key k
CROSS JOIN target t
RETURNING account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at, received_at,
          idempotency_key, properties;

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

-- name: create_usage_staging :exec
-- A staging table for one batch, private to the transaction and dropped at its
-- end (so it also works behind PgBouncer in transaction mode).
CREATE TEMP TABLE usage_staging (
    idx              integer NOT NULL,
    account_id       bigint NOT NULL,
    user_id          bigint,
    api_key_id       bigint,
    meter_code       text NOT NULL,
    quantity         numeric NOT NULL,
    occurred_at      timestamptz NOT NULL,
    idempotency_key  text NOT NULL,
    properties       jsonb NOT NULL
) ON COMMIT DROP;

-- name: copy_usage_staging :copy
-- Binary COPY of a batch into the staging table.
COPY usage_staging (idx, account_id, user_id, api_key_id, meter_code, quantity, occurred_at,
                    idempotency_key, properties) FROM STDIN (FORMAT BINARY);

-- name: find_unknown_usage_targets :many
-- Staged events whose account or meter does not exist, with the reason.
SELECT s.idx,
       CASE WHEN a.id IS NULL THEN 'unknown account' ELSE 'unknown meter' END AS reason
FROM usage_staging s
LEFT JOIN accounts a ON a.id = s.account_id
LEFT JOIN meters m ON m.code = s.meter_code
WHERE a.id IS NULL OR m.code IS NULL
ORDER BY s.idx;

-- name: drop_usage_staging :exec
-- Drop the batch's staging table now, so that a unit of work can record several
-- batches (ON COMMIT DROP alone would keep it until the transaction ends).
DROP TABLE usage_staging;

-- name: insert_staged_usage :scalar
-- Store every staged event of a known account and meter whose key is new: the
-- first of a key within the batch wins, a key stored before (by any batch,
-- with any timestamp) is a duplicate. One statement, so two batches racing
-- on a key store it once. Returns how many events were stored.
WITH candidates AS (
    SELECT DISTINCT ON (s.account_id, s.idempotency_key)
           s.account_id, s.user_id, s.api_key_id, s.meter_code, s.quantity, s.occurred_at,
           s.idempotency_key, s.properties
    FROM usage_staging s
    JOIN accounts a ON a.id = s.account_id
    JOIN meters m ON m.code = s.meter_code
    ORDER BY s.account_id, s.idempotency_key, s.idx
), new_keys AS (
    INSERT INTO usage_event_keys (account_id, idempotency_key, event_id, occurred_at)
    SELECT account_id, idempotency_key, nextval('usage_events_id_seq'), occurred_at
    FROM candidates
    ON CONFLICT (account_id, idempotency_key) DO NOTHING
    RETURNING account_id, idempotency_key, event_id
), stored AS (
    INSERT INTO usage_events
        (account_id, id, user_id, api_key_id, meter_code, quantity, occurred_at,
         idempotency_key, properties)
    SELECT c.account_id, k.event_id, c.user_id, c.api_key_id, c.meter_code, c.quantity,
           c.occurred_at, c.idempotency_key, c.properties
    FROM candidates c
    JOIN new_keys k USING (account_id, idempotency_key)
    RETURNING 1
)
SELECT count(*) FROM stored;
