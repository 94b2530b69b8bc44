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
    IF to_regclass('logs') IS NOT NULL
       AND to_regclass('pg_temp.spansink_stage_logs') IS NULL THEN
        CREATE TEMP TABLE spansink_stage_logs (LIKE logs) ON COMMIT DELETE ROWS;
    END IF;
    -- A batch's buckets, before the shard is known: span_metrics without it.
    IF to_regclass('span_metrics') IS NOT NULL
       AND to_regclass('pg_temp.spansink_stage_span_metrics') IS NULL THEN
        CREATE TEMP TABLE spansink_stage_span_metrics (
            tenant_id       text NOT NULL,
            minute          timestamptz NOT NULL,
            service_name    text NOT NULL,
            span_name       text NOT NULL,
            span_kind       smallint NOT NULL,
            status_code     smallint NOT NULL,
            span_count      bigint NOT NULL,
            error_count     bigint NOT NULL,
            duration_sum_ns numeric NOT NULL,
            latency_buckets bigint[] NOT NULL
        ) ON COMMIT DELETE ROWS;
    END IF;
END
$$
