-- Binary COPY target for a batch's span events. The column order is the order
-- in which `pg::copy::encode_event` writes the fields: change both together.
COPY pg_temp.spansink_stage_events (
    tenant_id, trace_id, span_id, span_start_time, event_index,
    time, time_unix_nano, name, attributes, dropped_attributes_count
) FROM STDIN (FORMAT binary)
