-- Binary COPY target for a batch's spans. The column order is the order in
-- which `pg::copy::encode_span` writes the fields: change both together.
COPY pg_temp.spansink_stage_spans (
    tenant_id, trace_id, span_id, parent_span_id, trace_state, flags, name, kind,
    start_time, end_time, start_unix_nano, end_unix_nano, duration_ns,
    status_code, status_message, service_name, resource_attributes,
    scope_name, scope_version, attributes,
    dropped_attributes_count, dropped_events_count, dropped_links_count,
    links, event_count
) FROM STDIN (FORMAT binary)
