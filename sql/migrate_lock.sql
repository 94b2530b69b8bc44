-- Serialises migrators, so that several replicas can start at once. The key is
-- 'spansink' in ASCII. A session lock: it spans one transaction per migration.
SELECT pg_advisory_lock(8318255638763892331)
