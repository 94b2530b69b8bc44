-- The fence of a batch whose worker knows the stored position: moves it from
-- $4 (expected) to $5 (the batch's last offset + 1). No row changes when
-- another writer moved it meanwhile, or when it would not move forward. It
-- also locks the row until the transaction ends, serialising the writers of
-- one partition.
UPDATE ingest_offsets
SET next_offset = $5, updated_at = now()
WHERE consumer_group = $1 AND topic = $2 AND partition = $3
  AND next_offset = $4
  AND $5 > next_offset
