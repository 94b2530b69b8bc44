//! The bench's databases: each measurement gets a fresh one on the server
//! `--database-url` names, made from the migrated (and perhaps pre-filled)
//! template, and dropped afterwards.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The server, through a connection to the database `--database-url` names.
pub struct Server {
    url: String,
    admin: Client,
    /// Copies templates file by file (PostgreSQL 15 and later).
    file_copy: bool,
}

impl Server {
    pub async fn connect(url: &str) -> Result<Server> {
        let admin = client(url).await?;
        let version: i32 = admin
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await?
            .get(0);
        Ok(Server {
            url: url.to_string(),
            admin,
            file_copy: version >= 150_000,
        })
    }

    /// The URL of another database on the same server. A `dbname` parameter
    /// overrides the one in the URL (or in a `key=value` string).
    pub fn url_of(&self, database: &str) -> String {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            let sep = if self.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}dbname={database}", self.url)
        } else {
            format!("{} dbname={database}", self.url)
        }
    }

    /// Creates `name`, empty or as a copy of `template`.
    ///
    /// PostgreSQL 15 copies a template through the WAL by default: for the
    /// 10 GB template of `--prefill 10000000` that is 10 GB of WAL, and the
    /// checkpoints it forces, one after another against a 1 GB
    /// `max_wal_size`, ran on through the timed phases (rounds of 0.69 to
    /// 0.85 in one run). A file copy writes no WAL, and checkpoints before and
    /// after the copy, so each measurement starts on a settled server.
    pub async fn create(&self, name: &str, template: Option<&str>) -> Result<String> {
        check_name(name)?;
        let sql = match template {
            Some(t) => {
                check_name(t)?;
                let strategy = if self.file_copy {
                    " STRATEGY FILE_COPY"
                } else {
                    ""
                };
                format!("CREATE DATABASE {name} TEMPLATE {t}{strategy}")
            }
            None => format!("CREATE DATABASE {name}"),
        };
        self.admin.batch_execute(&sql).await?;
        Ok(self.url_of(name))
    }

    pub async fn drop_database(&self, name: &str) -> Result<()> {
        check_name(name)?;
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        Ok(())
    }
}

/// Bench database names are made here, never taken from input: still, only
/// plain identifiers reach SQL text.
fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(Error::Internal(format!("bench database name {name:?}")))
    }
}

/// A client of one database, its connection driven in the background. It
/// speaks TLS exactly as the pipeline's pool does for the same URL
/// (`sslmode`, `sslrootcert`), so that the ceiling and the pipeline pay for
/// the same encryption.
pub async fn client(url: &str) -> Result<Client> {
    let target = crate::pg::tls::parse(url)?;
    let (client, connection) = target.config.connect(target.tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Rows in the three tables a pipeline writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub spans: i64,
    pub events: i64,
    pub traces: i64,
}

pub async fn counts(client: &Client) -> Result<Counts> {
    let row = client
        .query_one(include_str!("../../../sql/bench_counts.sql"), &[])
        .await?;
    Ok(Counts {
        spans: row.get(0),
        events: row.get(1),
        traces: row.get(2),
    })
}
