//! Runs the real `spansink` binary as a child process, so that tests can kill
//! it with SIGKILL, stop it with SIGTERM and restart it.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Instance {
    child: Option<Child>,
    pub metrics_addr: String,
    /// Where POST /breaker/close listens.
    pub admin_addr: String,
    pub spool: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Settings every test instance needs: a short session so that a killed member
/// is noticed in seconds, fast reconnects, and a window that accepts the
/// fixtures' timestamps.
const TEST_FLAGS: &[&str] = &[
    "--kafka=session.timeout.ms=6000",
    "--kafka=heartbeat.interval.ms=500",
    "--kafka=reconnect.backoff.max.ms=500",
    "--kafka=topic.metadata.refresh.interval.ms=1000",
    "--accept-past=3650d",
    "--accept-future=3650d",
    "--batch-linger=50ms",
    "--drain-timeout=10s",
    "--retry-initial=50ms",
    "--retry-max=1s",
    "--pg-pool-size=6",
];

/// The binary under test: this build's, unless `SPANSINK_TEST_BIN` names
/// another (a release build, or an older version to compare against).
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("SPANSINK_TEST_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_spansink").into())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Instance {
    /// Starts `spansink run` against the broker and database; `extra` flags come last.
    pub fn spawn(bootstrap: &str, database_url: &str, group: &str, extra: &[&str]) -> Instance {
        Self::spawn_with_spool(bootstrap, database_url, group, None, extra)
    }

    /// The same, with a spool directory that outlives the instance (for restarts).
    pub fn spawn_with_spool(
        bootstrap: &str,
        database_url: &str,
        group: &str,
        spool: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Instance {
        let db_flag = format!("--database-url={database_url}");
        Self::spawn_with_db_flag(bootstrap, &db_flag, group, spool, extra)
    }

    /// The same, with the flag that names the database given whole, such as
    /// `--database-url-file=PATH`.
    pub fn spawn_with_db_flag(
        bootstrap: &str,
        db_flag: &str,
        group: &str,
        spool: Option<&std::path::Path>,
        extra: &[&str],
    ) -> Instance {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("spansink.log");
        let log = File::create(&log_path).expect("log file");
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let admin_addr = format!("127.0.0.1:{}", free_port());
        let spool = spool.map_or_else(|| dir.path().join("spool"), std::path::Path::to_path_buf);
        let mut cmd = Command::new(binary());
        for (k, _) in std::env::vars() {
            if k.starts_with("SPANSINK_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("run")
            .arg(format!("--brokers={bootstrap}"))
            .arg(db_flag)
            .arg(format!("--group-id={group}"))
            .arg(format!("--metrics-addr={metrics_addr}"))
            .arg(format!("--admin-addr={admin_addr}"))
            .arg(format!("--spool-dir={}", spool.display()))
            .args(TEST_FLAGS)
            .args(extra)
            .env("SPANSINK_LOG", "info,spansink=debug,librdkafka=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log clone"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn spansink");
        Instance {
            child: Some(child),
            metrics_addr,
            admin_addr,
            spool,
            log_path,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&self) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Scrapes /metrics; empty if the listener is not up yet.
    pub async fn scrape(&self) -> String {
        http_get(&self.metrics_addr, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- spansink log ----\n{}", self.logs());
        }
        self.kill9();
    }
}

/// A client for one request: a connection of its own (the listeners answer
/// one request per connection), no proxy (these addresses are local), and a
/// redirect reported as it was answered, not followed.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client")
}

/// GET `path` from `addr`: the status and the body, or `None` if there was no
/// answer (the listener is not up yet, say).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let response = http_client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// POST an empty body to `path` on `addr` with `headers`: the status and the body.
pub async fn http_post(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http_client().post(format!("http://{addr}{path}")).body("");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (status, body)
}

/// Runs `spansink replay` to its end and returns its report; it must succeed.
pub fn replay(bootstrap: &str, database_url: &str, extra: &[&str]) -> String {
    let out = Command::new(binary())
        .args([
            "replay",
            &format!("--brokers={bootstrap}"),
            &format!("--database-url={database_url}"),
        ])
        .args(extra)
        .env_remove("SPANSINK_LOG")
        .output()
        .expect("replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
