//! `spansink healthcheck`: asks a running instance's `/healthz` and exits 0
//! when it answers 200, 1 otherwise. A container image without curl or wget
//! uses it as its HEALTHCHECK, so the probe is the same binary as the
//! service and needs nothing else in the image.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The instance's metrics listener, as `spansink run --metrics-addr` was
    /// given it (the same environment variable). An unspecified address
    /// (0.0.0.0 or ::) is reached on loopback.
    #[arg(long, env = "SPANSINK_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,
    /// How long to wait for the whole answer.
    #[arg(long, env = "SPANSINK_HEALTHCHECK_TIMEOUT", value_parser = crate::config::parse_duration, default_value = "3s")]
    pub timeout: Duration,
}

/// The address to connect to: a listener bound to every interface is
/// reachable on loopback, which never leaves the container.
pub fn target(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// `Ok` when `/healthz` answers 200 within the timeout; otherwise an error
/// that says what was seen.
pub fn run(args: &HealthcheckArgs) -> Result<()> {
    let addr = target(args.metrics_addr);
    let failed = |e: std::io::Error| Error::io(format!("GET http://{addr}/healthz"), e);
    let mut stream = TcpStream::connect_timeout(&addr, args.timeout).map_err(failed)?;
    stream
        .set_read_timeout(Some(args.timeout))
        .map_err(failed)?;
    stream
        .set_write_timeout(Some(args.timeout))
        .map_err(failed)?;
    // The listener serves one request per connection and closes it: reading
    // to the end gives the whole answer.
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(failed)?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(failed)?;
    let status_line = answer
        .split(|b| *b == b'\n')
        .next()
        .map(|l| String::from_utf8_lossy(l).trim().to_string())
        .unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(failed(std::io::Error::other(format!(
            "answered {status_line:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(t("[::]:9464"), "[::1]:9464");
        assert_eq!(t("10.1.2.3:80"), "10.1.2.3:80");
    }
}
