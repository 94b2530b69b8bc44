-- Every reader role and its tenants, in order.
SELECT reader::text, tenant_id, granted_at::text FROM tenant_readers ORDER BY reader, tenant_id
