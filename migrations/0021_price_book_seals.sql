-- depends: 0020_ledger_booking
-- Published plan versions are immutable by constraints, not triggers (issue 16).
--
-- plans and plan_meters are Citus reference tables on a cluster, and Citus
-- refuses triggers on those, so the triggers plans_published_immutable and
-- plan_meters_published_immutable (0002) give way, on both layouts, to seals:
--
-- * plan_seals: a published version's sealed fields, written when it is
--   published. Its foreign key plans_published_immutable references those
--   fields of plans ON UPDATE/DELETE RESTRICT, so no statement can change or
--   delete them while the seal exists (unpublishing changes published_at: refused).
--   Every plan with a published_at has its seal (plans_seal_fkey, checked at commit).
-- * plan_meter_seals: the same for each meter row of a published version
--   (its foreign key plan_meters_published_immutable).
-- * A meter cannot join a published version: plan_meters.plan_seal_state
--   follows its plan's published_at (the epoch while a draft) by ON UPDATE
--   CASCADE, so a new row of a published plan must carry that instant, and
--   then it needs a meter seal (plan_meters_seal_fkey), which only publishing
--   writes.
-- * plan_archivals: archiving is final. An archived plan has its archival row
--   (plans_archival_fkey, at commit), whose foreign key plans_archived_final
--   refuses any change of the plan's status after it.
--
-- The library's publish_plan and archive_plan write the seals in the same
-- statement. Violations are foreign-key errors naming the constraints above;
-- map_error reports them as CheckViolation, as the triggers did.
-- squawk-ignore-file ban-drop-function, adding-field-with-default, constraint-missing-not-valid, disallowed-unique-constraint, adding-foreign-key-constraint, adding-not-nullable-field, require-concurrent-index-creation
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP TRIGGER plans_published_immutable ON plans;
DROP FUNCTION plans_guard_published();
DROP TRIGGER plan_meters_published_immutable ON plan_meters;
DROP FUNCTION plan_meters_guard_published();

-- The price book is a few hundred rows: these keys cost nothing to build.
-- indexes:
--   plans_sealed_fields_key used by publish_plan (the key plan_seals' foreign key
--     plans_published_immutable references)
--   plans_seal_state_key used by add_plan_meters (plan_meters_plan_seal_fkey references it)
--   plans_id_status_key used by archive_plan (plan_archivals' plans_archived_final references it)
ALTER TABLE plans
    ADD COLUMN seal_state timestamptz NOT NULL
        GENERATED ALWAYS AS (coalesce(published_at, 'epoch')) STORED,
    ADD COLUMN archived_status text GENERATED ALWAYS AS (
        CASE WHEN status = 'archived' THEN status END) STORED,
    ADD CONSTRAINT plans_sealed_fields_key UNIQUE (
        id, code, version, name, billing_interval, interval_count, base_price_minor, currency,
        trial_days, is_public, published_at, created_at),
    ADD CONSTRAINT plans_seal_state_key UNIQUE (id, seal_state),
    ADD CONSTRAINT plans_id_status_key UNIQUE (id, status),
    -- the epoch stands for "a draft" in seal_state (not -infinity: clients could not read it)
    ADD CONSTRAINT plans_published_after_epoch_check CHECK (published_at > 'epoch');

-- indexes:
--   plan_seals_pkey used by publish_plan (one seal per version)
--   plan_seals_published_at_key used by publish_plan (plans_seal_fkey references it)
CREATE TABLE plan_seals (
    plan_id           bigint PRIMARY KEY,
    code              text NOT NULL,
    version           bigint NOT NULL,
    name              text NOT NULL,
    billing_interval  text NOT NULL,
    interval_count    bigint NOT NULL,
    base_price_minor  bigint NOT NULL,
    currency          text NOT NULL,
    trial_days        bigint NOT NULL,
    is_public         boolean NOT NULL,
    published_at      timestamptz NOT NULL,
    created_at        timestamptz NOT NULL,
    CONSTRAINT plan_seals_published_at_key UNIQUE (plan_id, published_at),
    CONSTRAINT plans_published_immutable FOREIGN KEY (
        plan_id, code, version, name, billing_interval, interval_count, base_price_minor,
        currency, trial_days, is_public, published_at, created_at)
        REFERENCES plans (
        id, code, version, name, billing_interval, interval_count, base_price_minor,
        currency, trial_days, is_public, published_at, created_at)
        ON UPDATE RESTRICT ON DELETE RESTRICT
);

-- indexes:
--   plan_archivals_pkey used by archive_plan (one archival per version)
--   plan_archivals_status_key used by archive_plan (plans_archival_fkey references it)
CREATE TABLE plan_archivals (
    plan_id  bigint PRIMARY KEY,
    status   text NOT NULL DEFAULT 'archived' CONSTRAINT plan_archivals_status_check
                 CHECK (status = 'archived'),
    CONSTRAINT plan_archivals_status_key UNIQUE (plan_id, status),
    CONSTRAINT plans_archived_final FOREIGN KEY (plan_id, status) REFERENCES plans (id, status)
        ON UPDATE RESTRICT ON DELETE RESTRICT
);

-- indexes:
--   plan_meters_sealed_fields_key used by publish_plan (plan_meter_seals' foreign key
--     plan_meters_published_immutable references it)
ALTER TABLE plan_meters
    ADD COLUMN plan_seal_state timestamptz NOT NULL DEFAULT 'epoch',
    ADD COLUMN seal_ref timestamptz GENERATED ALWAYS AS (
        nullif(plan_seal_state, 'epoch')) STORED,
    ADD CONSTRAINT plan_meters_sealed_fields_key UNIQUE (
        plan_id, meter_code, included_quantity, limit_kind, overage_unit_price_minor);

-- indexes:
--   plan_meter_seals_pkey used by publish_plan (one seal per meter of a version)
--   plan_meter_seals_published_at_key used by publish_plan (plan_meters_seal_fkey
--     references it)
CREATE TABLE plan_meter_seals (
    plan_id                   bigint NOT NULL,
    meter_code                text NOT NULL,
    included_quantity         numeric(20, 6) NOT NULL,
    limit_kind                text NOT NULL CONSTRAINT plan_meter_seals_limit_kind_check
                                  CHECK (limit_kind IN ('hard', 'soft', 'none')),
    overage_unit_price_minor  numeric(20, 6) NOT NULL,
    published_at              timestamptz NOT NULL,
    CONSTRAINT plan_meter_seals_pkey PRIMARY KEY (plan_id, meter_code),
    CONSTRAINT plan_meter_seals_published_at_key UNIQUE (plan_id, meter_code, published_at),
    CONSTRAINT plan_meters_published_immutable FOREIGN KEY (
        plan_id, meter_code, included_quantity, limit_kind, overage_unit_price_minor)
        REFERENCES plan_meters (
        plan_id, meter_code, included_quantity, limit_kind, overage_unit_price_minor)
        ON UPDATE RESTRICT ON DELETE RESTRICT
);

-- Seal what is published or archived already (before the keys that require seals).
INSERT INTO plan_seals
SELECT id, code, version, name, billing_interval, interval_count, base_price_minor, currency,
       trial_days, is_public, published_at, created_at
FROM plans WHERE published_at IS NOT NULL;
INSERT INTO plan_archivals (plan_id) SELECT id FROM plans WHERE status = 'archived';
UPDATE plan_meters pm SET plan_seal_state = p.seal_state FROM plans p WHERE p.id = pm.plan_id;
INSERT INTO plan_meter_seals
SELECT pm.plan_id, pm.meter_code, pm.included_quantity, pm.limit_kind,
       pm.overage_unit_price_minor, pm.seal_ref
FROM plan_meters pm WHERE pm.seal_ref IS NOT NULL;

ALTER TABLE plans
    ADD CONSTRAINT plans_seal_fkey FOREIGN KEY (id, published_at)
        REFERENCES plan_seals (plan_id, published_at) DEFERRABLE INITIALLY DEFERRED,
    ADD CONSTRAINT plans_archival_fkey FOREIGN KEY (id, archived_status)
        REFERENCES plan_archivals (plan_id, status) DEFERRABLE INITIALLY DEFERRED;
-- used by: FK plan_meters_plan_seal_fkey (publishing cascades the seal state to its meters)
CREATE INDEX plan_meters_plan_seal_idx ON plan_meters (plan_id, plan_seal_state);
ALTER TABLE plan_meters
    ADD CONSTRAINT plan_meters_plan_seal_fkey FOREIGN KEY (plan_id, plan_seal_state)
        REFERENCES plans (id, seal_state) ON UPDATE CASCADE,
    ADD CONSTRAINT plan_meters_seal_fkey FOREIGN KEY (plan_id, meter_code, seal_ref)
        REFERENCES plan_meter_seals (plan_id, meter_code, published_at)
        DEFERRABLE INITIALLY DEFERRED;
