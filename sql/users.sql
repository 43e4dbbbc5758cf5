-- Users: people who sign in; each belongs to one account.

-- name: create_user :one
-- Insert a user into an account and return it; its email must be reserved for the
-- account first (reserve_user_email), or users_live_email_fkey refuses it.
INSERT INTO users (account_id, email, display_name, role)
VALUES (:account_id, :email, :display_name, :role)
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;

-- name: get_user :one
-- One user of an account by id, deleted or not.
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE account_id = :account_id AND id = :id;

-- name: find_user_email_account :scalar
-- The account whose live user has this email, compared case-insensitively (login is
-- the documented global lookup: the lookup table user_emails, one probe of its key).
-- Then find_user_by_email reads the user on that account's shard.
SELECT account_id
FROM user_emails
WHERE email = lower(:email);

-- name: find_user_by_email :one
-- The account's live user with this email, compared case-insensitively (live_email
-- is lower(email) while the user is live; served by users_live_email_key).
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE account_id = :account_id AND live_email = lower(:email);

-- name: reserve_user_email :exec
-- Reserve lower(:email) for the account before a user of it gets the address
-- (create, restore, email change): fails with users_email_key when any account
-- holds it. Nothing to do when it is lower(:current_email) already (an email change
-- of letter case only; NULL when the user has no live address yet).
INSERT INTO user_emails (email, account_id)
SELECT lower(:email::text), :account_id::bigint
WHERE lower(:email::text) IS DISTINCT FROM lower(:current_email::text);

-- name: release_user_email :execrows
-- Free lower(:email) of the account once its user no longer has it (soft delete,
-- email change), unless the user keeps the address: :new_email is it in another
-- letter case (NULL: nothing kept).
DELETE FROM user_emails
WHERE email = lower(:email::text)
  AND account_id = :account_id::bigint
  AND lower(:email::text) IS DISTINCT FROM lower(:new_email::text);

-- name: lock_user :one
-- One user of an account by id, deleted or not, locked against concurrent changes
-- until the transaction ends (an email change or a restore reads the address first).
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE account_id = :account_id AND id = :id
FOR UPDATE;

-- name: list_users :many
-- A keyset page of an account's live users in id order, after :after_id.
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE account_id = :account_id AND id > :after_id AND deleted_at IS NULL
ORDER BY id
LIMIT :limit;

-- name: user_exists :scalar
-- Whether the account has a live user with this id.
SELECT EXISTS (
    SELECT 1 FROM users WHERE account_id = :account_id AND id = :id AND deleted_at IS NULL
);

-- name: count_users :scalar
-- How many live users an account has.
SELECT count(*)
FROM users
WHERE account_id = :account_id AND deleted_at IS NULL;

-- name: search_users :many
-- An account's live users whose email or name contains :term (LIKE wildcards in
-- :term are matched literally).
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE account_id = :account_id
  AND deleted_at IS NULL
  AND (email ILIKE '%' || :term || '%' ESCAPE '\' OR display_name ILIKE '%' || :term || '%' ESCAPE '\')
ORDER BY id
LIMIT :limit;

-- name: update_user :one
-- Change the named profile fields of a live user (set_<field> says which); no
-- row if there is no such live user. A new email must be reserved first.
UPDATE users
SET display_name = CASE WHEN :set_display_name THEN :display_name ELSE display_name END,
    role = CASE WHEN :set_role THEN :role ELSE role END,
    email = CASE WHEN :set_email THEN :email ELSE email END,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND deleted_at IS NULL
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;

-- name: delete_user :one
-- Soft-delete a live user (then release_user_email frees the address for a new
-- sign-up); no row if the user is missing or already deleted.
UPDATE users
SET deleted_at = now(), updated_at = now()
WHERE account_id = :account_id AND id = :id AND deleted_at IS NULL
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;

-- name: restore_user :one
-- Undo a soft delete; no row if the user is missing or not deleted. The email
-- must be reserved again first (reserve_user_email fails with users_email_key if a
-- live user has taken it meanwhile).
UPDATE users
SET deleted_at = NULL, updated_at = now()
WHERE account_id = :account_id AND id = :id AND deleted_at IS NOT NULL
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;
