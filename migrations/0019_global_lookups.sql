-- depends: 0018_rollup_queues_by_account
-- Global lookups that hold on a cluster: login by email and authentication by
-- API-key hash, without a unique key that lacks account_id.
--
-- users_email_key (a unique index on users (lower(email)) of live users) and
-- api_keys_secret_hash_key (unique on api_keys (secret_hash)) were the two
-- unique keys across accounts. On Citus, sharded by account_id, neither can be
-- enforced. Each becomes the primary key of a lookup table that holds one row
-- per key and names the account that owns it; on Citus these are reference
-- tables (a copy on every node; written at sign-up, email change, soft delete
-- and key creation only). The primary keys keep the old names, so a duplicate
-- is still AlreadyExists with constraint users_email_key or
-- api_keys_secret_hash_key (its table is now the lookup table).
--
-- user_emails      lower(email) of every live user -> its account
-- api_key_hashes   secret_hash of every key (revoked and expired ones too: a
--                  hash is never reused) -> its account
--
-- The tenant rows reference their lookup row, so the pair stays consistent
-- whatever writes it (raw SQL included):
--   users.live_email   generated: lower(email) while the user is live, NULL once
--                      soft-deleted; users_live_email_fkey points it at
--                      user_emails (email, account_id), users_live_email_key
--                      makes it unique in the account.
--   api_keys           api_keys_secret_hash_fkey points (secret_hash, account_id)
--                      at api_key_hashes; api_keys_secret_hash_account_key makes
--                      it unique in the account.
-- So a live user's email (a key's hash) is reserved for one account by the
-- lookup's primary key, and held by at most one user (key) of that account.
-- The foreign keys point from the tenant table to the lookup (distributed ->
-- reference, which Citus supports); the lookups reference nothing (a reference
-- table may not reference a distributed one). They carry no user or key id: the
-- library writes the lookup row first (the foreign keys are checked at once, and
-- the id does not exist yet), then the tenant row, in one transaction but in
-- separate statements (Citus refuses one statement that modifies tables
-- distributed in different ways). A deferred foreign key on the id would let the
-- tenant row go first, but on Citus a deferred violation surfaces at commit as
-- "could not commit transaction for shard ...", without the constraint.
--
-- What a raw statement that skips the lookup gets: a live user with an email
-- another account holds, or an email change or restore without a lookup row,
-- fails users_live_email_fkey (ReferenceViolation); a second live user with the
-- email in the same account fails users_live_email_key; a second lookup row
-- fails users_email_key (AlreadyExists). Deleting a lookup row a live user still
-- references fails users_live_email_fkey. A soft delete by raw SQL that leaves
-- the lookup row behind keeps the address reserved until that row is deleted
-- (an orphan never makes two live users share an address).
--
-- Locks: users and api_keys are held ACCESS EXCLUSIVE from the first statement
-- (dropping the old index) to the commit, so no row can slip in between the
-- backfill and the foreign keys; both tables hold a row per person or key, and
-- adding live_email rewrites users once; NOT VALID would save no lock. Hence
-- the squawk exceptions.
-- squawk-ignore-file adding-field-with-default, adding-foreign-key-constraint, constraint-missing-not-valid, require-concurrent-index-creation, require-concurrent-index-deletion, disallowed-unique-constraint
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP INDEX users_email_key;
DROP INDEX api_keys_secret_hash_key;

-- -- login by email ---------------------------------------------------------------------------
-- indexes:
--   users_email_key used by reserve_user_email (one live user per email in all accounts)
--   user_emails_account_key used by find_user_email_account (index-only), release_user_email,
--     create_user, update_user, restore_user (the key users_live_email_fkey references: its
--     checks probe it)
CREATE TABLE user_emails (
    email       text NOT NULL CONSTRAINT user_emails_email_check CHECK (email = lower(email)),
    account_id  bigint NOT NULL,
    CONSTRAINT users_email_key PRIMARY KEY (email),
    CONSTRAINT user_emails_account_key UNIQUE (email, account_id)
);
INSERT INTO user_emails (email, account_id)
SELECT lower(email), account_id FROM users WHERE deleted_at IS NULL;

ALTER TABLE users ADD COLUMN live_email text
    GENERATED ALWAYS AS (CASE WHEN deleted_at IS NULL THEN lower(email) END) STORED;
-- used by: find_user_by_email, create_user, update_user, restore_user (one live user per
--   email in the account), release_user_email (the check of users_live_email_fkey),
--   FK users_live_email_fkey
-- Led by live_email: led by account_id it would compete with users_pkey for the reads
-- of an account's users.
CREATE UNIQUE INDEX users_live_email_key ON users (live_email, account_id)
    WHERE live_email IS NOT NULL;
ALTER TABLE users ADD CONSTRAINT users_live_email_fkey
    FOREIGN KEY (live_email, account_id) REFERENCES user_emails (email, account_id);

-- -- authentication by key hash ---------------------------------------------------------------
-- indexes:
--   api_keys_secret_hash_key used by reserve_api_key_hash (a hash names one key in all
--     accounts)
--   api_key_hashes_account_key used by find_api_key_account (index-only), create_api_key,
--     rotate_api_key (the key api_keys_secret_hash_fkey references: its checks probe it)
CREATE TABLE api_key_hashes (
    secret_hash  bytea NOT NULL,
    account_id   bigint NOT NULL,
    CONSTRAINT api_keys_secret_hash_key PRIMARY KEY (secret_hash),
    CONSTRAINT api_key_hashes_account_key UNIQUE (secret_hash, account_id)
);
INSERT INTO api_key_hashes (secret_hash, account_id)
SELECT secret_hash, account_id FROM api_keys;

-- used by: find_api_key_credential, create_api_key, rotate_api_key (one key per hash in
--   the account), FK api_keys_secret_hash_fkey
-- Led by secret_hash: led by account_id it would compete with api_keys_pkey for the
-- reads of an account's keys (list_api_key_hashes of one key).
CREATE UNIQUE INDEX api_keys_secret_hash_account_key ON api_keys (secret_hash, account_id);
ALTER TABLE api_keys ADD CONSTRAINT api_keys_secret_hash_fkey
    FOREIGN KEY (secret_hash, account_id) REFERENCES api_key_hashes (secret_hash, account_id);
