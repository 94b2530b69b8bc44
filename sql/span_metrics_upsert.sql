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
    -- Element by element, spelled out: a function over unnest() and
    -- array_agg() costs twice as much per updated row, and every batch
    -- updates hundreds of rows.
    latency_buckets = ARRAY[
        m.latency_buckets[1] + excluded.latency_buckets[1],
        m.latency_buckets[2] + excluded.latency_buckets[2],
        m.latency_buckets[3] + excluded.latency_buckets[3],
        m.latency_buckets[4] + excluded.latency_buckets[4],
        m.latency_buckets[5] + excluded.latency_buckets[5],
        m.latency_buckets[6] + excluded.latency_buckets[6],
        m.latency_buckets[7] + excluded.latency_buckets[7],
        m.latency_buckets[8] + excluded.latency_buckets[8],
        m.latency_buckets[9] + excluded.latency_buckets[9],
        m.latency_buckets[10] + excluded.latency_buckets[10],
        m.latency_buckets[11] + excluded.latency_buckets[11],
        m.latency_buckets[12] + excluded.latency_buckets[12],
        m.latency_buckets[13] + excluded.latency_buckets[13],
        m.latency_buckets[14] + excluded.latency_buckets[14],
        m.latency_buckets[15] + excluded.latency_buckets[15],
        m.latency_buckets[16] + excluded.latency_buckets[16],
        m.latency_buckets[17] + excluded.latency_buckets[17]
    ]
