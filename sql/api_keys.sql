-- API keys: only SHA-256(secret) is stored; the secret itself never reaches the database.
-- Every query is scoped by account_id except authentication, which finds the account of
-- a key by the hash of its secret across accounts (the lookup table api_key_hashes, whose
-- primary key api_keys_secret_hash_key is the documented exception), then reads the key in
-- that account.
-- Validity is judged by the database clock (now()) everywhere.

-- name: reserve_api_key_hash :exec
-- Reserve a secret hash for the account before a key of it gets the hash (create,
-- rotate): fails with api_keys_secret_hash_key when any account holds it. A hash is
-- never released: revoked and expired keys keep theirs.
INSERT INTO api_key_hashes (secret_hash, account_id)
VALUES (:secret_hash::bytea, :account_id::bigint);

-- name: create_api_key :one
-- Insert a key and return it (no hash); its hash must be reserved for the account
-- first (reserve_api_key_hash), or api_keys_secret_hash_fkey refuses it. No row when
-- :expires_at is not in the future, so a past expiry is refused by the database clock
-- instead of a CHECK error.
INSERT INTO api_keys
    (account_id, name, display_prefix, secret_hash, environment, scopes, created_by, expires_at)
SELECT :account_id::bigint, :name::text, :display_prefix::text, :secret_hash::bytea,
       :environment::text, :scopes::text[], :created_by::bigint, :expires_at::timestamptz
WHERE :expires_at::timestamptz IS NULL OR :expires_at::timestamptz > now()
RETURNING account_id, id, name, display_prefix, environment, scopes, created_by,
          rotated_from_id, expires_at, revoked_at, last_used_at, created_at;

-- name: get_api_key :one
-- One key of an account by id, whatever its state (no hash).
SELECT account_id, id, name, display_prefix, environment, scopes, created_by,
       rotated_from_id, expires_at, revoked_at, last_used_at, created_at
FROM api_keys
WHERE account_id = :account_id AND id = :id;

-- name: list_api_keys :many
-- A page of an account's keys, newest first (id descending), before the keyset cursor
-- :after_id; revoked keys only when :include_revoked. Served by api_keys_pkey.
SELECT account_id, id, name, display_prefix, environment, scopes, created_by,
       rotated_from_id, expires_at, revoked_at, last_used_at, created_at
FROM api_keys
WHERE account_id = :account_id
  AND id < :after_id
  AND (:include_revoked::boolean OR revoked_at IS NULL)
ORDER BY id DESC
LIMIT :limit;

-- name: find_api_key_account :scalar
-- The account of the key whose secret hashes to :secret_hash, live or not, in any
-- account: one probe of the lookup table api_key_hashes. Then find_api_key_credential
-- reads the key on that account's shard.
SELECT account_id
FROM api_key_hashes
WHERE secret_hash = :secret_hash::bytea;

-- name: find_api_key_credential :one
-- The account's live (unrevoked, unexpired) key whose secret hashes to :secret_hash:
-- one probe of api_keys_secret_hash_account_key, then the account's primary key. Keys
-- of a suspended, closed or deleted account do not authenticate. touch_due says
-- whether last_used_at is older than a minute, so that most authentications are this
-- read (and find_api_key_account's).
SELECT k.account_id, k.id, k.secret_hash, k.environment, k.scopes, k.expires_at,
       (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute') AS touch_due
FROM api_keys k
JOIN accounts a ON a.id = k.account_id
WHERE k.account_id = :account_id::bigint
  AND a.id = :account_id::bigint
  AND k.secret_hash = :secret_hash::bytea
  AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now())
  AND a.status = 'active'
  AND a.deleted_at IS NULL;

-- name: touch_api_key :execrows
-- Record a use of the key, at most once a minute: a no-op when last_used_at is recent.
-- A row locked by another writer (a concurrent touch, a revocation) is skipped rather
-- than waited for, so authentication never queues behind a lock. The outer UPDATE is
-- pinned to the account too: on Citus the locking subquery is planned on its own, and a
-- join to its result alone sent the UPDATE to every shard (32 tasks instead of 1).
UPDATE api_keys AS k
SET last_used_at = now()
FROM (
    SELECT account_id, id
    FROM api_keys
    WHERE account_id = :account_id
      AND id = :id
      AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
    FOR UPDATE SKIP LOCKED
) AS due
WHERE k.account_id = :account_id AND k.id = due.id AND k.account_id = due.account_id;

-- name: revoke_api_key :one
-- Revoke a key of the account and return it; revoking again keeps the first revoked_at.
-- No row when the account has no such key. (now() is read in FROM: Citus refuses
-- a non-immutable function in a COALESCE of an UPDATE's SET.)
UPDATE api_keys
SET revoked_at = coalesce(revoked_at, c.at)
FROM (SELECT now() AS at) c
WHERE account_id = :account_id AND id = :id
RETURNING account_id, id, name, display_prefix, environment, scopes, created_by,
          rotated_from_id, expires_at, revoked_at, last_used_at, created_at;

-- name: lock_api_key_for_rotation :one
-- Lock a key of the account against concurrent rotation and revocation, and say whether
-- it is 'active', 'revoked' or 'expired' (judged after any wait for the lock).
SELECT account_id, id, environment,
       CASE
           WHEN revoked_at IS NOT NULL THEN 'revoked'
           WHEN expires_at <= now() THEN 'expired'
           ELSE 'active'
       END AS state
FROM api_keys
WHERE account_id = :account_id AND id = :id
FOR UPDATE;

-- name: rotate_api_key :one
-- Insert the successor of a live key (same name, environment and scopes; rotated_from_id
-- is the old key) and make the old key expire :overlap from now, never later than it
-- already would. A key created in this same transaction gets created_at plus 1 µs at
-- least, since the schema wants expires_at > created_at. No row when the old key is not
-- live, or not in :environment (the one the new secret was made for). The new hash
-- must be reserved for the account first (reserve_api_key_hash). Returns the new key
-- (no hash). For Citus: the microsecond is added in UTC, as the overlap is
-- (timestamptz + interval is STABLE, which Citus refuses on a column in an
-- UPDATE), and the insert is a CTE under a SELECT (Citus cannot plan a
-- top-level INSERT ... SELECT from a CTE with parameters).
WITH old AS (
    UPDATE api_keys
    SET expires_at = least(
        expires_at,
        greatest((now() AT TIME ZONE 'UTC' + :overlap::interval) AT TIME ZONE 'UTC',
                 (created_at AT TIME ZONE 'UTC' + interval '1 microsecond') AT TIME ZONE 'UTC')
    )
    WHERE account_id = :account_id
      AND id = :id
      AND environment = :environment::text
      AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > now())
    RETURNING account_id, id, name, environment, scopes, created_by
), successor AS (
    INSERT INTO api_keys
        (account_id, name, display_prefix, secret_hash, environment, scopes, created_by,
         rotated_from_id)
    SELECT account_id, name, :display_prefix::text, :secret_hash::bytea, environment, scopes,
           coalesce(:created_by::bigint, created_by), id
    FROM old
    RETURNING account_id, id, name, display_prefix, environment, scopes, created_by,
              rotated_from_id, expires_at, revoked_at, last_used_at, created_at
)
SELECT account_id, id, name, display_prefix, environment, scopes, created_by, rotated_from_id,
       expires_at, revoked_at, last_used_at, created_at
FROM successor;

-- name: list_api_key_hashes :many
-- The secret hashes of an account's keys (all, or only :key_id when not null):
-- what cache invalidation needs to find their cached auth contexts. One branch per
-- case: a prepared statement's generic plan cannot probe api_keys_pkey for
-- `:key_id IS NULL OR id = :key_id`, so it read all of the account's keys for one
-- (3.5 ms instead of 0.3 for 20k keys).
SELECT secret_hash
FROM api_keys
WHERE account_id = :account_id AND id = :key_id::bigint
UNION ALL
SELECT secret_hash
FROM api_keys
WHERE account_id = :account_id AND :key_id::bigint IS NULL;
