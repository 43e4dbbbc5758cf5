-- Users: people who sign in; each belongs to one account.

-- name: create_user :one
-- Insert a user into an account and return it.
INSERT INTO users (account_id, email, display_name, role)
VALUES (:account_id, :email, :display_name, :role)
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;

-- name: get_user :one
-- One user of an account by id, deleted or not.
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE account_id = :account_id AND id = :id;

-- name: find_user_by_email :one
-- The live user with this email, compared case-insensitively, in any account
-- (login is the documented global lookup; served by users_email_key).
SELECT account_id, id, email, display_name, role, created_at, updated_at, deleted_at
FROM users
WHERE lower(email) = lower(:email) AND deleted_at IS NULL;

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
-- row if there is no such live user.
UPDATE users
SET display_name = CASE WHEN :set_display_name THEN :display_name ELSE display_name END,
    role = CASE WHEN :set_role THEN :role ELSE role END,
    email = CASE WHEN :set_email THEN :email ELSE email END,
    updated_at = now()
WHERE account_id = :account_id AND id = :id AND deleted_at IS NULL
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;

-- name: delete_user :one
-- Soft-delete a live user (frees the email for a new sign-up); no row if the
-- user is missing or already deleted.
UPDATE users
SET deleted_at = now(), updated_at = now()
WHERE account_id = :account_id AND id = :id AND deleted_at IS NULL
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;

-- name: restore_user :one
-- Undo a soft delete; no row if the user is missing or not deleted. Fails with
-- users_email_key if a live user has taken the email meanwhile.
UPDATE users
SET deleted_at = NULL, updated_at = now()
WHERE account_id = :account_id AND id = :id AND deleted_at IS NOT NULL
RETURNING account_id, id, email, display_name, role, created_at, updated_at, deleted_at;
