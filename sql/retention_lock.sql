-- One retention run at a time across replicas: a session lock, because
-- DETACH PARTITION CONCURRENTLY runs outside any transaction. The key is
-- 'spansink' in ASCII, plus two: distinct from the migration and partition locks.
SELECT pg_try_advisory_lock(8318255638763892333)
