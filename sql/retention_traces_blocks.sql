-- How many blocks `traces` has: retention deletes block range by block range.
SELECT (pg_relation_size('traces') / current_setting('block_size')::bigint)::bigint
