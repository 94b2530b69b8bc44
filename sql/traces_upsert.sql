-- The direct write path's traces (`pg::traces`): the staged path's upsert
-- (`spans_move.sql`), fed from the batch's traces folded by spansink instead
-- of from the spans just inserted. A test keeps the two `DO UPDATE` clauses
-- the same. Key order: the lock order of every writer.
INSERT INTO traces AS t (
    tenant_id, trace_id, first_start_time, last_end_time, span_count, error_count,
    root_service_name, root_span_name, root_span_id, root_start_unix_nano, updated_at
)
SELECT tenant_id, trace_id, first_start_time, last_end_time, span_count, error_count,
       root_service_name, root_span_name, root_span_id, root_start_unix_nano, now()
FROM pg_temp.spansink_stage_traces
ORDER BY tenant_id, trace_id
    ON CONFLICT (tenant_id, trace_id) DO UPDATE SET
        first_start_time = least(t.first_start_time, excluded.first_start_time),
        last_end_time = greatest(t.last_end_time, excluded.last_end_time),
        span_count = t.span_count + excluded.span_count,
        error_count = t.error_count + excluded.error_count,
        -- The new root replaces the stored one when there was none, or when it
        -- is better. Without a new root the row comparison is NULL: keep.
        root_service_name = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_service_name ELSE t.root_service_name END,
        root_span_name = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_span_name ELSE t.root_span_name END,
        root_span_id = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_span_id ELSE t.root_span_id END,
        root_start_unix_nano = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_start_unix_nano ELSE t.root_start_unix_nano END,
        updated_at = now()
