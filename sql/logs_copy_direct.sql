-- The direct write path: a batch's log records straight into the table, when
-- none of them is stored yet (a unique violation sends the batch down the
-- staged path instead). Column order: `pg::copy::encode_log`.
COPY logs (
    tenant_id, record_id, time, time_unix_nano, observed_time, observed_time_unix_nano,
    severity_number, severity_text, body, attributes, resource_attributes,
    service_name, scope_name, scope_version, event_name, flags, trace_id, span_id,
    dropped_attributes_count
) FROM STDIN (FORMAT binary)
