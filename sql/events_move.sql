-- Moves the staged span events into `span_events`, skipping those already
-- stored (a replayed message), in key order for the same reason as spans.
INSERT INTO span_events (
    tenant_id, trace_id, span_id, span_start_time, event_index,
    time, time_unix_nano, name, attributes, dropped_attributes_count
)
SELECT
    tenant_id, trace_id, span_id, span_start_time, event_index,
    time, time_unix_nano, name, attributes, dropped_attributes_count
FROM pg_temp.spansink_stage_events
ORDER BY tenant_id, trace_id, span_id, span_start_time, event_index
ON CONFLICT DO NOTHING
