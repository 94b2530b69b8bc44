-- The bare-COPY ceiling's traces: straight into the table (every trace of
-- the bench is new). Column order: `pg::traces::encode_trace`.
COPY traces (
    tenant_id, trace_id, first_start_time, last_end_time, span_count, error_count,
    root_service_name, root_span_name, root_span_id, root_start_unix_nano, updated_at
) FROM STDIN (FORMAT binary)
