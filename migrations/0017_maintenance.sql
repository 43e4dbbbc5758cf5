-- depends: 0016_billing_cycle
-- The maintenance worker's bookkeeping (`datalayer worker`, datalayer/_ops/worker.py).
--
-- maintenance_jobs   one row per periodic job: when it is next due and how many
--                    runs in a row failed (for the retry backoff). Only the worker
--                    that holds the job's advisory lock writes its row.
-- maintenance_runs   one row per run: started, finished, outcome, rows touched,
--                    error. A run left 'running' by a worker that died is marked
--                    'interrupted' by the next worker to take the job.
-- The rollup queues gain queued_at, so that `datalayer jobs` and `health` can say
-- how long the oldest queued bucket has waited (event time says nothing of that:
-- a late event queues an old bucket now).
--
-- Global tables (no account_id): the worker's own state, not a tenant's.
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

-- indexes:
--   maintenance_jobs_pkey used by ensure_maintenance_job, get_maintenance_job,
--     schedule_maintenance_job
CREATE TABLE maintenance_jobs (
    job              text PRIMARY KEY CONSTRAINT maintenance_jobs_job_check
                         CHECK (job ~ '^[a-z][a-z0-9_]{0,39}$'),
    next_due_at      timestamptz NOT NULL,
    failures         bigint NOT NULL DEFAULT 0 CONSTRAINT maintenance_jobs_failures_check
                         CHECK (failures >= 0),
    last_ok_at       timestamptz
);

-- indexes:
--   maintenance_runs_pkey used by finish_maintenance_run
CREATE TABLE maintenance_runs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job           text NOT NULL REFERENCES maintenance_jobs (job),
    worker        text NOT NULL CONSTRAINT maintenance_runs_worker_check
                      CHECK (length(worker) BETWEEN 1 AND 200),
    attempt       bigint NOT NULL CONSTRAINT maintenance_runs_attempt_check CHECK (attempt >= 1),
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    outcome       text NOT NULL CONSTRAINT maintenance_runs_outcome_check
                      CHECK (outcome IN ('running', 'ok', 'stopped', 'failed', 'interrupted')),
    rows_touched  bigint CONSTRAINT maintenance_runs_rows_touched_check CHECK (rows_touched >= 0),
    error         text CONSTRAINT maintenance_runs_error_check CHECK (length(error) <= 2000),
    CONSTRAINT maintenance_runs_finished_check
        CHECK ((outcome = 'running') = (finished_at IS NULL))
);
-- used by: list_maintenance_runs, list_maintenance_jobs, interrupt_maintenance_runs,
--   FK maintenance_runs_job_fkey
CREATE INDEX maintenance_runs_job_started_idx ON maintenance_runs (job, started_at DESC);

-- A constant default (now() is stable): no table rewrite; rows queued before this
-- migration read as queued when it ran.
ALTER TABLE usage_rollup_queue ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE analytics_rollup_queue ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
