-- Readiness probe: the server answers queries.
SELECT 1
