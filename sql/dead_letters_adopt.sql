-- An upgrade's backfill: a spool entry written before the ledger existed,
-- whose partition's offset is already past it, was committed as a dead letter
-- by the spool that holds it. Recorded here once, so that it is published.
-- Refused (no row) when the offset is not past it: then it was never committed.
INSERT INTO dead_letters (
    consumer_group, topic, partition, "offset", id, tenant_id, stage, reason,
    error, sqlstate, instance, spool_id
)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12
FROM ingest_offsets AS o
WHERE o.consumer_group = $1 AND o.topic = $2 AND o.partition = $3 AND o.next_offset > $4
ON CONFLICT DO NOTHING
