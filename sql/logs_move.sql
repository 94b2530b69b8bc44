-- Moves the staged log records into `logs`, skipping those already stored
-- (a replayed message keys its records as before). In key order, as every
-- writer inserts. Returns the rows inserted.
INSERT INTO logs (
    tenant_id, record_id, time, time_unix_nano, observed_time, observed_time_unix_nano,
    severity_number, severity_text, body, attributes, resource_attributes,
    service_name, scope_name, scope_version, event_name, flags, trace_id, span_id,
    dropped_attributes_count
)
SELECT
    tenant_id, record_id, time, time_unix_nano, observed_time, observed_time_unix_nano,
    severity_number, severity_text, body, attributes, resource_attributes,
    service_name, scope_name, scope_version, event_name, flags, trace_id, span_id,
    dropped_attributes_count
FROM pg_temp.spansink_stage_logs
ORDER BY tenant_id, record_id, time
ON CONFLICT DO NOTHING
