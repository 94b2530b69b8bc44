-- Records the dead letters a batch transaction moves its partition's offset
-- past, after the fence, in that same transaction. $1..$4: group, topic,
-- partition, and the spool that holds them; $5: the committing instance; then
-- one array element per dead letter. A row already there (the same message,
-- recorded by an earlier commit) is kept.
INSERT INTO dead_letters (
    consumer_group, topic, partition, spool_id, instance,
    "offset", id, tenant_id, stage, reason, error, sqlstate
)
SELECT $1, $2, $3, $4, $5, d.off, d.id, d.tenant, d.stage, d.reason, d.error, d.sqlstate
FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[])
    AS d(off, id, tenant, stage, reason, error, sqlstate)
ORDER BY d.off
ON CONFLICT DO NOTHING
