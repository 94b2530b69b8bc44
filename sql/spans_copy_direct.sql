-- The direct write path: a batch's spans straight into the table, when none
-- of them is stored yet (a unique violation sends the batch down the staged
-- path instead). Column order: `pg::copy::encode_span`.
COPY spans (
    tenant_id, trace_id, span_id, parent_span_id, trace_state, flags, name, kind,
    start_time, end_time, start_unix_nano, end_unix_nano, duration_ns,
    status_code, status_message, service_name, resource_attributes,
    scope_name, scope_version, attributes,
    dropped_attributes_count, dropped_events_count, dropped_links_count,
    links, event_count
) FROM STDIN (FORMAT binary)
