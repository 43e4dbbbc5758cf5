-- depends: 0014_properties_text_limit
-- Usage cancellations: an accepted usage event can be cancelled (within the
-- accepted window) without touching usage_events, which stays append-only.
-- The cancellation is its own row, the audit record of who cancelled which
-- event, when and why; every aggregate of usage (rollup refresh, the raw parts
-- of the usage reports) leaves out the events that have one, through an
-- anti-join on this table's primary key. The event's idempotency key stays in
-- usage_event_keys, so re-sending it is still a duplicate.
--
-- The event's id and occurred_at identify it (usage_events_pkey is
-- (account_id, occurred_at, id)); its meter_code, quantity and idempotency key
-- are copied for the audit trail and so that nothing needs to read the
-- partitioned table to say what was cancelled. No foreign key to usage_events:
-- a foreign key would block detaching (archiving) its partitions, and events
-- are facts that are never deleted one by one. None to meters either (copied
-- from an event that was checked when it was stored, as usage_events itself).
-- cancelled_by is a user of the same account (composite foreign key, as every
-- reference between tenant tables); users are only soft-deleted, so the
-- reference never dangles.
--
-- Append-only, like usage_events: the application only inserts (cancel's
-- INSERT ... ON CONFLICT DO NOTHING needs no UPDATE privilege), so the
-- least-privilege application role needs SELECT and INSERT only. A deleted
-- cancellation would un-cancel its event without queuing the hour for the
-- rollups. No trigger enforces it: triggers do not distribute on Citus
-- (DOMAIN.md); the role's grants do.
--
-- Archiving a month keeps its cancellations (see datalayer/_ops/archive.py):
-- they are the audit record, the rollups they shaped are kept too, and a
-- restored month's cancelled events stay cancelled.

SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   usage_cancellations_pkey used by cancel_usage_event (ON CONFLICT arbiter),
--     get_usage_cancellation_by_key, get_period_totals (anti-join),
--     get_usage_time_series (anti-join), refresh_usage_hours (anti-join),
--     datalayer/_ops/rollups.py (rebuild_rollups anti-join)
CREATE TABLE usage_cancellations (
    account_id       bigint NOT NULL REFERENCES accounts (id),
    event_id         bigint NOT NULL,
    occurred_at      timestamptz NOT NULL,
    meter_code       text NOT NULL,
    quantity         numeric(20, 6) NOT NULL CONSTRAINT usage_cancellations_quantity_check
                         CHECK (quantity >= 0 AND quantity < 1e12),
    idempotency_key  text NOT NULL CONSTRAINT usage_cancellations_idempotency_key_check
                         CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    reason           text NOT NULL CONSTRAINT usage_cancellations_reason_check
                         CHECK (length(reason) BETWEEN 1 AND 500),
    cancelled_by     bigint,
    cancelled_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT usage_cancellations_pkey PRIMARY KEY (account_id, event_id),
    CONSTRAINT usage_cancellations_cancelled_by_fkey FOREIGN KEY (account_id, cancelled_by)
        REFERENCES users (account_id, id)
);

-- No named query reads cancellations by who made them: this serves the foreign key.
-- used by: FK usage_cancellations_cancelled_by_fkey
CREATE INDEX usage_cancellations_cancelled_by_idx ON usage_cancellations (account_id, cancelled_by)
    WHERE cancelled_by IS NOT NULL;
