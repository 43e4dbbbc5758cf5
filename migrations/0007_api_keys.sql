-- depends: 0001_accounts_users
-- API keys for enterprise access. The secret is shown once and never stored:
-- only its SHA-256 (secret_hash) is kept. Authentication looks the hash up
-- across accounts (api_keys_secret_hash_key), the documented global exception
-- (moved to the lookup table api_key_hashes by 0019_global_lookups).

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   api_keys_pkey used by get_api_key, list_api_keys, touch_api_key, revoke_api_key,
--     lock_api_key_for_rotation, rotate_api_key, list_api_key_hashes,
--     list_plan_subscriber_cache_keys
CREATE TABLE api_keys (
    account_id       bigint NOT NULL REFERENCES accounts (id),
    id               bigint GENERATED ALWAYS AS IDENTITY,
    name             text NOT NULL CONSTRAINT api_keys_name_check
                         CHECK (length(name) BETWEEN 1 AND 200),
    -- What a person sees to recognise the key: "dl_live_AbCd" (never enough to use it).
    display_prefix   text NOT NULL CONSTRAINT api_keys_display_prefix_check
                         CHECK (length(display_prefix) BETWEEN 4 AND 32),
    secret_hash      bytea NOT NULL CONSTRAINT api_keys_secret_hash_check
                         CHECK (octet_length(secret_hash) = 32),
    environment      text NOT NULL CONSTRAINT api_keys_environment_check
                         CHECK (environment IN ('live', 'test')),
    scopes           text[] NOT NULL DEFAULT '{}' CONSTRAINT api_keys_scopes_check
                         CHECK (cardinality(scopes) <= 64 AND array_position(scopes, NULL) IS NULL),
    created_by       bigint,
    rotated_from_id  bigint,
    expires_at       timestamptz,
    revoked_at       timestamptz,
    last_used_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_keys_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT api_keys_created_by_fkey FOREIGN KEY (account_id, created_by)
        REFERENCES users (account_id, id),
    CONSTRAINT api_keys_rotated_from_fkey FOREIGN KEY (account_id, rotated_from_id)
        REFERENCES api_keys (account_id, id),
    CONSTRAINT api_keys_expiry_check CHECK (expires_at > created_at),
    CONSTRAINT api_keys_rotated_from_other_check CHECK (rotated_from_id <> id)
);

-- Dropped by 0019_global_lookups: a unique key without account_id cannot be
-- enforced on a cluster; the lookup table api_key_hashes holds it now (its
-- primary key carries the name api_keys_secret_hash_key).
CREATE UNIQUE INDEX api_keys_secret_hash_key ON api_keys (secret_hash);
-- Dropped by 0011_index_review: no named query reads keys by created_at, and
-- api_keys_pkey serves every read of an account's keys.
CREATE INDEX api_keys_account_idx ON api_keys (account_id, created_at);
-- No named query reads keys by creator: this serves the foreign key.
-- used by: FK api_keys_created_by_fkey
CREATE INDEX api_keys_created_by_idx ON api_keys (account_id, created_by) WHERE created_by IS NOT NULL;
-- No named query follows a rotation backwards: this serves the foreign key.
-- used by: FK api_keys_rotated_from_fkey
CREATE INDEX api_keys_rotated_from_idx ON api_keys (account_id, rotated_from_id)
    WHERE rotated_from_id IS NOT NULL;
