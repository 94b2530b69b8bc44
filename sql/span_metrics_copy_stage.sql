-- A batch's span_metrics buckets, staged for `span_metrics_upsert.sql`, in
-- the column order of `pg::span_metrics::encode_metric`.
COPY pg_temp.spansink_stage_span_metrics (
    tenant_id, minute, service_name, span_name, span_kind, status_code,
    span_count, error_count, duration_sum_ns, latency_buckets
) FROM STDIN (FORMAT binary)
