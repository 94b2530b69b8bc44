-- 0004_tenant_isolation: readers see their own tenants' rows and nothing else.
--
-- The boundary is the reader's role, not anything a session can set: which
-- role may read which tenant is the table tenant_readers, which only its owner
-- (the role that migrates and writes, which owns every table here) can change.
-- A reader is granted SELECT on the parents of the tenant tables and on its
-- own rows of tenant_readers, nothing more; every tenant table carries a
-- policy that shows a role the rows of the tenants mapped to it.
--
-- Row-level security is enabled, not forced: the owner is spansink itself,
-- which writes every tenant and must see every row (idempotency, the traces
-- upsert, the dead-letter ledger). Readers are never owners, nor members of
-- the owner's role (spansink_grant_tenant refuses them), so it always
-- applies to them, and only an owner can disable it.
--
-- Partitions are not guarded by their parent's policies when read directly,
-- so readers get no privilege on any partition, and every partition has
-- row-level security enabled with no policy at all: even a privilege granted
-- by mistake (a GRANT ... ON ALL TABLES, default privileges) shows no row.

CREATE TABLE tenant_readers (
    -- A role name: a role dropped and made again under the same name gets the
    -- same tenants back, so revoke before dropping.
    reader     name NOT NULL,
    tenant_id  text NOT NULL CONSTRAINT tenant_readers_tenant_not_empty CHECK (tenant_id <> ''),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reader, tenant_id)
);

COMMENT ON TABLE tenant_readers IS
    'Which tenants each reader role may read; changed only by spansink_grant_tenant and '
    'spansink_revoke_tenant, run by the owner. A reader sees its own rows.';

REVOKE ALL ON tenant_readers FROM PUBLIC;
ALTER TABLE tenant_readers ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_readers_own ON tenant_readers FOR SELECT
    USING (reader = current_user);

--------------------------------------------------------------------------------

-- The tables that hold tenant rows: the one list that the policies, the
-- grants and the partition guard all follow. A table added to it is covered
-- once spansink_secure_tenant_tables() runs again.
CREATE FUNCTION spansink_tenant_tables() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['spans', 'span_events', 'traces', 'logs', 'span_metrics', 'dead_letters']
$$;

COMMENT ON FUNCTION spansink_tenant_tables() IS
    'The tables whose rows belong to a tenant (column tenant_id), guarded by row-level security.';

-- Enables row-level security on every partition of the tenant tables that
-- lacks it, and takes away any privilege on it from PUBLIC and the readers.
-- Runs in the transaction that creates partitions, so a partition is guarded
-- before its first row. Returns how many partitions it guarded.
CREATE FUNCTION spansink_secure_partitions() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part    regclass;
    reader  name;
    guarded integer := 0;
BEGIN
    FOR part IN
        SELECT tree.relid
        FROM unnest(spansink_tenant_tables()) AS t(tname)
        CROSS JOIN LATERAL pg_partition_tree(t.tname::regclass) AS tree
        JOIN pg_class c ON c.oid = tree.relid
        WHERE tree.level > 0 AND NOT c.relrowsecurity
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', part);
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', part);
        FOR reader IN
            SELECT DISTINCT r.reader FROM tenant_readers r JOIN pg_roles g ON g.rolname = r.reader
        LOOP
            EXECUTE format('REVOKE ALL ON %s FROM %I', part, reader);
        END LOOP;
        guarded := guarded + 1;
    END LOOP;
    RETURN guarded;
END
$$;

COMMENT ON FUNCTION spansink_secure_partitions() IS
    'Enables row-level security (with no policy: no rows for anyone but the owner) on the '
    'partitions of the tenant tables that lack it; returns how many.';

-- Guards every tenant table: row-level security, the readers' policy, no
-- privilege for PUBLIC, SELECT for every mapped reader; then the partitions.
-- Safe to run again, and run again whenever the list grows.
CREATE FUNCTION spansink_secure_tenant_tables() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tbl    regclass;
    tname  text;
    reader name;
BEGIN
    FOREACH tname IN ARRAY spansink_tenant_tables() LOOP
        -- A name that is not a table fails here rather than leaving it unguarded.
        tbl := tname::regclass;
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
        EXECUTE format('DROP POLICY IF EXISTS tenant_read ON %s', tbl);
        -- ARRAY(...) runs once per query, and tenant_id = ANY of it can use
        -- the primary keys, which all start with tenant_id.
        EXECUTE format(
            'CREATE POLICY tenant_read ON %s FOR SELECT USING (tenant_id = ANY (ARRAY('
            'SELECT r.tenant_id FROM tenant_readers r WHERE r.reader = current_user)))',
            tbl);
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', tbl);
        FOR reader IN
            SELECT DISTINCT r.reader FROM tenant_readers r JOIN pg_roles g ON g.rolname = r.reader
        LOOP
            EXECUTE format('GRANT SELECT ON %s TO %I', tbl, reader);
        END LOOP;
    END LOOP;
    PERFORM spansink_secure_partitions();
END
$$;

COMMENT ON FUNCTION spansink_secure_tenant_tables() IS
    'Applies row-level security, the tenant_read policy and the readers'' SELECT grants to '
    'every table of spansink_tenant_tables(), and guards their partitions.';

-- Creates the missing daily partitions and guards them in one transaction.
CREATE FUNCTION spansink_ensure_secure_partitions(days date[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    created integer;
BEGIN
    created := spansink_ensure_partitions(days);
    PERFORM spansink_secure_partitions();
    RETURN created;
END
$$;

COMMENT ON FUNCTION spansink_ensure_secure_partitions(date[]) IS
    'spansink_ensure_partitions, then spansink_secure_partitions, in one transaction.';

--------------------------------------------------------------------------------

-- Lets reader_role read tenant's rows. Refuses roles that row-level security
-- would not restrict: superusers, BYPASSRLS roles, and members of a tenant
-- table's owner (who can SET ROLE to it). Returns false if it was granted already.
CREATE FUNCTION spansink_grant_tenant(reader_role name, tenant text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r       pg_roles%ROWTYPE;
    tbl     text;
    owner   oid;
    added   boolean;
BEGIN
    IF tenant IS NULL OR tenant = '' THEN
        RAISE EXCEPTION 'a tenant id is needed' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM pg_roles WHERE rolname = reader_role;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'role "%" does not exist', reader_role USING ERRCODE = 'undefined_object';
    END IF;
    IF r.rolsuper OR r.rolbypassrls THEN
        RAISE EXCEPTION 'role "%" bypasses row-level security (superuser or BYPASSRLS): it cannot be a tenant reader',
            reader_role USING ERRCODE = 'invalid_grant_operation';
    END IF;
    FOREACH tbl IN ARRAY spansink_tenant_tables() || ARRAY['tenant_readers'] LOOP
        SELECT relowner INTO owner FROM pg_class WHERE oid = tbl::regclass;
        IF pg_has_role(reader_role, owner, 'MEMBER') THEN
            RAISE EXCEPTION 'role "%" is or can become the owner of %, whom row-level security does not restrict',
                reader_role, tbl USING ERRCODE = 'invalid_grant_operation';
        END IF;
    END LOOP;
    INSERT INTO tenant_readers (reader, tenant_id) VALUES (reader_role, tenant)
        ON CONFLICT DO NOTHING;
    added := FOUND;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I',
        (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = 'tenant_readers'::regclass),
        reader_role);
    EXECUTE format('GRANT SELECT ON tenant_readers TO %I', reader_role);
    FOREACH tbl IN ARRAY spansink_tenant_tables() LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', tbl::regclass, reader_role);
    END LOOP;
    RETURN added;
END
$$;

COMMENT ON FUNCTION spansink_grant_tenant(name, text) IS
    'Maps a reader role to a tenant and grants it SELECT on the tenant tables; false if it was mapped already.';

-- Takes tenant away from reader_role; a role left with no tenant loses its
-- grants too. Returns false if it was not granted.
CREATE FUNCTION spansink_revoke_tenant(reader_role name, tenant text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    tbl     text;
    removed boolean;
BEGIN
    DELETE FROM tenant_readers WHERE reader = reader_role AND tenant_id = tenant;
    removed := FOUND;
    IF NOT EXISTS (SELECT 1 FROM tenant_readers WHERE reader = reader_role)
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = reader_role) THEN
        FOREACH tbl IN ARRAY spansink_tenant_tables() LOOP
            EXECUTE format('REVOKE ALL ON %s FROM %I', tbl::regclass, reader_role);
        END LOOP;
        EXECUTE format('REVOKE ALL ON tenant_readers FROM %I', reader_role);
    END IF;
    RETURN removed;
END
$$;

COMMENT ON FUNCTION spansink_revoke_tenant(name, text) IS
    'Removes a reader''s tenant; a reader left with none loses its SELECT grants. False if it was not granted.';

-- Readers have no use for spansink's functions, and each of them changes
-- the schema or the mapping.
REVOKE EXECUTE ON FUNCTION spansink_ensure_partitions(date[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION spansink_tenant_tables() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION spansink_secure_partitions() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION spansink_secure_tenant_tables() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION spansink_ensure_secure_partitions(date[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION spansink_grant_tenant(name, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION spansink_revoke_tenant(name, text) FROM PUBLIC;

SELECT spansink_secure_tenant_tables();
