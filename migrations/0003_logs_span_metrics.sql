-- 0003_logs_span_metrics: OTLP log records, per-minute RED metrics derived
-- from spans, and daily partitions for both.

CREATE TABLE logs (
    tenant_id                text NOT NULL,
    -- A 128-bit hash of where the record was read (source topic, partition,
    -- offset, Kafka timestamp) and its position in its message: a log record
    -- has no natural key, and this one is the same however often the message
    -- is consumed or replayed.
    record_id                bytea NOT NULL CONSTRAINT logs_record_id_length CHECK (length(record_id) = 16),
    time                     timestamptz NOT NULL,
    time_unix_nano           bigint NOT NULL,
    observed_time            timestamptz NOT NULL,
    observed_time_unix_nano  bigint NOT NULL,
    severity_number          smallint NOT NULL,
    severity_text            text NOT NULL,
    body                     jsonb NOT NULL,
    attributes               jsonb NOT NULL,
    resource_attributes      jsonb NOT NULL,
    service_name             text,
    scope_name               text NOT NULL,
    scope_version            text NOT NULL,
    event_name               text NOT NULL,
    flags                    bigint NOT NULL,
    trace_id                 bytea CONSTRAINT logs_trace_id_length CHECK (length(trace_id) = 16),
    span_id                  bytea CONSTRAINT logs_span_id_length CHECK (length(span_id) = 8),
    dropped_attributes_count bigint NOT NULL,
    -- Idempotency; the partition key must be part of it.
    PRIMARY KEY (tenant_id, record_id, time)
) PARTITION BY RANGE (time);

-- The one secondary index: the logs of a span or a trace, which is how logs
-- are read next to traces. Records without trace context stay out of it.
CREATE INDEX logs_trace ON logs (tenant_id, trace_id, span_id) WHERE trace_id IS NOT NULL;

COMMENT ON TABLE logs IS
    'One row per stored OTLP log record, partitioned by UTC day of time.';
COMMENT ON COLUMN logs.record_id IS
    'First 16 bytes of BLAKE3 over tenant, source topic, partition, offset, Kafka timestamp '
    'and the record''s index in its message.';
COMMENT ON COLUMN logs.time IS
    'When the event happened (time_unix_nano), or when it was observed if the producer '
    'left the time 0; the partition key.';
COMMENT ON COLUMN logs.severity_number IS 'OTLP SeverityNumber: 0 unspecified, 1-4 trace ... 21-24 fatal.';
COMMENT ON COLUMN logs.body IS 'The body AnyValue as JSON (null when absent).';
COMMENT ON COLUMN logs.trace_id IS 'The span context of the record; NULL when it has none.';

--------------------------------------------------------------------------------

-- Latency buckets: index 0 counts spans that end before they start
-- (underflow); index i in 1..15 counts durations in (b[i-1], b[i]] with
-- b = {0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
-- 60000} milliseconds, so index 1 is [0, 1 ms]; index 16 counts durations
-- over 60 s (overflow). pg::span_metrics::bucket is the same function.
CREATE FUNCTION spansink_latency_bucket(duration_ns bigint) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN duration_ns < 0 THEN 0
        ELSE 1 + (SELECT count(*)::integer
                  FROM unnest(ARRAY[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
                                    5000, 10000, 30000, 60000]::bigint[]) AS b(ms)
                  WHERE duration_ns > b.ms * 1000000)
    END
$$;

-- The 17 bucket counts of a list of bucket indexes.
CREATE FUNCTION spansink_latency_histogram(buckets integer[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT array_agg(coalesce(c.n, 0) ORDER BY i)
    FROM generate_series(0, 16) AS i
    LEFT JOIN (SELECT b, count(*) AS n FROM unnest(buckets) AS b GROUP BY b) AS c ON c.b = i
$$;

-- Request, error and duration figures per minute, service, span name, kind
-- and status, maintained by the transaction that stores the spans from the
-- spans it actually inserted: exact under replays and redeliveries.
--
-- Sharded by Kafka partition: each partition has one writer at a time, so
-- concurrent batches never wait on each other's bucket rows. Read with
-- sum(...) GROUP BY the other key columns (see the README).
CREATE TABLE span_metrics (
    tenant_id       text NOT NULL,
    minute          timestamptz NOT NULL,
    service_name    text NOT NULL,
    span_name       text NOT NULL,
    span_kind       smallint NOT NULL,
    status_code     smallint NOT NULL,
    shard           integer NOT NULL,
    span_count      bigint NOT NULL,
    error_count     bigint NOT NULL,
    -- numeric: a duration may be close to 2^63 (the end time is not
    -- window-checked), and an overflow would refuse a good message.
    duration_sum_ns numeric NOT NULL,
    latency_buckets bigint[] NOT NULL
        CONSTRAINT span_metrics_latency_buckets_length CHECK (cardinality(latency_buckets) = 17),
    PRIMARY KEY (tenant_id, minute, service_name, span_name, span_kind, status_code, shard)
) PARTITION BY RANGE (minute);

COMMENT ON TABLE span_metrics IS
    'Per-minute RED metrics from stored spans, partitioned by UTC day of minute.';
COMMENT ON COLUMN span_metrics.minute IS 'The span start_time truncated to the minute (UTC).';
COMMENT ON COLUMN span_metrics.service_name IS 'service.name, or '''' when the resource has none.';
COMMENT ON COLUMN span_metrics.shard IS
    'The Kafka partition the spans came from; sum over shards when reading.';
COMMENT ON COLUMN span_metrics.error_count IS 'Spans with status_code = 2 (error).';
COMMENT ON COLUMN span_metrics.latency_buckets IS
    '17 counts: [0] end before start, [1] <= 1 ms, then <= 2, 5, 10, 25, 50, 100, 250, 500 ms, '
    '1, 2.5, 5, 10, 30, 60 s, [16] > 60 s (inclusive upper bounds).';

--------------------------------------------------------------------------------

-- As in 0001, for all four daily-partitioned tables.
CREATE OR REPLACE FUNCTION spansink_ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day     date;
    parent  text;
    part    text;
    created integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(8318255638763892332);
    FOREACH day IN ARRAY days LOOP
        FOREACH parent IN ARRAY ARRAY['spans', 'span_events', 'span_metrics', 'logs'] LOOP
            part := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
            CONTINUE WHEN to_regclass(quote_ident(part)) IS NOT NULL;
            -- Every batch updates its minutes' span_metrics rows: room on each
            -- page keeps those updates HOT (no new index entry per update),
            -- which halves their cost.
            EXECUTE format(
                'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)%s',
                part, parent,
                CASE WHEN parent = 'span_metrics' THEN ' WITH (fillfactor = 50)' ELSE '' END);
            EXECUTE format(
                'ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                parent, part,
                day::timestamp AT TIME ZONE 'UTC',
                (day + 1)::timestamp AT TIME ZONE 'UTC');
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;

-- Days that already have spans partitions get the new tables' partitions too.
SELECT spansink_ensure_partitions(ARRAY(
    SELECT DISTINCT to_date(substring(c.relname FROM '_p(\d{8})$'), 'YYYYMMDD')
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'spans'::regclass));
