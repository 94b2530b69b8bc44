-- The daily tables of spans, span_events, span_metrics and logs whose whole
-- UTC day ended at or before $1 (the horizon), oldest first. Found by the
-- name spansink_ensure_partitions gives them, in the current schema, whether
-- still attached, half detached (a run interrupted during DETACH
-- CONCURRENTLY) or detached and not yet dropped.
SELECT c.oid::regclass::text AS partition,
       p.oid::regclass::text AS parent,
       i.inhdetachpending AS detach_pending
FROM pg_class AS c
LEFT JOIN pg_inherits AS i ON i.inhrelid = c.oid
LEFT JOIN pg_class AS p ON p.oid = i.inhparent
WHERE c.relnamespace = to_regnamespace(quote_ident(current_schema()))
  AND c.relkind = 'r'
  AND c.relname ~ '^(spans|span_events|span_metrics|logs)_p[0-9]{8}$'
  AND (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= $1
ORDER BY right(c.relname, 8), c.relname
