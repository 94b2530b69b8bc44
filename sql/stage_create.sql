-- Per-connection staging tables that batches COPY into before moving rows
-- into the partitioned tables with ON CONFLICT. Temporary: no WAL, invisible
-- to other sessions, and emptied at every COMMIT (a rollback empties them too).
-- They are created only once the schema exists, because a connection may open
-- before the first migration; the writer runs this again if they are missing.
DO $$
BEGIN
    IF to_regclass('spans') IS NOT NULL
       AND to_regclass('pg_temp.spansink_stage_spans') IS NULL THEN
        CREATE TEMP TABLE spansink_stage_spans (LIKE spans) ON COMMIT DELETE ROWS;
    END IF;
    IF to_regclass('span_events') IS NOT NULL
       AND to_regclass('pg_temp.spansink_stage_events') IS NULL THEN
        CREATE TEMP TABLE spansink_stage_events (LIKE span_events) ON COMMIT DELETE ROWS;
    END IF;
    IF to_regclass('traces') IS NOT NULL
       AND to_regclass('pg_temp.spansink_stage_traces') IS NULL THEN
        CREATE TEMP TABLE spansink_stage_traces (LIKE traces) ON COMMIT DELETE ROWS;
    END IF;
END
$$
