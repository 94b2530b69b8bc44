-- Whether migration 1, which creates schema_migrations, has run.
SELECT to_regclass('schema_migrations') IS NOT NULL
