-- depends: 0011_index_review
-- The journal of cache invalidations. A change that must reach the Redis cache
-- (an API key revoked or rotated, an account suspended, a subscription ended, a
-- plan published or archived) writes one row per cache tag in its own
-- transaction, so the change and its invalidation commit together or not at all.
-- After the commit the writer bumps the tags in Redis and deletes its rows; rows
-- left behind (Redis unreachable, the writer gone) are applied and deleted by the
-- next process that reads from the cache, within 2 s. So the table is a short
-- queue, normally empty.
--
-- account_id is the account the tag belongs to (API-key and account tags), or 0
-- for a global tag (a plan code): account ids start at 1, and a table distributed
-- by account_id cannot hold NULL there. It carries no foreign key, for that 0 and
-- because a row outlives nothing it describes for more than a moment. Distributed
-- by account_id (Citus), the row lives on the shard of the change it journals.

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   cache_invalidations_pkey used by list_cache_invalidations, delete_cache_invalidations
CREATE TABLE cache_invalidations (
    account_id  bigint NOT NULL CONSTRAINT cache_invalidations_account_id_check
                    CHECK (account_id >= 0),
    id          bigint GENERATED ALWAYS AS IDENTITY,
    tag         text NOT NULL CONSTRAINT cache_invalidations_tag_check
                    CHECK (length(tag) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cache_invalidations_pkey PRIMARY KEY (account_id, id)
);
