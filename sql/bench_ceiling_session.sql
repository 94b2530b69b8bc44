-- A ceiling connection: named for pg_stat_activity. Its staging tables are
-- the pipeline's (`stage_create.sql`).
SET application_name = 'spansink-ceiling';
