-- The stored positions of every partition of one topic.
SELECT partition, next_offset
FROM ingest_offsets
WHERE consumer_group = $1 AND topic = $2
ORDER BY partition
