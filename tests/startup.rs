//! Start-up behaviour: invalid configuration fails at once and names the
//! setting; a topic that does not exist yet is waited for, unready, not fatal.
//! A newcomer's first mistakes (no such database, a wrong password or role, a
//! port where nothing listens, a broker that does not answer, a topic that
//! does not exist) each say what is wrong and which setting to look at.
//! And the process keeps its memory in small pages.

mod common;

use std::process::Command;
use std::time::Duration;

use common::db::TestDb;
use common::kafka::{fixture, produce, producer};
use common::spansink::{http_get, wait_for, Instance};
use common::traffic::span_count;
use spansink::kafka::mock::MockKafka;

fn run_with(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(common::spansink::binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("SPANSINK_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.arg("run").args(args).output().expect("run spansink");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn invalid_configuration_fails_at_start_naming_the_setting() {
    let cases: &[(&[&str], &str)] = &[
        (&["--traces-topic=otlp_spans:avro"], "avro"),
        (&["--kafka=enable.auto.commit=true"], "enable.auto.commit"),
        (&["--batch-linger=soon"], "--batch-linger"),
        (&["--breaker-threshold=2"], "--breaker-threshold"),
        (
            &["--database-url=postgres://db:notaport/x"],
            "--database-url",
        ),
        (&["--default-tenant=a/b"], "--default-tenant"),
        (&["--dlq-topic=otlp_spans"], "--dlq-topic"),
    ];
    for (args, setting) in cases {
        let (code, stderr) = run_with(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(setting),
            "{args:?} should name {setting}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_librdkafka_setting_is_named() {
    let db = TestDb::migrated().await;
    let kafka = MockKafka::start(1).expect("mock kafka");
    let (code, stderr) = run_with(&[
        &format!("--brokers={}", kafka.bootstrap_servers()),
        &format!("--database-url={}", db.url),
        "--metrics-addr=127.0.0.1:0",
        "--kafka=no.such.setting=1",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no.such.setting"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_waited_for_unready_then_consumed() {
    // An empty database: `run` applies the migrations itself.
    let db = TestDb::create().await;
    let kafka = MockKafka::start(1).expect("mock kafka");
    let bootstrap = kafka.bootstrap_servers().to_string();
    let mut instance = Instance::spawn(
        &bootstrap,
        &db.url,
        "g-wait",
        &["--traces-topic=late_topic"],
    );
    wait_for(
        "unready, waiting for the topic",
        Duration::from_secs(30),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| {
                    code == 503
                        && body.contains("waiting for topics")
                        && body.contains("late_topic")
                        && body.contains("--traces-topic")
                })
        },
    )
    .await;
    assert!(instance.is_running(), "a missing topic is not fatal");
    let versions: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .expect("migrated at start")
        .get(0);
    assert!(versions >= 1);
    assert!(instance.logs().contains("waiting for topics to exist"));

    kafka.create_topic("late_topic", 1).expect("topic");
    let p = producer(&bootstrap);
    produce(
        &p,
        "late_topic",
        0,
        Some("acme"),
        &fixture("traces_unknown_field.pb"),
    )
    .await;
    wait_for(
        "consumed once the topic exists",
        Duration::from_secs(60),
        || async { span_count(&db).await == 2 },
    )
    .await;
    wait_for("ready", Duration::from_secs(30), || async {
        http_get(&instance.metrics_addr, "/readyz")
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn run_against_database(url: &str) -> (i32, String) {
    let spool = tempfile::tempdir().expect("spool");
    run_with(&[
        &format!("--database-url={url}"),
        &format!("--brokers=127.0.0.1:{}", closed_port()),
        "--metrics-addr=127.0.0.1:0",
        "--admin-addr=off",
        &format!("--spool-dir={}", spool.path().display()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_does_not_exist_stops_the_process_with_postgresql_s_message_and_the_setting(
) {
    let db = TestDb::create().await;
    let missing = format!("{}_missing", db.name);
    let url = db.url.replace(&db.name, &missing);
    let (code, stderr) = run_against_database(&url);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        format!("database \"{missing}\" does not exist"),
        "SQLSTATE 3D000".to_string(),
        "--database-url".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_exist_stops_the_process_with_postgresql_s_message_and_the_setting() {
    let db = TestDb::create().await;
    let role = format!("nobody_{}", std::process::id());
    // A parameter overrides the user the server URL may name.
    let url = format!("{}?user={role}", db.url);
    let (code, stderr) = run_against_database(&url);
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        format!("role \"{role}\" does not exist"),
        "SQLSTATE 28000".to_string(),
        "--database-url".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_stops_the_process_with_the_server_s_message_and_the_setting() {
    let server = common::pgproxy::password_refusing_server().await;
    let url = format!("postgres://postgres:wrong@{server}/test");
    let (code, stderr) = tokio::task::spawn_blocking(move || run_against_database(&url))
        .await
        .expect("run");
    assert_eq!(code, 2, "{stderr}");
    for expected in [
        "password authentication failed for user \"postgres\"",
        "SQLSTATE 28P01",
        "--database-url",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(
            !stderr.contains("wrong"),
            "the password is never printed: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_port_where_nothing_listens_keeps_the_instance_unready_saying_why() {
    let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
    let mut instance = Instance::spawn("127.0.0.1:9", &url, "g-refused", &[]);
    wait_for(
        "unready, naming the setting and the refusal",
        Duration::from_secs(30),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| {
                    code == 503
                        && body.contains("--database-url")
                        && body.contains("Connection refused")
                })
        },
    )
    .await;
    assert!(
        instance.is_running(),
        "a database that is down is waited for"
    );
    let logs = instance.logs();
    assert!(
        logs.contains("--database-url") && logs.contains("Connection refused"),
        "{logs}"
    );
    instance.sigterm();
    let status = instance.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_does_not_answer_keeps_the_instance_unready_saying_why() {
    let db = TestDb::migrated().await;
    let port = closed_port();
    let brokers = format!("127.0.0.1:{port}");
    let mut instance = Instance::spawn(&brokers, &db.url, "g-silent", &[]);
    wait_for(
        "unready, naming the setting and the broker",
        Duration::from_secs(30),
        || async {
            http_get(&instance.metrics_addr, "/readyz")
                .await
                .is_some_and(|(code, body)| {
                    code == 503 && body.contains("--brokers") && body.contains(&brokers)
                })
        },
    )
    .await;
    assert!(instance.is_running(), "a broker that is down is waited for");
    instance.sigterm();
    let status = instance.wait_exit(Duration::from_secs(30)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_directory_belongs_to_one_process_at_a_time() {
    let db = TestDb::migrated().await;
    let kafka = MockKafka::start(1).expect("mock kafka");
    kafka.create_topic("otlp_spans", 1).expect("topic");
    let spool = tempfile::tempdir().expect("spool");
    let first = Instance::spawn_with_spool(
        kafka.bootstrap_servers(),
        &db.url,
        "g-spool-owner",
        Some(spool.path()),
        &[],
    );
    wait_for("the first instance up", Duration::from_secs(30), || async {
        http_get(&first.metrics_addr, "/healthz").await.is_some()
    })
    .await;
    // A second instance on the same spool refuses to start, naming the setting.
    let (code, stderr) = run_with(&[
        &format!("--brokers={}", kafka.bootstrap_servers()),
        &format!("--database-url={}", db.url),
        "--metrics-addr=127.0.0.1:0",
        &format!("--spool-dir={}", spool.path().display()),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--spool-dir"), "{stderr}");
    // So does `spool drain`, which would publish or discard behind its back.
    let out = Command::new(common::spansink::binary())
        .args([
            "spool",
            &format!("--spool-dir={}", spool.path().display()),
            "drain",
            &format!("--brokers={}", kafka.bootstrap_servers()),
            &format!("--database-url={}", db.url),
        ])
        .output()
        .expect("spool drain");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spool-dir"));
    // Reading it is harmless and allowed.
    let list = Command::new(common::spansink::binary())
        .args([
            "spool",
            &format!("--spool-dir={}", spool.path().display()),
            "list",
        ])
        .output()
        .expect("spool list");
    assert!(list.status.success());
    drop(first);
}

/// Huge pages would hold 2 MiB resident for every page mimalloc touches and
/// partly gives back: the process turns them off for itself, whatever the
/// kernel's default.
#[test]
fn the_process_runs_without_transparent_huge_pages() {
    let mut broker = Command::new(common::spansink::binary())
        .args(["mock-broker", "--topic", "t", "--partitions", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mock-broker");
    // It serves until its standard input closes: held open until its status
    // is read, as an exited process no longer reports THP_enabled.
    let stdin = broker.stdin.take().expect("stdin");
    // It prints its address once it is up, long after main's first line.
    let mut line = String::new();
    let stdout = broker.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("read the broker's address");
    assert!(line.starts_with("bootstrap="), "{line:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.id()));
    drop(stdin);
    let _ = broker.kill();
    let _ = broker.wait();
    let status = status.expect("the process's status");
    let thp = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .expect("a kernel that reports THP_enabled");
    assert_eq!(thp.split_whitespace().nth(1), Some("0"), "{thp}");
}
