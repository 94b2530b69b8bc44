-- Creates the missing daily partitions, guarded for tenant isolation before
-- any row reaches them. $1: days since 1970-01-01 (UTC).
SELECT spansink_ensure_secure_partitions(ARRAY(SELECT DATE '1970-01-01' + d FROM unnest($1::int4[]) AS d))
