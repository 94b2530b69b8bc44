-- The direct write path's traces, staged for `traces_upsert.sql`, in the
-- column order of `pg::traces::encode_trace`.
COPY pg_temp.spansink_stage_traces (
    tenant_id, trace_id, first_start_time, last_end_time, span_count, error_count,
    root_service_name, root_span_name, root_span_id, root_start_unix_nano, updated_at
) FROM STDIN (FORMAT binary)
