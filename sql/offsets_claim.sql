-- The fence of a partition's first batch ever: creates its row. No row is
-- inserted when another writer created it first.
INSERT INTO ingest_offsets (consumer_group, topic, partition, next_offset, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT DO NOTHING
