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
