-- The journal of cache invalidations (migrations/0012): rows written in the transaction of
-- the change they invalidate, deleted once Redis has them. Normally empty.

-- name: record_cache_invalidations :many
-- Journal one invalidation per (account, tag) pair, in the caller's transaction; account 0
-- is a global tag.
INSERT INTO cache_invalidations (account_id, tag)
SELECT account_id, tag
FROM unnest(:account_ids::bigint[], :tags::text[]) AS pending (account_id, tag)
RETURNING account_id, id, tag, created_at;

-- name: list_cache_invalidations :many
-- Up to :limit pending invalidations, in primary-key order (cache_invalidations_pkey), so
-- a reader that finds a full page reads the next one after applying and deleting it.
SELECT account_id, id, tag, created_at
FROM cache_invalidations
ORDER BY account_id, id
LIMIT :limit;

-- name: delete_cache_invalidations :execrows
-- Forget the listed invalidations of one account once Redis has them; rows already gone
-- are skipped. Pinned to one account, so that on Citus it routes to the account's shard
-- (a journal page of several accounts is forgotten one account at a time);
-- cache_invalidations_pkey serves it.
DELETE FROM cache_invalidations
WHERE account_id = :account_id AND id = ANY(:ids::bigint[]);
