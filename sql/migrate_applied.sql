-- Applied versions. Naming `name` too makes a same-named table of another
-- migration tool fail loudly instead of being misread.
SELECT version, name FROM schema_migrations ORDER BY version
