-- The spans one demo run produced: its tenants, its recent days, its run id.
SELECT count(*)
FROM spans
WHERE tenant_id = ANY($1::text[])
  AND start_time >= $3
  AND resource_attributes @> jsonb_build_object('loadgen.run_id', $2::text)
