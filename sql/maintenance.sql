-- The maintenance worker's jobs and runs (migrations/0017), and the lags of what
-- the jobs drain, for `datalayer jobs` and `health`. Only the worker holding a
-- job's advisory lock writes that job's rows.

-- name: ensure_maintenance_job :exec
-- Make the job known, due at :due, unless it is already.
INSERT INTO maintenance_jobs (job, next_due_at)
VALUES (:job, :due::timestamptz)
ON CONFLICT (job) DO NOTHING;

-- name: get_maintenance_job :one
SELECT job, next_due_at, failures, last_ok_at
FROM maintenance_jobs
WHERE job = :job;

-- name: interrupt_maintenance_runs :execrows
-- Runs of :job still 'running' when a worker takes the job's lock were left by a
-- worker that died: nobody else can be running it.
UPDATE maintenance_runs
SET outcome = 'interrupted', finished_at = :now::timestamptz,
    error = 'the worker running it ended without finishing (killed, or its connection lost)'
WHERE job = :job AND outcome = 'running';

-- name: start_maintenance_run :one
INSERT INTO maintenance_runs (job, worker, attempt, started_at, outcome)
VALUES (:job, :worker, :attempt, :now::timestamptz, 'running')
RETURNING id, job, worker, attempt, started_at, finished_at, outcome, rows_touched, error;

-- name: finish_maintenance_run :one
UPDATE maintenance_runs
SET outcome = :outcome, finished_at = :now::timestamptz, rows_touched = :rows_touched,
    error = :error
WHERE id = :id AND outcome = 'running'
RETURNING id, job, worker, attempt, started_at, finished_at, outcome, rows_touched, error;

-- name: schedule_maintenance_job :exec
-- After a run: next due time, failures in a row (0 after a success), and when it
-- last succeeded (kept when :ok_at is null).
UPDATE maintenance_jobs
SET next_due_at = :due::timestamptz, failures = :failures,
    last_ok_at = coalesce(:ok_at::timestamptz, last_ok_at)
WHERE job = :job;

-- name: list_maintenance_jobs :many
-- Every known job with its latest run (maintenance_runs_job_started_idx).
SELECT j.job, j.next_due_at, j.failures, j.last_ok_at,
       r.started_at AS last_started_at, r.finished_at AS last_finished_at,
       r.outcome AS last_outcome, r.rows_touched AS last_rows_touched, r.error AS last_error
FROM maintenance_jobs j
LEFT JOIN LATERAL (
    SELECT started_at, finished_at, outcome, rows_touched, error
    FROM maintenance_runs
    WHERE job = j.job
    ORDER BY started_at DESC
    LIMIT 1
) r ON true
ORDER BY j.job;

-- name: list_maintenance_runs :many
-- The latest :limit runs of :job, newest first.
SELECT id, job, worker, attempt, started_at, finished_at, outcome, rows_touched, error
FROM maintenance_runs
WHERE job = :job
ORDER BY started_at DESC
LIMIT :limit;

-- name: maintenance_lags :one
-- What the periodic jobs drain, as of :now: the rollup queues (depth and the
-- oldest entry), how far ahead the event tables are partitioned (the earliest of
-- each partitioned table's last upper bound), subscriptions past their renewal,
-- closed billing periods without an invoice, and the last successful backup.
SELECT
    (SELECT count(*) FROM usage_rollup_queue) AS usage_queue_depth,
    (SELECT min(queued_at) FROM usage_rollup_queue) AS usage_queue_oldest,
    (SELECT count(*) FROM analytics_rollup_queue) AS analytics_queue_depth,
    (SELECT min(queued_at) FROM analytics_rollup_queue) AS analytics_queue_oldest,
    (SELECT min(last_bound) FROM (
        SELECT max(substring(pg_get_expr(c.relpartbound, c.oid)
                             FROM 'TO \(''([^'']+)''\)')::timestamptz) AS last_bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE parent.relkind = 'p' AND parent.relnamespace = current_schema()::regnamespace
        GROUP BY parent.oid
    ) bounds) AS partitions_until,
    (SELECT count(*) FROM subscriptions
     WHERE status IN ('trialing', 'active', 'past_due')
       AND current_period_end <= :now::timestamptz) AS renewals_due,
    (SELECT min(current_period_end) FROM subscriptions
     WHERE status IN ('trialing', 'active', 'past_due')
       AND current_period_end <= :now::timestamptz) AS renewals_oldest,
    (SELECT count(*) FROM billing_periods
     WHERE invoice_id IS NULL AND closes_at <= :now::timestamptz) AS periods_uninvoiced,
    (SELECT min(closes_at) FROM billing_periods
     WHERE invoice_id IS NULL AND closes_at <= :now::timestamptz) AS periods_oldest,
    (SELECT last_ok_at FROM maintenance_jobs WHERE job = 'backup') AS last_backup_at;
