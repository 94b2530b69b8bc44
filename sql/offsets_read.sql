-- The stored position of one partition: the next offset to read.
SELECT next_offset
FROM ingest_offsets
WHERE consumer_group = $1 AND topic = $2 AND partition = $3
