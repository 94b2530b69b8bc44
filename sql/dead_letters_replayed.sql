-- `spansink replay` stored this dead letter's message: the ledger says so.
UPDATE dead_letters
SET replayed_at = now()
WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND "offset" = $4
  AND replayed_at IS NULL
