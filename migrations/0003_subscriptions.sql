-- depends: 0002_plans
-- Subscriptions: an account on a plan version, with its billing cycle.
--
-- Live statuses are trialing, active and past_due; an account has at most one
-- live subscription (subscriptions_one_live_per_account). An upgrade or a
-- downgrade ends the old subscription ('replaced') and starts a new one that
-- points back at it through replaces_id, so the chain is the plan history.

-- A migration never waits long behind application locks, nor runs unbounded.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   subscriptions_pkey used by get_subscription, list_subscriptions, insert_upgrade,
--     compute_proration, renew_due_subscriptions
CREATE TABLE subscriptions (
    account_id            bigint NOT NULL REFERENCES accounts (id),
    id                    bigint GENERATED ALWAYS AS IDENTITY,
    plan_id               bigint NOT NULL REFERENCES plans (id),
    status                text NOT NULL CONSTRAINT subscriptions_status_check
                              CHECK (status IN ('incomplete', 'trialing', 'active', 'past_due',
                                                'canceled', 'replaced')),
    current_period_start  timestamptz NOT NULL,
    current_period_end    timestamptz NOT NULL,
    billing_anchor        timestamptz NOT NULL,
    trial_end             timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    -- A downgrade waiting for the end of the period.
    pending_plan_id       bigint REFERENCES plans (id),
    replaces_id           bigint,
    canceled_at           timestamptz,
    ended_at              timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subscriptions_pkey PRIMARY KEY (account_id, id),
    CONSTRAINT subscriptions_replaces_fkey FOREIGN KEY (account_id, replaces_id)
        REFERENCES subscriptions (account_id, id),
    CONSTRAINT subscriptions_period_check CHECK (current_period_end > current_period_start),
    CONSTRAINT subscriptions_trial_check CHECK (
        (status = 'trialing') <= (trial_end IS NOT NULL)),
    CONSTRAINT subscriptions_canceled_check CHECK (
        (status = 'canceled') <= (canceled_at IS NOT NULL)),
    CONSTRAINT subscriptions_ended_check CHECK (
        (status IN ('canceled', 'replaced')) = (ended_at IS NOT NULL)),
    CONSTRAINT subscriptions_replaces_other_check CHECK (replaces_id <> id)
);

-- An account's live subscription is found (and kept unique) here.
-- used by: get_live_subscription, consume_quota, reserve_quota, get_quota_states,
--   open_quota_counter, replace_subscription, schedule_downgrade, cancel_subscription_now,
--   cancel_subscription_at_period_end, start_subscription (uniqueness),
--   insert_upgrade (uniqueness), renew_due_subscriptions (an account's live subscription;
--   uniqueness)
CREATE UNIQUE INDEX subscriptions_one_live_per_account ON subscriptions (account_id)
    WHERE status IN ('trialing', 'active', 'past_due');

-- Each subscription is replaced at most once; also the index of the self-FK.
-- used by: insert_upgrade (uniqueness), renew_due_subscriptions (uniqueness),
--   FK subscriptions_replaces_fkey
CREATE UNIQUE INDEX subscriptions_replaces_key ON subscriptions (account_id, replaces_id)
    WHERE replaces_id IS NOT NULL;

-- Renewal workers take live subscriptions whose period has ended.
-- used by: list_due_subscriptions
CREATE INDEX subscriptions_renewal_due_idx ON subscriptions (current_period_end)
    WHERE status IN ('trialing', 'active', 'past_due');

-- used by: list_plan_subscriber_cache_keys, FK subscriptions_plan_id_fkey
CREATE INDEX subscriptions_plan_id_idx ON subscriptions (plan_id);
-- No named query reads subscriptions by pending plan: this serves the foreign key.
-- used by: FK subscriptions_pending_plan_id_fkey
CREATE INDEX subscriptions_pending_plan_id_idx ON subscriptions (pending_plan_id)
    WHERE pending_plan_id IS NOT NULL;
