-- The traces that ended before $3 (the horizon) in blocks [$1, $2): a TID
-- range scan, so each batch reads only its own blocks and no index on
-- last_end_time is needed (one would make every upsert a non-HOT update).
DELETE FROM traces
WHERE ctid >= format('(%s,0)', $1::bigint)::tid
  AND ctid < format('(%s,0)', $2::bigint)::tid
  AND last_end_time < $3
