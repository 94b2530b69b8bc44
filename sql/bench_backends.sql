-- The server processes of one database's sessions of one application: whose
-- CPU time the bench counts as PostgreSQL's.
SELECT pid
FROM pg_stat_activity
WHERE datname = $1 AND application_name = $2
