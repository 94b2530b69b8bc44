-- Binary COPY target for a batch's log records on the staged path. Column
-- order: `pg::copy::encode_log`.
COPY pg_temp.spansink_stage_logs (
    tenant_id, record_id, time, time_unix_nano, observed_time, observed_time_unix_nano,
    severity_number, severity_text, body, attributes, resource_attributes,
    service_name, scope_name, scope_version, event_name, flags, trace_id, span_id,
    dropped_attributes_count
) FROM STDIN (FORMAT binary)
