//! A password planted in the database URL and in the Kafka settings, given
//! through the environment and through secret files, appears nowhere an
//! operator or a consumer of the dead-letter topic could read it: `--help`,
//! logs at debug level, error messages, /metrics, dead-letter headers, the
//! process's command line.

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::db::TestDb;
use common::kafka::{fixture, produce, producer, read_all, DLQ, TOPIC};
use common::spansink::{binary, wait_for, Instance};
use common::traffic::{generator, marked_message, span_count};
use rand::Rng;
use rdkafka::message::{Headers as _, Message as _};

/// A password no output could hold by chance.
fn plant() -> String {
    format!("Pl4nted-{:016x}", rand::rng().random::<u64>())
}

fn secret_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

fn assert_hidden(what: &str, text: &str, password: &str) {
    assert!(
        !text.contains(password),
        "{what} shows the password:\n{text}"
    );
}

/// Runs the binary to its exit, at most 60 s, without inherited `SPANSINK_*`.
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("SPANSINK_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("spansink {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_shows_no_secret_from_the_environment() {
    let password = plant();
    let url = format!("postgres://spansink:{password}@db.invalid/telemetry");
    let kafka = format!("sasl.username=spansink;sasl.password={password}");
    let env = [
        ("SPANSINK_DATABASE_URL", url.as_str()),
        ("DATABASE_URL", url.as_str()),
        ("SPANSINK_KAFKA", kafka.as_str()),
    ];
    let mut shown = 0;
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["migrate", "--help"],
        &["replay", "--help"],
        &["spool", "drain", "--help"],
        &["tenant", "grant", "--help"],
        &["loadgen", "--help"],
        &["demo", "--help"],
        &["bench", "--help"],
    ] {
        let out = run_to_exit(args, &env);
        let help = text(&out);
        assert!(out.status.success(), "{args:?}: {help}");
        assert_hidden(&format!("{args:?}"), &help, &password);
        if help.contains("--database-url") {
            shown += 1;
        }
    }
    assert!(shown >= 5, "the database flags are documented in the help");
    let run_help = text(&run_to_exit(&["run", "--help"], &env));
    for flag in [
        "--database-url-file",
        "--kafka-file",
        "SPANSINK_DATABASE_URL_FILE",
    ] {
        assert!(run_help.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn errors_and_debug_logs_show_no_secret() {
    let password = plant();
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let spool_flag = format!("--spool-dir={}", spool.display());
    // Each setup fails at start, by a different path: tokio-postgres's parser,
    // PostgreSQL refusing the login, a malformed line of the Kafka file, and
    // librdkafka refusing a setting.
    let unknown_option = secret_file(&format!(
        "postgres://spansink:{password}@127.0.0.1:5432/postgres?{password}=1"
    ));
    let bad_login = secret_file(&format!(
        "host=127.0.0.1 port=5432 user=spansink_no_such_role_x password={password} dbname=postgres"
    ));
    let good_url = secret_file("postgres://postgres@127.0.0.1:5432/postgres\n");
    let bare_password = secret_file(&format!("sasl.username=spansink\n{password}\n"));
    let typo = secret_file(&format!("sasl.pasword={password}\n"));
    let kafka_ok = secret_file(&format!("sasl.password={password}\n"));
    let db_flag =
        |f: &tempfile::NamedTempFile| format!("--database-url-file={}", f.path().display());
    let kafka_flag = |f: &tempfile::NamedTempFile| format!("--kafka-file={}", f.path().display());
    // What each failure names, so that the operator knows where to look.
    let cases = [
        (
            "an unknown option in the URL",
            db_flag(&unknown_option),
            kafka_flag(&kafka_ok),
            "--database-url",
        ),
        (
            "a refused login",
            db_flag(&bad_login),
            kafka_flag(&kafka_ok),
            "spansink_no_such_role_x",
        ),
        (
            "a bare password in the Kafka file",
            db_flag(&good_url),
            kafka_flag(&bare_password),
            "line 2",
        ),
        (
            "a misspelt librdkafka setting",
            db_flag(&good_url),
            kafka_flag(&typo),
            "sasl.pasword",
        ),
    ];
    for (what, db, kafka, named) in &cases {
        let out = run_to_exit(
            &[
                "--log=debug",
                "run",
                "--brokers=127.0.0.1:9",
                db,
                kafka,
                "--kafka=debug=generic,conf,security",
                "--metrics-addr=127.0.0.1:0",
                "--admin-addr=off",
                &spool_flag,
            ],
            &[],
        );
        let output = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {output}");
        assert!(output.contains(named), "{what}: names {named}: {output}");
        assert_hidden(what, &output, &password);
    }
    // The same refused login through the environment, and through `migrate`.
    let url = format!("postgres://spansink_no_such_role_x:{password}@127.0.0.1:5432/postgres");
    let out = run_to_exit(
        &["--log=debug", "migrate"],
        &[("SPANSINK_DATABASE_URL", url.as_str())],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("spansink_no_such_role_x"),
        "{}",
        text(&out)
    );
    assert_hidden("migrate", &text(&out), &password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_shows_no_secret_in_logs_metrics_or_dead_letters() {
    let password = plant();
    let db = TestDb::migrated().await;
    let (_kafka, bootstrap) = common::kafka::cluster(1, true);
    // Trust authentication lets the password through unchecked: it only has
    // to travel with the URL.
    let url = db
        .url
        .replacen("postgres@", &format!("postgres:{password}@"), 1);
    assert!(url.contains(&password));
    let url_file = secret_file(&format!("{url}\n"));
    let kafka_file = secret_file(&format!(
        "# the broker takes no SASL; the password is only carried\nsasl.username=spansink\nsasl.password={password}\n"
    ));
    let p = producer(&bootstrap);
    let mut gen = generator(7, 3);
    let (tenant, good, spans) = marked_message(&mut gen, "good");
    produce(&p, TOPIC, 0, Some(&tenant), &good).await;
    produce(&p, TOPIC, 0, Some("acme"), &fixture("poison_garbage.bin")).await;

    let instance = Instance::spawn_with_db_flag(
        &bootstrap,
        &format!("--database-url-file={}", url_file.path().display()),
        "g-secrets",
        None,
        &[
            &format!("--kafka-file={}", kafka_file.path().display()),
            "--log=debug,librdkafka=debug",
            "--kafka=debug=generic,conf,security",
        ],
    );
    wait_for(
        "the good spans stored and the poison dead-lettered",
        Duration::from_secs(60),
        || async {
            span_count(&db).await as usize == spans && !read_all(&bootstrap, DLQ).is_empty()
        },
    )
    .await;

    let cmdline = std::fs::read(format!("/proc/{}/cmdline", instance.pid())).unwrap_or_default();
    assert_hidden(
        "the command line",
        &String::from_utf8_lossy(&cmdline),
        &password,
    );

    let metrics = instance.scrape().await;
    assert!(metrics.contains("spansink_"), "metrics scraped: {metrics}");
    assert_hidden("/metrics", &metrics, &password);

    let records = read_all(&bootstrap, DLQ);
    assert_eq!(records.len(), 1);
    let mut headers = 0;
    for r in &records {
        let Some(hs) = r.headers() else { continue };
        for h in hs.iter() {
            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
            assert_hidden(
                &format!("header {}", h.key),
                &format!("{}={value}", h.key),
                &password,
            );
            headers += 1;
        }
    }
    assert!(headers > 10, "the dead letter carries spansink's headers");
    let stored: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE error LIKE '%' || $1::text || '%'",
            &[&password],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "the dead-letter ledger");

    instance.sigterm();
    let mut instance = instance;
    assert!(
        instance.wait_exit(Duration::from_secs(30)).is_some(),
        "stopped"
    );
    let logs = instance.logs();
    assert!(
        logs.contains("DEBUG") && logs.contains("sasl"),
        "debug logs, librdkafka's configuration among them: {logs}"
    );
    assert_hidden("the logs", &logs, &password);
}
