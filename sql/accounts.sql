-- Accounts: the tenants. Every other aggregate hangs off accounts.id.

-- name: create_account :one
-- Insert an account and return it.
INSERT INTO accounts (name)
VALUES (:name)
RETURNING id, name, status, created_at, updated_at, deleted_at;

-- name: get_account :one
-- One account by id, deleted or not.
SELECT id, name, status, created_at, updated_at, deleted_at
FROM accounts
WHERE id = :id;

-- name: get_accounts_by_ids :many
-- The accounts whose ids are in the list :ids, in id order.
SELECT id, name, status, created_at, updated_at, deleted_at
FROM accounts
WHERE id = ANY(:ids)
ORDER BY id;

-- name: account_exists :scalar
-- Whether a live (not soft-deleted) account has this id.
SELECT EXISTS (SELECT 1 FROM accounts WHERE id = :id AND deleted_at IS NULL);

-- name: list_accounts :many
-- A keyset page of live accounts in id order, after :after_id.
SELECT id, name, status, created_at, updated_at, deleted_at
FROM accounts
WHERE id > :after_id AND deleted_at IS NULL
ORDER BY id
LIMIT :limit;

-- name: update_account :one
-- Change the named fields of a live account (set_<field> says which); no row if
-- there is no such live account.
UPDATE accounts
SET name = CASE WHEN :set_name THEN :name ELSE name END,
    status = CASE WHEN :set_status THEN :status ELSE status END,
    updated_at = now()
WHERE id = :id AND deleted_at IS NULL
RETURNING id, name, status, created_at, updated_at, deleted_at;

-- name: delete_account :one
-- Soft-delete a live account; no row if it is missing or already deleted.
UPDATE accounts
SET deleted_at = now(), updated_at = now()
WHERE id = :id AND deleted_at IS NULL
RETURNING id, name, status, created_at, updated_at, deleted_at;

-- name: restore_account :one
-- Undo a soft delete; no row if the account is missing or not deleted.
UPDATE accounts
SET deleted_at = NULL, updated_at = now()
WHERE id = :id AND deleted_at IS NOT NULL
RETURNING id, name, status, created_at, updated_at, deleted_at;
