//! TLS to PostgreSQL against the local server, which runs with ssl=on and a
//! certificate for the name localhost, signed by itself: the CA file for
//! verify-full is that certificate.

mod common;

use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use common::db::TestDb;
use spansink::error::{Class, Error};

/// The local server's certificate, which is its own CA.
const SERVER_CA: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The test database's URL with its host replaced and `query` appended.
fn url(db: &TestDb, host: &str, query: &str) -> String {
    let url = db.url.replacen("127.0.0.1", host, 1);
    format!("{url}?{query}")
}

fn settings(url: String) -> spansink::pg::pool::Settings {
    spansink::pg::pool::Settings {
        url,
        pool_size: 1,
        pool_timeout: Duration::from_secs(10),
        statement_timeout: Duration::from_secs(10),
    }
}

/// Whether a pooled session over `url` is encrypted, by the server's account.
async fn session_uses_tls(url: String) -> Result<bool, Error> {
    let pool = spansink::pg::pool::connect(&settings(url)).await?;
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// A self-signed certificate for localhost that did not sign the server's.
fn stranger_ca() -> tempfile::NamedTempFile {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509Builder, X509NameBuilder};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
    cert.set_serial_number(&serial).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&cert.build().to_pem().unwrap()).unwrap();
    file
}

#[tokio::test]
async fn sslmode_require_encrypts_and_disable_does_not() {
    let db = TestDb::create().await;
    assert!(session_uses_tls(url(&db, "localhost", "sslmode=require"))
        .await
        .unwrap());
    assert!(session_uses_tls(url(&db, "127.0.0.1", "sslmode=require"))
        .await
        .unwrap());
    assert!(!session_uses_tls(url(&db, "127.0.0.1", "sslmode=disable"))
        .await
        .unwrap());
    // The default is libpq's: prefer, which takes TLS when the server offers it.
    assert!(session_uses_tls(db.url.clone()).await.unwrap());
}

#[tokio::test]
async fn verify_full_accepts_the_servers_ca_and_name() {
    let db = TestDb::create().await;
    let full = format!("sslmode=verify-full&sslrootcert={SERVER_CA}");
    assert!(session_uses_tls(url(&db, "localhost", &full))
        .await
        .unwrap());
    // The key/value form carries the same settings.
    let kv = format!(
        "host=localhost port=5432 user=postgres dbname={} sslmode=verify-full sslrootcert='{SERVER_CA}'",
        db.name
    );
    assert!(session_uses_tls(kv).await.unwrap());
    // verify-ca checks the chain but not the name.
    let ca = format!("sslmode=verify-ca&sslrootcert={SERVER_CA}");
    assert!(session_uses_tls(url(&db, "127.0.0.1", &ca)).await.unwrap());
}

fn assert_refused(result: Result<bool, Error>, what: &str) {
    let e = result.expect_err(what);
    assert_eq!(e.class(), Class::Fatal, "{what}: {e}");
    let text = spansink::error::chain(&e);
    assert!(text.contains("certificate verify failed"), "{what}: {text}");
    assert!(text.contains("--database-url"), "{what}: {text}");
}

#[tokio::test]
async fn verify_full_refuses_a_wrong_ca_and_a_wrong_name() {
    let db = TestDb::create().await;
    let stranger = stranger_ca();
    let wrong_ca = format!(
        "sslmode=verify-full&sslrootcert={}",
        stranger.path().display()
    );
    assert_refused(
        session_uses_tls(url(&db, "localhost", &wrong_ca)).await,
        "a CA that did not sign the server's certificate",
    );
    let wrong_name = format!("sslmode=verify-full&sslrootcert={SERVER_CA}");
    assert_refused(
        session_uses_tls(url(&db, "127.0.0.1", &wrong_name)).await,
        "a host the certificate does not name",
    );
    // require with a root certificate checks the chain, as libpq does.
    let require_ca = format!("sslmode=require&sslrootcert={}", stranger.path().display());
    assert_refused(
        session_uses_tls(url(&db, "localhost", &require_ca)).await,
        "require with a root certificate",
    );
}

#[tokio::test]
async fn the_binary_exits_as_misconfigured_on_an_untrusted_server() {
    let db = TestDb::create().await;
    let stranger = stranger_ca();
    let out = Command::new(common::spansink::binary())
        .arg("migrate")
        .arg(format!(
            "--database-url={}",
            url(
                &db,
                "localhost",
                &format!(
                    "sslmode=verify-full&sslrootcert={}",
                    stranger.path().display()
                )
            )
        ))
        .env_remove("SPANSINK_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("certificate verify failed"), "{stderr}");

    let missing = Command::new(common::spansink::binary())
        .arg("migrate")
        .arg(format!(
            "--database-url={}",
            url(
                &db,
                "localhost",
                "sslmode=verify-full&sslrootcert=/nonexistent/root.crt"
            )
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sslrootcert") && stderr.contains("/nonexistent/root.crt"),
        "{stderr}"
    );
}
