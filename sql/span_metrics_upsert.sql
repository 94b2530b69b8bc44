-- Adds a batch's staged buckets (folded by `pg::span_metrics` on the direct
-- path, aggregated from the inserted spans by `spans_move.sql` on the staged
-- one) into span_metrics. $1: the shard, the Kafka partition the spans came
-- from. Key order: the lock order of every writer.
INSERT INTO span_metrics AS m (
    tenant_id, minute, service_name, span_name, span_kind, status_code, shard,
    span_count, error_count, duration_sum_ns, latency_buckets
)
SELECT tenant_id, minute, service_name, span_name, span_kind, status_code, $1::integer,
       span_count, error_count, duration_sum_ns, latency_buckets
FROM pg_temp.spansink_stage_span_metrics
ORDER BY tenant_id, minute, service_name, span_name, span_kind, status_code
ON CONFLICT (tenant_id, minute, service_name, span_name, span_kind, status_code, shard) DO UPDATE SET
    span_count = m.span_count + excluded.span_count,
    error_count = m.error_count + excluded.error_count,
    duration_sum_ns = m.duration_sum_ns + excluded.duration_sum_ns,
    latency_buckets = spansink_histogram_add(m.latency_buckets, excluded.latency_buckets)
