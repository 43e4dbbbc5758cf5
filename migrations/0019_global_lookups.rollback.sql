-- Back to the unique indexes across accounts on users and api_keys; the lookup
-- tables go (what they hold is derived from users and api_keys). Refused if the
-- live emails or the hashes are no longer unique across accounts.
-- squawk-ignore-file ban-drop-table, ban-drop-column, ban-drop-constraint, require-concurrent-index-creation, require-concurrent-index-deletion
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

ALTER TABLE api_keys DROP CONSTRAINT api_keys_secret_hash_fkey;
DROP INDEX api_keys_secret_hash_account_key;
DROP TABLE api_key_hashes;
CREATE UNIQUE INDEX api_keys_secret_hash_key ON api_keys (secret_hash);

ALTER TABLE users DROP CONSTRAINT users_live_email_fkey;
DROP INDEX users_live_email_key;
ALTER TABLE users DROP COLUMN live_email;
DROP TABLE user_emails;
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE deleted_at IS NULL;
