-- The direct write path: a batch's span events straight into the table.
-- Column order: `pg::copy::encode_event`.
COPY span_events (
    tenant_id, trace_id, span_id, span_start_time, event_index,
    time, time_unix_nano, name, attributes, dropped_attributes_count
) FROM STDIN (FORMAT binary)
