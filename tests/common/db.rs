//! A fresh PostgreSQL database per test, dropped afterwards even if the test
//! panicked.
//!
//! `let db = TestDb::create().await;` from a test file that declares this
//! module, through `tests/common/mod.rs` or with
//! `#[path = "common/db.rs"] mod db;`. The server is `SPANSINK_TEST_PG` (a URL
//! without a database name), by default the local one.
#![allow(dead_code)]

use std::time::Duration;

use rand::Rng;
use tokio_postgres::{Client, NoTls};

pub struct TestDb {
    /// Connection URL of the fresh database.
    pub url: String,
    pub name: String,
    server: String,
}

/// The test server's URL, without a database name.
pub fn server_url() -> String {
    std::env::var("SPANSINK_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TestDb {
    pub async fn create() -> TestDb {
        let server = server_url();
        let name = format!(
            "spansink_test_{}_{:016x}",
            std::process::id(),
            rand::rng().random::<u64>()
        );
        let admin = connect(&format!("{server}/postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb {
            url: format!("{server}/{name}"),
            name,
            server,
        }
    }

    /// A fresh database with spansink's schema applied, as `spansink run` would.
    pub async fn migrated() -> TestDb {
        let db = TestDb::create().await;
        let mut client = db.client().await;
        spansink::pg::migrate::migrate(&mut client)
            .await
            .expect("migrate");
        db
    }

    /// A plain connection to the test database.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Database settings for `spansink::pg::connect`, sized for tests.
    pub fn db_args(&self) -> spansink::pg::pool::Settings {
        spansink::pg::pool::Settings {
            url: self.url.clone(),
            pool_size: 4,
            pool_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(60),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop may run inside a runtime (where blocking on another future is
        // not allowed) or during a panic: a thread with its own runtime works
        // in both cases.
        let admin_url = format!("{}/postgres", self.server);
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&admin_url, NoTls).await?;
                let conn = tokio::spawn(conn);
                client.batch_execute(&sql).await?;
                drop(client);
                let _ = conn.await;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
            .map_err(|e| e.to_string())
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("dropping test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping test database {}: the thread panicked", self.name),
        }
    }
}
