//! Reader roles and the tenants they may read (migration 0004): the mapping
//! that row-level security on every tenant table follows.

use tokio_postgres::Client;

use crate::error::Result;

const GRANT: &str = include_str!("../../sql/tenant_grant.sql");
const REVOKE: &str = include_str!("../../sql/tenant_revoke.sql");
const LIST: &str = include_str!("../../sql/tenant_list.sql");

/// One reader's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub tenant: String,
    pub granted_at: String,
}

/// Lets `role` read `tenant`'s rows; false if it could already. PostgreSQL
/// refuses roles that row-level security would not restrict.
pub async fn grant(client: &Client, role: &str, tenant: &str) -> Result<bool> {
    Ok(client
        .query_one(GRANT, &[&role, &tenant])
        .await?
        .try_get(0)?)
}

/// Takes `tenant` away from `role`; false if it could not read it.
pub async fn revoke(client: &Client, role: &str, tenant: &str) -> Result<bool> {
    Ok(client
        .query_one(REVOKE, &[&role, &tenant])
        .await?
        .try_get(0)?)
}

pub async fn list(client: &Client) -> Result<Vec<Grant>> {
    client
        .query(LIST, &[])
        .await?
        .iter()
        .map(|row| {
            Ok(Grant {
                role: row.try_get(0)?,
                tenant: row.try_get(1)?,
                granted_at: row.try_get(2)?,
            })
        })
        .collect()
}
