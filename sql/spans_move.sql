-- Moves the staged spans into `spans`, skipping those already stored, and
-- folds exactly the rows this statement inserted into `traces`. Counting only
-- what was inserted keeps span_count and error_count exact however often a
-- message is replayed.
--
-- Both inserts run in key order. Transactions of different Kafka partitions
-- may touch the same trace (or, rarely, the same span); taking row locks in one
-- global order means they wait for each other but never deadlock. Sorted keys
-- also make the primary key inserts cache-friendly.
--
-- The inserted spans' span_metrics buckets are staged here too, for
-- `span_metrics_upsert.sql`: aggregated by the same rules as
-- `pg::span_metrics::fold` (a test holds the two paths to each other).
--
-- Returns one row: spans_inserted, links_inserted, traces_touched.
WITH inserted AS (
    INSERT INTO spans (
        tenant_id, trace_id, span_id, parent_span_id, trace_state, flags, name, kind,
        start_time, end_time, start_unix_nano, end_unix_nano, duration_ns,
        status_code, status_message, service_name, resource_attributes,
        scope_name, scope_version, attributes,
        dropped_attributes_count, dropped_events_count, dropped_links_count,
        links, event_count
    )
    SELECT
        tenant_id, trace_id, span_id, parent_span_id, trace_state, flags, name, kind,
        start_time, end_time, start_unix_nano, end_unix_nano, duration_ns,
        status_code, status_message, service_name, resource_attributes,
        scope_name, scope_version, attributes,
        dropped_attributes_count, dropped_events_count, dropped_links_count,
        links, event_count
    FROM pg_temp.spansink_stage_spans
    ORDER BY tenant_id, trace_id, span_id, start_time
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, trace_id, span_id, parent_span_id, name, kind, start_time, end_time,
              start_unix_nano, duration_ns, status_code, service_name,
              CASE WHEN jsonb_typeof(links) = 'array' THEN jsonb_array_length(links) ELSE 0 END
                  AS link_count
),
per_trace AS (
    SELECT tenant_id, trace_id,
           min(start_time) AS first_start_time,
           max(end_time) AS last_end_time,
           count(*) AS span_count,
           count(*) FILTER (WHERE status_code = 2) AS error_count
    FROM inserted
    GROUP BY tenant_id, trace_id
),
-- Minutes are binned in UTC whatever the session's time zone.
metrics AS (
    INSERT INTO pg_temp.spansink_stage_span_metrics (
        tenant_id, minute, service_name, span_name, span_kind, status_code,
        span_count, error_count, duration_sum_ns, latency_buckets
    )
    SELECT tenant_id,
           date_bin('1 minute', start_time, TIMESTAMPTZ '1970-01-01 00:00:00+00') AS minute,
           coalesce(service_name, '') AS service, name, kind, status_code,
           count(*), count(*) FILTER (WHERE status_code = 2), sum(duration_ns::numeric),
           spansink_latency_histogram(array_agg(spansink_latency_bucket(duration_ns)))
    FROM inserted
    GROUP BY tenant_id, minute, service, name, kind, status_code
),
-- The best root of each trace among the inserted spans: earliest start, then
-- lowest span id.
best_root AS (
    SELECT DISTINCT ON (tenant_id, trace_id)
           tenant_id, trace_id, service_name, name, span_id, start_unix_nano
    FROM inserted
    WHERE parent_span_id IS NULL
    ORDER BY tenant_id, trace_id, start_unix_nano, span_id
),
touched AS (
    INSERT INTO traces AS t (
        tenant_id, trace_id, first_start_time, last_end_time, span_count, error_count,
        root_service_name, root_span_name, root_span_id, root_start_unix_nano, updated_at
    )
    SELECT p.tenant_id, p.trace_id, p.first_start_time, p.last_end_time,
           p.span_count, p.error_count,
           r.service_name, r.name, r.span_id, r.start_unix_nano, now()
    FROM per_trace AS p
    LEFT JOIN best_root AS r ON r.tenant_id = p.tenant_id AND r.trace_id = p.trace_id
    ORDER BY p.tenant_id, p.trace_id
    ON CONFLICT (tenant_id, trace_id) DO UPDATE SET
        first_start_time = least(t.first_start_time, excluded.first_start_time),
        last_end_time = greatest(t.last_end_time, excluded.last_end_time),
        span_count = t.span_count + excluded.span_count,
        error_count = t.error_count + excluded.error_count,
        -- The new root replaces the stored one when there was none, or when it
        -- is better. Without a new root the row comparison is NULL: keep.
        root_service_name = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_service_name ELSE t.root_service_name END,
        root_span_name = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_span_name ELSE t.root_span_name END,
        root_span_id = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_span_id ELSE t.root_span_id END,
        root_start_unix_nano = CASE
            WHEN t.root_start_unix_nano IS NULL
              OR (excluded.root_start_unix_nano, excluded.root_span_id)
               < (t.root_start_unix_nano, t.root_span_id)
            THEN excluded.root_start_unix_nano ELSE t.root_start_unix_nano END,
        updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted) AS spans_inserted,
       (SELECT coalesce(sum(link_count), 0)::bigint FROM inserted) AS links_inserted,
       (SELECT count(*) FROM touched) AS traces_touched
