-- 0001_init: offsets, spans, span events, the per-trace summary, and the
-- function that creates daily partitions.
--
-- Ingest speed is the first concern of this schema: the only indexes are the
-- primary keys, which idempotency needs anyway. Each index below says what it
-- is for.

CREATE TABLE schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE schema_migrations IS
    'Migrations applied by spansink, one row per version.';

--------------------------------------------------------------------------------

CREATE TABLE ingest_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

COMMENT ON TABLE ingest_offsets IS
    'Kafka progress, committed in the same transaction as the rows it covers: '
    'the source of truth for where a partition resumes.';
COMMENT ON COLUMN ingest_offsets.next_offset IS
    'The offset of the next message to read (last stored offset + 1). Only ever '
    'moves forward; a writer that expects another value is fenced.';

--------------------------------------------------------------------------------

CREATE TABLE spans (
    tenant_id                text NOT NULL,
    trace_id                 bytea NOT NULL CONSTRAINT spans_trace_id_length CHECK (length(trace_id) = 16),
    span_id                  bytea NOT NULL CONSTRAINT spans_span_id_length CHECK (length(span_id) = 8),
    parent_span_id           bytea CONSTRAINT spans_parent_span_id_length CHECK (length(parent_span_id) = 8),
    trace_state              text NOT NULL,
    flags                    bigint NOT NULL,
    name                     text NOT NULL,
    kind                     smallint NOT NULL,
    start_time               timestamptz NOT NULL,
    end_time                 timestamptz NOT NULL,
    start_unix_nano          bigint NOT NULL,
    end_unix_nano            bigint NOT NULL,
    duration_ns              bigint NOT NULL,
    status_code              smallint NOT NULL,
    status_message           text NOT NULL,
    service_name             text,
    resource_attributes      jsonb NOT NULL,
    scope_name               text NOT NULL,
    scope_version            text NOT NULL,
    attributes               jsonb NOT NULL,
    dropped_attributes_count bigint NOT NULL,
    dropped_events_count     bigint NOT NULL,
    dropped_links_count      bigint NOT NULL,
    links                    jsonb NOT NULL,
    event_count              integer NOT NULL,
    -- Idempotency: a replayed span conflicts here and is skipped. The partition
    -- key must be part of every unique key; a replayed span always carries the
    -- same start time, so this is still unique per tenant. It also serves trace
    -- lookups: `traces` gives a trace's time bounds, which prune partitions.
    PRIMARY KEY (tenant_id, trace_id, span_id, start_time)
) PARTITION BY RANGE (start_time);

-- No DEFAULT partition, on purpose: a row without a daily partition fails
-- loudly and spansink creates the day, instead of piling up in a partition that
-- retention can never drop and that blocks creating the day later.

-- No secondary index: searching by service or attribute is left to indexes a
-- deployment adds for its own queries (CREATE INDEX on the parent reaches every
-- partition); each one would slow every insert.

COMMENT ON TABLE spans IS
    'One row per stored OTLP span, partitioned by UTC day of start_time.';
COMMENT ON COLUMN spans.tenant_id IS 'Owner of the row; every query filters on it.';
COMMENT ON COLUMN spans.parent_span_id IS 'NULL for a root span.';
COMMENT ON COLUMN spans.trace_state IS 'W3C tracestate, as sent.';
COMMENT ON COLUMN spans.flags IS 'OTLP span flags (W3C trace flags in the low byte).';
COMMENT ON COLUMN spans.kind IS
    'OTLP SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer.';
COMMENT ON COLUMN spans.start_time IS
    'start_unix_nano rounded down to the microsecond; the partition key.';
COMMENT ON COLUMN spans.end_time IS 'end_unix_nano rounded down to the microsecond.';
COMMENT ON COLUMN spans.start_unix_nano IS 'Exact start, nanoseconds since the Unix epoch.';
COMMENT ON COLUMN spans.end_unix_nano IS 'Exact end, nanoseconds since the Unix epoch.';
COMMENT ON COLUMN spans.duration_ns IS 'end_unix_nano - start_unix_nano.';
COMMENT ON COLUMN spans.status_code IS 'OTLP StatusCode: 0 unset, 1 ok, 2 error.';
COMMENT ON COLUMN spans.service_name IS
    'The resource attribute service.name when it is a string, else NULL.';
COMMENT ON COLUMN spans.resource_attributes IS 'Resource attributes as a JSON object.';
COMMENT ON COLUMN spans.scope_name IS 'Instrumentation scope name.';
COMMENT ON COLUMN spans.scope_version IS 'Instrumentation scope version.';
COMMENT ON COLUMN spans.attributes IS 'Span attributes as a JSON object.';
COMMENT ON COLUMN spans.links IS
    'Span links as a JSON array of {trace_id, span_id, trace_state, flags, attributes, '
    'dropped_attributes_count}, ids in lowercase hex.';
COMMENT ON COLUMN spans.event_count IS 'Events sent with the span; they are in span_events.';

--------------------------------------------------------------------------------

CREATE TABLE span_events (
    tenant_id                text NOT NULL,
    trace_id                 bytea NOT NULL CONSTRAINT span_events_trace_id_length CHECK (length(trace_id) = 16),
    span_id                  bytea NOT NULL CONSTRAINT span_events_span_id_length CHECK (length(span_id) = 8),
    span_start_time          timestamptz NOT NULL,
    event_index              integer NOT NULL,
    time                     timestamptz NOT NULL,
    time_unix_nano           bigint NOT NULL,
    name                     text NOT NULL,
    attributes               jsonb NOT NULL,
    dropped_attributes_count bigint NOT NULL,
    -- Idempotency, as for spans; also finds the events of a span.
    PRIMARY KEY (tenant_id, trace_id, span_id, span_start_time, event_index)
) PARTITION BY RANGE (span_start_time);

-- No foreign key to spans: checking it would cost an index probe per event, and
-- both rows are written by the same transaction anyway.

COMMENT ON TABLE span_events IS
    'Span events, partitioned by their span''s start so that they live and expire with it.';
COMMENT ON COLUMN span_events.span_start_time IS
    'The owning span''s start_time: the partition key.';
COMMENT ON COLUMN span_events.event_index IS 'Position of the event within its span, from 0.';
COMMENT ON COLUMN span_events.time IS 'time_unix_nano rounded down to the microsecond.';
COMMENT ON COLUMN span_events.time_unix_nano IS 'Exact time, nanoseconds since the Unix epoch.';
COMMENT ON COLUMN span_events.attributes IS 'Event attributes as a JSON object.';

--------------------------------------------------------------------------------

-- Every batch that touches a trace updates its row: leave room on each page so
-- that those updates stay HOT (no index column changes in the common case).
CREATE TABLE traces (
    tenant_id            text NOT NULL,
    trace_id             bytea NOT NULL CONSTRAINT traces_trace_id_length CHECK (length(trace_id) = 16),
    first_start_time     timestamptz NOT NULL,
    last_end_time        timestamptz NOT NULL,
    span_count           bigint NOT NULL,
    error_count          bigint NOT NULL,
    root_service_name    text,
    root_span_name       text,
    root_span_id         bytea,
    root_start_unix_nano bigint,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- The upsert key of every batch, and trace lookup by id.
    PRIMARY KEY (tenant_id, trace_id)
) WITH (fillfactor = 90);

COMMENT ON TABLE traces IS
    'One summary row per tenant and trace, maintained from the spans each transaction '
    'actually inserts, so that it stays exact however often a message is replayed.';
COMMENT ON COLUMN traces.first_start_time IS
    'Earliest span start_time: with last_end_time, bounds the partitions holding the trace.';
COMMENT ON COLUMN traces.last_end_time IS 'Latest span end_time.';
COMMENT ON COLUMN traces.span_count IS 'Distinct spans stored.';
COMMENT ON COLUMN traces.error_count IS 'Stored spans with status_code = 2 (error).';
COMMENT ON COLUMN traces.root_service_name IS 'service_name of the root span.';
COMMENT ON COLUMN traces.root_span_name IS 'name of the root span.';
COMMENT ON COLUMN traces.root_span_id IS
    'The root span: of several, the earliest start wins, then the lowest span id.';
COMMENT ON COLUMN traces.root_start_unix_nano IS 'NULL until a root span arrives.';

--------------------------------------------------------------------------------

-- Creates the daily partitions of spans and span_events for each day, if
-- missing. Several replicas may race on the same day: the advisory lock makes
-- them take turns, and the loser finds the partition made.
--
-- A partition is created as a plain table and then attached, rather than with
-- CREATE TABLE ... PARTITION OF: attaching takes only a SHARE UPDATE EXCLUSIVE
-- lock on the parent, so batches writing other days keep running meanwhile.
CREATE FUNCTION spansink_ensure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day     date;
    parent  text;
    part    text;
    created integer := 0;
BEGIN
    -- 'spansink' in ASCII, plus one: distinct from the migration lock.
    PERFORM pg_advisory_xact_lock(8318255638763892332);
    FOREACH day IN ARRAY days LOOP
        FOREACH parent IN ARRAY ARRAY['spans', 'span_events'] LOOP
            part := format('%s_p%s', parent, to_char(day, 'YYYYMMDD'));
            CONTINUE WHEN to_regclass(quote_ident(part)) IS NOT NULL;
            EXECUTE format(
                'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                part, parent);
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

COMMENT ON FUNCTION spansink_ensure_partitions(date[]) IS
    'Creates the spans_pYYYYMMDD and span_events_pYYYYMMDD partitions (UTC days) that are '
    'missing; returns how many tables it created.';
