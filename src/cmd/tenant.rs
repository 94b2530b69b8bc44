//! `spansink tenant grant|revoke|list`: the reader roles of the read side and
//! the tenants each may read.

use clap::{Args, Subcommand};

use crate::config::DbArgs;
use crate::error::{Error, Result};
use crate::pg;

#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    pub action: TenantAction,
}

#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Let an existing role read one tenant's rows (SELECT on the tenant tables,
    /// under row-level security). Superusers, BYPASSRLS roles and members of
    /// the tables' owner are refused: no policy restricts them.
    Grant(RoleTenant),
    /// Take a tenant away from a role; a role left with none loses its grants.
    Revoke(RoleTenant),
    /// List the reader roles and their tenants.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct RoleTenant {
    #[command(flatten)]
    pub db: DbArgs,
    /// The reader's PostgreSQL role; create it (and its password) beforehand.
    #[arg(long, env = "SPANSINK_TENANT_ROLE")]
    pub role: String,
    /// The tenant id, as in the tenant header.
    #[arg(long, env = "SPANSINK_TENANT")]
    pub tenant: String,
}

impl RoleTenant {
    fn validate(&self) -> Result<()> {
        if self.role.is_empty() {
            return Err(Error::config("--role", "is empty"));
        }
        crate::tenant::validate(&self.tenant).map_err(|e| Error::config("--tenant", e))
    }
}

/// Runs the action and returns what to print.
pub async fn run(args: &TenantArgs) -> Result<String> {
    let db = match &args.action {
        TenantAction::Grant(rt) | TenantAction::Revoke(rt) => {
            rt.validate()?;
            &rt.db
        }
        TenantAction::List(list) => &list.db,
    };
    db.validate()?;
    let pool = pg::pool::connect(&db.settings()).await?;
    let client = pool.get().await?;
    match &args.action {
        TenantAction::Grant(rt) => {
            let added = pg::tenant::grant(&client, &rt.role, &rt.tenant).await?;
            Ok(if added {
                format!("{} may now read tenant {}", rt.role, rt.tenant)
            } else {
                format!("{} could already read tenant {}", rt.role, rt.tenant)
            })
        }
        TenantAction::Revoke(rt) => {
            let removed = pg::tenant::revoke(&client, &rt.role, &rt.tenant).await?;
            Ok(if removed {
                format!("{} may no longer read tenant {}", rt.role, rt.tenant)
            } else {
                format!("{} could not read tenant {}", rt.role, rt.tenant)
            })
        }
        TenantAction::List(_) => {
            let grants = pg::tenant::list(&client).await?;
            let mut out = String::from("role\ttenant\tgranted_at");
            for g in grants {
                out.push_str(&format!("\n{}\t{}\t{}", g.role, g.tenant, g.granted_at));
            }
            Ok(out)
        }
    }
}
