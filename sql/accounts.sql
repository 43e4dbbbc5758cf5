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
