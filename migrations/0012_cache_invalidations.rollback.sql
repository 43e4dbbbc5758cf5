-- Rolling back means dropping what the migration created.
-- squawk-ignore-file ban-drop-table
SET LOCAL lock_timeout = '10s';
SET LOCAL statement_timeout = '10min';

DROP TABLE cache_invalidations;
