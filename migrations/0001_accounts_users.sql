-- Accounts (the tenants) and their users.
--
-- Tenancy (DOMAIN.md rule 1): users carry account_id in their primary key and
-- every unique constraint, so the table can later be distributed by account_id.
-- The one global lookup is login by email: users_email_key is unique across
-- accounts on lower(email), a documented exception to the rule (moved to the
-- lookup table user_emails by 0019_global_lookups).

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   accounts_pkey used by get_account, get_accounts_by_ids, account_exists, list_accounts,
--     update_account, delete_account, restore_account, find_api_key_credential,
--     usage_target_exists, record_usage_event, find_known_accounts, insert_staged_usage
CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CONSTRAINT accounts_name_check
                    CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    status      text NOT NULL DEFAULT 'active' CONSTRAINT accounts_status_check
                    CHECK (status IN ('active', 'suspended', 'closed')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CONSTRAINT accounts_updated_after_created CHECK (updated_at >= created_at)
);

-- indexes:
--   users_pkey used by get_user, list_users, user_exists, count_users, search_users,
--     update_user, delete_user, restore_user
CREATE TABLE users (
    account_id    bigint NOT NULL REFERENCES accounts (id),
    id            bigint GENERATED ALWAYS AS IDENTITY,
    email         text NOT NULL CONSTRAINT users_email_check
                      CHECK (length(email) BETWEEN 3 AND 320 AND email LIKE '%_@_%'),
    display_name  text NOT NULL DEFAULT '' CONSTRAINT users_display_name_check
                      CHECK (length(display_name) <= 200),
    role          text NOT NULL DEFAULT 'member' CONSTRAINT users_role_check
                      CHECK (role IN ('owner', 'admin', 'member')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    CONSTRAINT users_pkey PRIMARY KEY (account_id, id)
);

-- Login looks a user up by email across accounts (the documented global
-- exception). A soft-deleted user frees the address for a new sign-up.
-- Dropped by 0019_global_lookups: a unique key without account_id cannot be
-- enforced on a cluster; the lookup table user_emails holds it now (its primary
-- key carries the name users_email_key).
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE deleted_at IS NULL;
