-- The stored position of one partition, once no transaction is changing it.
-- FOR SHARE waits for a writer that still holds the row (a batch whose client
-- vanished but whose server transaction has not ended yet), so the answer
-- cannot be overtaken by that writer's COMMIT.
SELECT next_offset
FROM ingest_offsets
WHERE consumer_group = $1 AND topic = $2 AND partition = $3
FOR SHARE
