-- Lets a reader role read a tenant's rows. $1: role, $2: tenant id.
-- Returns false if it could already.
SELECT spansink_grant_tenant($1::text::name, $2::text)
