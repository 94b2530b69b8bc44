-- Takes a tenant away from a reader role. $1: role, $2: tenant id.
-- Returns false if the role could not read it.
SELECT spansink_revoke_tenant($1::text::name, $2::text)
