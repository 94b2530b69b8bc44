-- Up to $2 ledger rows of dead letters recorded before $1.
DELETE FROM dead_letters
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM dead_letters WHERE dead_lettered_at < $1 LIMIT $2
))
