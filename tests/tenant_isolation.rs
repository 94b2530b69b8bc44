//! The read side's tenant isolation: reader roles see only their tenants'
//! rows, in every tenant table, whatever they set, and no partition read
//! directly shows them anything.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::db::TestDb;
use rand::Rng;
use tokio_postgres::{Client, NoTls};

/// Every table with tenant rows, and a statement that inserts one row of
/// tenant $1 into it (partitioned tables: on day 2024-01-02). Tables added
/// to `spansink_tenant_tables()` join this list, with their insert.
const TENANT_TABLES: &[(&str, &str)] = &[
    (
        "spans",
        "INSERT INTO spans VALUES ($1, decode(md5($1), 'hex'), '\\x0000000000000001', NULL, '', 1, \
         'op', 2, '2024-01-02T03:04:05Z', '2024-01-02T03:04:06Z', 0, 1, 1, 0, '', 'svc', '{}', \
         '', '', '{}', 0, 0, 0, '[]', 1)",
    ),
    (
        "span_events",
        "INSERT INTO span_events VALUES ($1, decode(md5($1), 'hex'), '\\x0000000000000001', \
         '2024-01-02T03:04:05Z', 0, '2024-01-02T03:04:05Z', 0, 'ev', '{}', 0)",
    ),
    (
        "traces",
        "INSERT INTO traces (tenant_id, trace_id, first_start_time, last_end_time, span_count, \
         error_count) VALUES ($1, decode(md5($1), 'hex'), now(), now(), 1, 0)",
    ),
    (
        "logs",
        "INSERT INTO logs (tenant_id, record_id, time, time_unix_nano, observed_time, \
         observed_time_unix_nano, severity_number, severity_text, body, attributes, \
         resource_attributes, scope_name, scope_version, event_name, flags, \
         dropped_attributes_count) VALUES ($1, decode(md5($1), 'hex'), '2024-01-02T03:04:05Z', 0, \
         '2024-01-02T03:04:05Z', 0, 9, 'INFO', '\"x\"', '{}', '{}', '', '', '', 0, 0)",
    ),
    (
        "span_metrics",
        "INSERT INTO span_metrics (tenant_id, minute, service_name, span_name, span_kind, \
         status_code, shard, span_count, error_count, duration_sum_ns, latency_buckets) \
         VALUES ($1, '2024-01-02T03:04:00Z', 'svc', 'op', 2, 0, 0, 1, 0, 1, \
         array_fill(0::bigint, ARRAY[17]))",
    ),
    (
        "dead_letters",
        "INSERT INTO dead_letters (consumer_group, topic, partition, \"offset\", id, tenant_id, \
         stage, reason, error, instance, spool_id) \
         VALUES ('g', 't', 0, abs(hashtext($1)), $1, $1, 'decode', 'bad_protobuf', 'e', 'i', 's')",
    ),
];

/// The day the rows above fall on, as days since 1970-01-01.
const DAY: i32 = 19_724;

/// Login roles made for one test, dropped after its database.
struct Roles(Vec<String>);

impl Roles {
    fn new(n: usize) -> Roles {
        let tag: u32 = rand::rng().random();
        Roles(
            (0..n)
                .map(|i| format!("spansink_reader_{}_{tag:08x}_{i}", std::process::id()))
                .collect(),
        )
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let names = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = admin_client("postgres").await;
                for r in names {
                    if let Err(e) = admin
                        .batch_execute(&format!("DROP ROLE IF EXISTS {r}"))
                        .await
                    {
                        eprintln!("dropping role {r}: {e}");
                    }
                }
            })
        })
        .join();
    }
}

async fn admin_client(dbname: &str) -> Client {
    connect(&format!("{}/{dbname}", common::db::server_url())).await
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A session of `role` in the test database.
async fn login(db: &TestDb, role: &str) -> Client {
    let mut config: tokio_postgres::Config = db.url.parse().unwrap();
    config.user(role);
    let (client, conn) = config.connect(NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A migrated database with a row of each tenant in every tenant table, the
/// partitions made the way spansink makes them, and `roles` created (LOGIN,
/// nothing else).
async fn setup(roles: &Roles, tenants: &[&str]) -> TestDb {
    let db = TestDb::migrated().await;
    let pool = spansink::pg::connect(&db.db_args()).await.unwrap();
    spansink::pg::Partitions::new()
        .ensure_days(&pool, &[DAY])
        .await
        .unwrap();
    let owner = db.client().await;
    for r in &roles.0 {
        owner
            .batch_execute(&format!("CREATE ROLE {r} LOGIN"))
            .await
            .unwrap();
    }
    for (table, insert) in TENANT_TABLES {
        for t in tenants {
            owner
                .execute(*insert, &[t])
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
        }
    }
    db
}

async fn grant(db: &TestDb, role: &str, tenant: &str) {
    let owner = db.client().await;
    assert!(spansink::pg::tenant::grant(&owner, role, tenant)
        .await
        .unwrap());
}

/// The tenants a session sees in `table`, or None if it may not read it.
async fn tenants_seen(client: &Client, table: &str) -> Option<BTreeSet<String>> {
    let rows = client
        .query(&format!("SELECT DISTINCT tenant_id FROM {table}"), &[])
        .await
        .ok()?;
    Some(rows.iter().map(|r| r.get(0)).collect())
}

fn set(tenants: &[&str]) -> Option<BTreeSet<String>> {
    Some(tenants.iter().map(|t| t.to_string()).collect())
}

/// The daily partitions of `table`, by name.
async fn partitions(owner: &Client, table: &str) -> Vec<String> {
    owner
        .query(
            "SELECT relid::text FROM pg_partition_tree($1::text::regclass) WHERE level > 0",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn every_table_with_a_tenant_column_is_guarded_and_listed_here() {
    let db = TestDb::migrated().await;
    let owner = db.client().await;
    let pool = spansink::pg::connect(&db.db_args()).await.unwrap();
    spansink::pg::Partitions::new()
        .ensure_days(&pool, &[DAY])
        .await
        .unwrap();
    // Tables (not partitions) with a tenant_id column.
    let with_tenant: BTreeSet<String> = owner
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid \
             WHERE a.attname = 'tenant_id' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
             AND c.relnamespace = current_schema()::regnamespace AND c.relname <> 'tenant_readers'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let owner_role: String = owner
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let listed: BTreeSet<String> = owner
        .query_one("SELECT spansink_tenant_tables()", &[])
        .await
        .unwrap()
        .get::<_, Vec<String>>(0)
        .into_iter()
        .collect();
    let here: BTreeSet<String> = TENANT_TABLES.iter().map(|(t, _)| t.to_string()).collect();
    assert_eq!(
        with_tenant, listed,
        "tables with tenant_id vs spansink_tenant_tables()"
    );
    assert_eq!(here, listed, "TENANT_TABLES vs spansink_tenant_tables()");
    for table in &listed {
        let (rls, policy): (bool, bool) = {
            let row = owner
                .query_one(
                    "SELECT c.relrowsecurity, EXISTS (SELECT 1 FROM pg_policy p \
                     WHERE p.polrelid = c.oid AND p.polname = 'tenant_read') \
                     FROM pg_class c WHERE c.oid = $1::text::regclass",
                    &[table],
                )
                .await
                .unwrap();
            (row.get(0), row.get(1))
        };
        assert!(
            rls && policy,
            "{table}: row-level security {rls}, policy {policy}"
        );
        for part in partitions(&owner, table).await {
            let row = owner
                .query_one(
                    "SELECT relrowsecurity, coalesce(relacl::text, '') FROM pg_class \
                     WHERE oid = $1::text::regclass",
                    &[&part],
                )
                .await
                .unwrap();
            assert!(row.get::<_, bool>(0), "{part}: row-level security");
            // Only the owner holds privileges on a partition.
            let acl: String = row.get(1);
            let owner_entry = format!("{owner_role}=");
            assert!(
                acl.trim_matches(['{', '}'])
                    .split(',')
                    .all(|entry| entry.is_empty() || entry.starts_with(&owner_entry)),
                "{part}: {acl}"
            );
        }
    }
}

#[tokio::test]
async fn a_reader_sees_only_its_tenants_rows_in_every_tenant_table() {
    let roles = Roles::new(3);
    let db = setup(&roles, &["acme", "globex", "initech"]).await;
    let (acme, globex, nobody) = (&roles.0[0], &roles.0[1], &roles.0[2]);
    grant(&db, acme, "acme").await;
    grant(&db, globex, "globex").await;
    grant(&db, globex, "initech").await;

    let as_acme = login(&db, acme).await;
    let as_globex = login(&db, globex).await;
    let as_nobody = login(&db, nobody).await;
    for (table, _) in TENANT_TABLES {
        assert_eq!(
            tenants_seen(&as_acme, table).await,
            set(&["acme"]),
            "{table}"
        );
        assert_eq!(
            tenants_seen(&as_globex, table).await,
            set(&["globex", "initech"]),
            "{table}"
        );
        assert_eq!(tenants_seen(&as_nobody, table).await, None, "{table}");
    }
    // A reader sees its own mapping, not another's.
    let mapped: Vec<String> = as_acme
        .query("SELECT tenant_id FROM tenant_readers", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(mapped, vec!["acme".to_string()]);
}

#[tokio::test]
async fn a_reader_cannot_widen_what_it_sees() {
    let roles = Roles::new(2);
    let db = setup(&roles, &["acme", "globex"]).await;
    let (acme, globex) = (&roles.0[0], &roles.0[1]);
    grant(&db, acme, "acme").await;
    grant(&db, globex, "globex").await;
    let owner = db.client().await;
    let owner_role: String = owner
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let reader = login(&db, acme).await;

    // Session variables of any name change nothing.
    for attempt in [
        "SET spansink.tenant = 'globex'",
        "SELECT set_config('app.tenant_id', 'globex', false)",
        "SET application_name = 'globex'",
    ] {
        reader.batch_execute(attempt).await.unwrap();
        for (table, _) in TENANT_TABLES {
            assert_eq!(
                tenants_seen(&reader, table).await,
                set(&["acme"]),
                "{attempt}: {table}"
            );
        }
    }

    // Everything that would switch the boundary off or move it is refused.
    let refused = [
        format!("SET ROLE {globex}"),
        format!("SET ROLE {owner_role}"),
        format!("SET SESSION AUTHORIZATION {globex}"),
        "INSERT INTO tenant_readers (reader, tenant_id) VALUES (current_user, 'globex')".into(),
        "UPDATE tenant_readers SET tenant_id = 'globex'".into(),
        "DELETE FROM tenant_readers".into(),
        "ALTER TABLE spans DISABLE ROW LEVEL SECURITY".into(),
        "DROP POLICY tenant_read ON traces".into(),
        "CREATE POLICY everything ON traces FOR SELECT USING (true)".into(),
        format!("SELECT spansink_grant_tenant('{acme}', 'globex')"),
        "SELECT spansink_ensure_partitions(ARRAY[DATE '2024-01-03'])".into(),
        "SET row_security = off; SELECT * FROM traces".into(),
    ];
    for attempt in &refused {
        assert!(
            reader.batch_execute(attempt).await.is_err(),
            "allowed: {attempt}"
        );
        // A failed SET ROLE leaves the session as it was; check it still is.
        assert_eq!(
            tenants_seen(&reader, "traces").await,
            set(&["acme"]),
            "after {attempt}"
        );
    }
    let mapped: i64 = owner
        .query_one(
            "SELECT count(*) FROM tenant_readers WHERE tenant_id = 'globex'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(mapped, 1, "only globex's reader is mapped to globex");

    // Setting its own role, or the role it already is, widens nothing.
    reader
        .batch_execute(&format!("SET ROLE {acme}"))
        .await
        .unwrap();
    for (table, _) in TENANT_TABLES {
        assert_eq!(
            tenants_seen(&reader, table).await,
            set(&["acme"]),
            "{table}"
        );
    }
    reader.batch_execute("RESET ROLE").await.unwrap();

    // A daily partition read directly shows nothing, even once a careless
    // grant gives the reader every table of the schema.
    let mut checked = 0;
    for (table, _) in TENANT_TABLES {
        for part in partitions(&owner, table).await {
            assert_eq!(tenants_seen(&reader, &part).await, None, "{part}");
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "the partitioned tables have partitions to read"
    );
    owner
        .batch_execute(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {acme}"
        ))
        .await
        .unwrap();
    for (table, _) in TENANT_TABLES {
        for part in partitions(&owner, table).await {
            let count: i64 = reader
                .query_one(&format!("SELECT count(*) FROM {part}"), &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(count, 0, "{part} read directly");
        }
    }
}

#[tokio::test]
async fn partitions_made_after_a_grant_are_guarded_too() {
    let roles = Roles::new(1);
    let db = setup(&roles, &["acme", "globex"]).await;
    let acme = &roles.0[0];
    grant(&db, acme, "acme").await;
    let owner = db.client().await;
    // Default privileges that would hand every new table to PUBLIC.
    owner
        .batch_execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC")
        .await
        .unwrap();
    let pool = spansink::pg::connect(&db.db_args()).await.unwrap();
    spansink::pg::Partitions::new()
        .ensure_days(&pool, &[DAY + 1])
        .await
        .unwrap();
    for (table, insert) in TENANT_TABLES {
        let next_day = insert.replace("2024-01-02", "2024-01-03");
        owner
            .execute(&next_day, &[&"globex2"])
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
    }
    let reader = login(&db, acme).await;
    for (table, _) in TENANT_TABLES {
        for part in partitions(&owner, table).await {
            assert_eq!(
                tenants_seen(&reader, &part).await.unwrap_or_default(),
                BTreeSet::new(),
                "{part}"
            );
        }
        assert_eq!(
            tenants_seen(&reader, table).await,
            set(&["acme"]),
            "{table}"
        );
    }
}

#[tokio::test]
async fn roles_that_row_level_security_does_not_restrict_are_refused() {
    let roles = Roles::new(3);
    let db = setup(&roles, &["acme"]).await;
    let owner = db.client().await;
    let (bypass, member, plain) = (&roles.0[0], &roles.0[1], &roles.0[2]);
    let owner_role: String = owner
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    owner
        .batch_execute(&format!(
            "ALTER ROLE {bypass} BYPASSRLS; GRANT {owner_role} TO {member}"
        ))
        .await
        .unwrap();
    for role in [bypass, member, &owner_role] {
        let e = spansink::pg::tenant::grant(&owner, role, "acme")
            .await
            .expect_err(role);
        assert!(e.to_string().contains("row-level security"), "{role}: {e}");
    }
    assert!(spansink::pg::tenant::grant(&owner, plain, "acme")
        .await
        .unwrap());
    assert!(!spansink::pg::tenant::grant(&owner, plain, "acme")
        .await
        .unwrap());
    assert!(
        spansink::pg::tenant::grant(&owner, "no_such_role_here", "acme")
            .await
            .is_err()
    );
    owner
        .batch_execute(&format!("REVOKE {owner_role} FROM {member}"))
        .await
        .unwrap();
}

fn tenant_cli(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::spansink::binary())
        .arg("tenant")
        .args(args)
        .arg(format!("--database-url={}", db.url))
        .env_remove("SPANSINK_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test]
async fn the_tenant_command_grants_lists_and_revokes() {
    let roles = Roles::new(1);
    let db = setup(&roles, &["acme", "globex"]).await;
    let role = &roles.0[0];
    let reader = login(&db, role).await;
    assert_eq!(tenants_seen(&reader, "spans").await, None);

    let (code, out) = tenant_cli(&db, &["grant", "--role", role, "--tenant", "globex"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(tenants_seen(&reader, "spans").await, set(&["globex"]));
    let (code, out) = tenant_cli(&db, &["list"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("{role}\tglobex")), "{out}");

    let (code, out) = tenant_cli(&db, &["grant", "--role", role, "--tenant", "bad tenant"]);
    assert_eq!(code, Some(2), "{out}");

    let (code, out) = tenant_cli(&db, &["revoke", "--role", role, "--tenant", "globex"]);
    assert_eq!(code, Some(0), "{out}");
    for (table, _) in TENANT_TABLES {
        assert_eq!(
            tenants_seen(&reader, table).await,
            None,
            "{table} after revoke"
        );
    }
}
