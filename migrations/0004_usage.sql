-- depends: 0003_subscriptions
-- Usage: metered events (partitioned by month), their idempotency keys, hourly and
-- daily rollups, the queue of buckets to re-roll, and quota counters.
--
-- usage_events is range-partitioned on occurred_at, one month per partition and
-- no DEFAULT partition (rows parked there would block creating the partition
-- they belong to). `datalayer partitions ensure` creates the partitions; an
-- event for a month without one is refused with an error naming the month.

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

CREATE SEQUENCE usage_events_id_seq AS bigint;

-- No foreign keys on the event tables (usage_events, usage_event_keys,
-- analytics_events). Each would cost, per event, a lookup and a FOR KEY SHARE
-- lock on the referenced row: measured here, the two on usage_events add ~8 s
-- per million rows to a bulk load, and under concurrent ingestion every writer
-- would share-lock the same few hot account and meter rows (multixacts).
-- Ingestion validates accounts and meters set-wise instead, rejecting unknown
-- ones per event; accounts are only soft-deleted, so no event is orphaned; and
-- events must outlive the users and API keys that produced them.
-- indexes:
--   usage_events_pkey used by get_usage_event_by_key
CREATE TABLE usage_events (
    account_id       bigint NOT NULL,
    id               bigint NOT NULL DEFAULT nextval('usage_events_id_seq'),
    user_id          bigint,
    api_key_id       bigint,
    meter_code       text NOT NULL,
    quantity         numeric(20, 6) NOT NULL CONSTRAINT usage_events_quantity_check
                         CHECK (quantity >= 0 AND quantity < 1e12),
    occurred_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    idempotency_key  text NOT NULL CONSTRAINT usage_events_idempotency_key_check
                         CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    properties       jsonb NOT NULL DEFAULT '{}' CONSTRAINT usage_events_properties_check
                         CHECK (jsonb_typeof(properties) = 'object'
                                AND pg_column_size(properties) <= 4096),
    CONSTRAINT usage_events_pkey PRIMARY KEY (account_id, occurred_at, id)
) PARTITION BY RANGE (occurred_at);

ALTER SEQUENCE usage_events_id_seq OWNED BY usage_events.id;

-- The not-yet-rolled tail of a meter: account, meter and time.
-- used by: refresh_usage_hours, get_period_totals, get_usage_time_series
CREATE INDEX usage_events_account_meter_time_idx
    ON usage_events (account_id, meter_code, occurred_at);

-- Exactly-once ingestion. A unique constraint on usage_events would have to
-- include occurred_at (the partition key), so the same key re-sent with another
-- timestamp would be stored twice. The key lives here instead, once per account,
-- whatever the event's time: ingestion inserts the key with ON CONFLICT DO
-- NOTHING and stores only the events whose key it inserted, in one statement,
-- so two processes sending the same key at once store it once. A key lives as
-- long as its event: `datalayer archive` deletes the keys of the months it
-- archives (and restoring a month brings them back).
-- indexes:
--   usage_event_keys_pkey used by get_usage_event_by_key,
--     record_usage_event (ON CONFLICT arbiter), insert_staged_usage (ON CONFLICT arbiter),
--     copy_usage_event_keys (uniqueness: a stored key fails the batch's fast path)
CREATE TABLE usage_event_keys (
    account_id       bigint NOT NULL,
    idempotency_key  text NOT NULL,
    event_id         bigint NOT NULL,
    occurred_at      timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_event_keys_pkey PRIMARY KEY (account_id, idempotency_key)
);

-- Dropped by 0011_index_review: no named query (and no code) reads keys by
-- received_at (archiving finds a month's keys through its events).
CREATE INDEX usage_event_keys_received_at_idx ON usage_event_keys (received_at);

-- Per account, meter and bucket: what quotas, invoices and dashboards read.
-- Derived from usage_events, so, like them, without foreign keys (they would
-- cost a lookup per rollup row written by every refresh).
-- indexes:
--   usage_rollups_pkey used by get_period_totals, get_usage_time_series,
--     refresh_usage_hours (also ON CONFLICT arbiter), refresh_usage_days (also ON CONFLICT arbiter)
CREATE TABLE usage_rollups (
    account_id    bigint NOT NULL,
    meter_code    text NOT NULL,
    granularity   text NOT NULL CONSTRAINT usage_rollups_granularity_check
                      CHECK (granularity IN ('hour', 'day')),
    bucket_start  timestamptz NOT NULL,
    event_count   bigint NOT NULL CONSTRAINT usage_rollups_event_count_check CHECK (event_count > 0),
    quantity_sum  numeric NOT NULL,
    quantity_max  numeric NOT NULL,
    refreshed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_rollups_pkey PRIMARY KEY (account_id, meter_code, granularity, bucket_start)
);

-- Top accounts by meter over a period read across accounts by bucket.
-- used by: get_top_accounts
CREATE INDEX usage_rollups_meter_bucket_idx ON usage_rollups (meter_code, granularity, bucket_start);

-- Hour buckets whose events changed since they were last rolled up. A
-- statement trigger appends to it on every insert or delete (COPY included), in
-- the writer's transaction; `datalayer rollups refresh` drains it. It is a log,
-- not a set: a writer never touches another transaction's row, so ingestors do
-- not contend on a hot bucket, and a mark becomes visible exactly when its
-- events do. A received_at watermark could not promise that: a transaction that
-- commits after the refresh read past its timestamp would be missed; here a
-- late event simply queues its old bucket again.
-- indexes:
--   usage_rollup_queue_pkey used by refresh_usage_hours (claims the oldest ids first)
CREATE TABLE usage_rollup_queue (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL,
    meter_code  text NOT NULL,
    hour_start  timestamptz NOT NULL
);

CREATE FUNCTION usage_events_queue_rollup() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
        SELECT DISTINCT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
        FROM changed_rows;
    ELSE
        INSERT INTO usage_rollup_queue (account_id, meter_code, hour_start)
        SELECT DISTINCT account_id, meter_code, date_trunc('hour', occurred_at, 'UTC')
        FROM new_rows;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_events_queue_rollup_insert
    AFTER INSERT ON usage_events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_queue_rollup();

CREATE TRIGGER usage_events_queue_rollup_delete
    AFTER DELETE ON usage_events REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_events_queue_rollup();

-- Events are facts: they are inserted, and removed only with their partition.
-- The trigger passes its own name (TG_TABLE_NAME would name the partition).
CREATE FUNCTION refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_ARGV[0], TG_OP
        USING ERRCODE = 'check_violation', CONSTRAINT = TG_ARGV[0], TABLE = TG_TABLE_NAME;
END
$$;

CREATE TRIGGER usage_events_append_only
    BEFORE UPDATE ON usage_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change('usage_events_append_only');

-- Quota state of the current period per account and meter. A hard quota can
-- never be overspent: used + reserved <= limit is checked by the database.
-- indexes:
--   quota_counters_pkey used by consume_quota, reserve_quota, get_quota_states,
--     settle_quota_reservation, expire_quota_reservations,
--     open_quota_counter (ON CONFLICT arbiter)
CREATE TABLE quota_counters (
    account_id      bigint NOT NULL REFERENCES accounts (id),
    meter_code      text NOT NULL REFERENCES meters (code),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    limit_kind      text NOT NULL CONSTRAINT quota_counters_limit_kind_check
                        CHECK (limit_kind IN ('hard', 'soft', 'none')),
    limit_quantity  numeric(20, 6) NOT NULL CONSTRAINT quota_counters_limit_check
                        CHECK (limit_quantity >= 0),
    used            numeric(20, 6) NOT NULL DEFAULT 0 CONSTRAINT quota_counters_used_check
                        CHECK (used >= 0),
    reserved        numeric(20, 6) NOT NULL DEFAULT 0 CONSTRAINT quota_counters_reserved_check
                        CHECK (reserved >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quota_counters_pkey PRIMARY KEY (account_id, meter_code, period_start),
    CONSTRAINT quota_counters_period_check CHECK (period_end > period_start),
    CONSTRAINT quota_counters_hard_limit_check CHECK (
        limit_kind <> 'hard' OR used + reserved <= limit_quantity)
);

-- No named query reads counters by meter alone: this serves the foreign key.
-- used by: FK quota_counters_meter_code_fkey
CREATE INDEX quota_counters_meter_code_idx ON quota_counters (meter_code);

-- Long jobs reserve quota first and settle (or release) it later; a held
-- reservation past expires_at is released by the reaper.
-- indexes:
--   quota_reservations_pkey used by get_quota_reservation, settle_quota_reservation,
--     expire_quota_reservations (an account's held reservations)
CREATE TABLE quota_reservations (
    account_id    bigint NOT NULL,
    id            bigint GENERATED ALWAYS AS IDENTITY,
    meter_code    text NOT NULL,
    period_start  timestamptz NOT NULL,
    quantity      numeric(20, 6) NOT NULL CONSTRAINT quota_reservations_quantity_check
                      CHECK (quantity > 0),
    status        text NOT NULL DEFAULT 'held' CONSTRAINT quota_reservations_status_check
                      CHECK (status IN ('held', 'settled', 'released', 'expired')),
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    settled_at    timestamptz,
    CONSTRAINT quota_reservations_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT quota_reservations_counter_fkey FOREIGN KEY (account_id, meter_code, period_start)
        REFERENCES quota_counters (account_id, meter_code, period_start),
    CONSTRAINT quota_reservations_settled_check CHECK ((status = 'held') = (settled_at IS NULL))
);

-- No named query reads reservations by counter: this serves the foreign key.
-- used by: FK quota_reservations_counter_fkey
CREATE INDEX quota_reservations_counter_idx
    ON quota_reservations (account_id, meter_code, period_start);
-- The reaper's held reservations past their expiry.
-- used by: list_expired_reservation_accounts
CREATE INDEX quota_reservations_expiry_idx ON quota_reservations (expires_at) WHERE status = 'held';
