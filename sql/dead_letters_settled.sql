-- What PostgreSQL holds about spooled dead letters, in one statement so that
-- one snapshot answers for the offset and the ledger together: with two reads,
-- a commit landing between them would look like "committed, but not as a
-- dead letter". One input row per entry: group, topic, partition, offset.
-- Returns, in input order, the partition's stored next offset (NULL: none)
-- and the ledger's spool id for the message (NULL: no ledger row).
SELECT o.next_offset, d.spool_id
FROM unnest($1::text[], $2::text[], $3::int4[], $4::bigint[]) WITH ORDINALITY
    AS e(grp, topic, part, off, ord)
LEFT JOIN ingest_offsets AS o
    ON o.consumer_group = e.grp AND o.topic = e.topic AND o.partition = e.part
LEFT JOIN dead_letters AS d
    ON d.consumer_group = e.grp AND d.topic = e.topic AND d.partition = e.part
   AND d."offset" = e.off
ORDER BY e.ord
