-- Per-connection settings, applied once when the pool opens a connection.
-- $1: statement_timeout with its unit, such as '120000ms' ('0' disables).
SELECT set_config('statement_timeout', $1, false)
