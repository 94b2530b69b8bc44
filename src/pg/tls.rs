//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert`.
//!
//! tokio-postgres understands `sslmode` disable, prefer and require only, and
//! no `sslrootcert`. Operators write libpq connection strings, so both are
//! taken out of the URL (or key/value string) here, before tokio-postgres
//! parses the rest, and become the OpenSSL connector's settings:
//!
//! | sslmode | TLS | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | disable | never | | |
//! | prefer (the default) | if the server offers it | | |
//! | require | always | only with `sslrootcert`, as libpq does | |
//! | verify-ca | always | yes | |
//! | verify-full | always | yes | yes |
//!
//! `sslrootcert` names a PEM file of trusted certificates, and then only those
//! are trusted; without it (or with `sslrootcert=system`), the system's.

use std::path::Path;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::X509;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::config::SslMode as PgSslMode;

use crate::error::{Error, Result};

/// What the pool and the cancel requests connect with.
pub type Connector = MakeTlsConnector;

/// The setting named in TLS configuration errors.
const SETTING: &str = "--database-url";

/// libpq's sslmode values that spansink supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // Trying plain text first and TLS second has no counterpart in
            // tokio-postgres; quietly treating it as prefer would surprise.
            "allow" => return Err(Error::config(
                format!("{SETTING} sslmode"),
                "allow is not supported: use disable, prefer, require, verify-ca or verify-full",
            )),
            _ => {
                return Err(Error::config(
                    format!("{SETTING} sslmode"),
                    "must be disable, prefer, require, verify-ca or verify-full",
                ))
            }
        })
    }
}

/// A connection string split into what tokio-postgres parses and the TLS
/// settings spansink handles itself.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Connector,
    pub mode: SslMode,
}

/// Parses a libpq URL or key/value connection string. Errors never quote
/// the string: it may hold a password.
pub fn parse(url: &str) -> Result<Target> {
    let (rest, params) = take_tls_params(url);
    let mut mode = None;
    let mut root_cert = None;
    for (key, value) in params {
        match key {
            TlsParam::SslMode => mode = Some(SslMode::parse(&value)?),
            TlsParam::SslRootCert => root_cert = Some(value),
        }
    }
    let mode = mode.unwrap_or(SslMode::Prefer);
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e: tokio_postgres::Error| Error::config(SETTING, describe_parse_error(&e)))?;
    config.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let tls = connector(mode, root_cert.as_deref())?;
    Ok(Target { config, tls, mode })
}

/// tokio-postgres's parse errors name an option, but some quote a piece of
/// the string (an unknown option after an unquoted space in a password, a
/// character where `=` was expected): only the texts known to hold nothing
/// from the string are shown.
fn describe_parse_error(e: &tokio_postgres::Error) -> String {
    let text = crate::error::chain(e);
    if text.contains("invalid value for option `") || text.ends_with("unexpected EOF") {
        text
    } else {
        "the connection string is malformed (it is not shown: it may hold a password)".into()
    }
}

/// The connector for `mode`. Without verification it still encrypts: what
/// libpq's prefer and require give.
fn connector(mode: SslMode, root_cert: Option<&str>) -> Result<Connector> {
    let tls_error =
        |e: openssl::error::ErrorStack| Error::config(format!("{SETTING} sslmode"), e.to_string());
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(tls_error)?;
    let root_file = root_cert.filter(|r| *r != "system");
    if let Some(path) = root_file {
        builder.set_cert_store(trust_only(Path::new(path))?);
    }
    // libpq checks the chain under require too once a root certificate is named.
    let check_chain = match mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => root_file.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    builder.set_verify(if check_chain {
        SslVerifyMode::PEER
    } else {
        SslVerifyMode::NONE
    });
    let mut tls = MakeTlsConnector::new(builder.build());
    let check_host = mode == SslMode::VerifyFull;
    tls.set_callback(move |connect, _host| {
        connect.set_verify_hostname(check_host);
        Ok(())
    });
    Ok(tls)
}

/// A certificate store holding only the certificates of the PEM file at `path`.
fn trust_only(path: &Path) -> Result<openssl::x509::store::X509Store> {
    let setting = format!("{SETTING} sslrootcert");
    let pem = std::fs::read(path)
        .map_err(|e| Error::config(&setting, format!("{}: {e}", path.display())))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| Error::config(&setting, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::config(
            &setting,
            format!("{}: holds no PEM certificate", path.display()),
        ));
    }
    let mut store = X509StoreBuilder::new().map_err(|e| Error::config(&setting, e.to_string()))?;
    for cert in certs {
        store
            .add_cert(cert)
            .map_err(|e| Error::config(&setting, format!("{}: {e}", path.display())))?;
    }
    Ok(store.build())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsParam {
    SslMode,
    SslRootCert,
}

fn tls_param(key: &str) -> Option<TlsParam> {
    match key {
        "sslmode" => Some(TlsParam::SslMode),
        "sslrootcert" => Some(TlsParam::SslRootCert),
        _ => None,
    }
}

/// Removes `sslmode` and `sslrootcert` from a connection string and returns
/// the rest and their values. A string this cannot read is returned whole,
/// for tokio-postgres to refuse.
fn take_tls_params(s: &str) -> (String, Vec<(TlsParam, String)>) {
    let is_url = s.starts_with("postgres://") || s.starts_with("postgresql://");
    let taken = if is_url {
        take_from_url(s)
    } else {
        take_from_key_values(s)
    };
    taken.unwrap_or_else(|| (s.to_string(), Vec::new()))
}

fn take_from_url(s: &str) -> Option<(String, Vec<(TlsParam, String)>)> {
    let Some((base, query)) = s.split_once('?') else {
        return Some((s.to_string(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=')?;
        let decode = percent_decode;
        match tls_param(&decode(key)?) {
            Some(param) => taken.push((param, decode(value)?)),
            None => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Some((rest, taken))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The key/value form (`host=localhost sslmode=verify-full ...`), read with
/// the grammar tokio-postgres uses: values unquoted or in single quotes,
/// backslash escaping the next character.
fn take_from_key_values(s: &str) -> Option<(String, Vec<(TlsParam, String)>)> {
    let mut kept: Vec<&str> = Vec::new();
    let mut taken = Vec::new();
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    let end_of = |i: usize| chars.get(i).map_or(s.len(), |&(at, _)| at);
    let skip_ws = |mut i: usize| {
        while chars.get(i).is_some_and(|(_, c)| c.is_whitespace()) {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= chars.len() {
            break;
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|&(_, c)| !c.is_whitespace() && c != '=')
        {
            i += 1;
        }
        let key = &s[end_of(start)..end_of(i)];
        i = skip_ws(i);
        if chars.get(i).map(|&(_, c)| c) != Some('=') {
            return None;
        }
        i = skip_ws(i + 1);
        let mut value = String::new();
        if chars.get(i).map(|&(_, c)| c) == Some('\'') {
            i += 1;
            loop {
                match chars.get(i).map(|&(_, c)| c) {
                    None => return None,
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        value.extend(chars.get(i + 1).map(|&(_, c)| c));
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&(_, c)) = chars.get(i) {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    value.extend(chars.get(i + 1).map(|&(_, c)| c));
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        let i_end = i.min(chars.len());
        match tls_param(key) {
            Some(param) => taken.push((param, value)),
            None => kept.push(&s[end_of(start)..end_of(i_end)]),
        }
    }
    Some((kept.join(" "), taken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_leave_urls_and_the_rest_of_the_query() {
        let (rest, taken) = take_tls_params(
            "postgres://u:p@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@h/db?application_name=x");
        assert_eq!(
            taken,
            vec![
                (TlsParam::SslMode, "verify-full".to_string()),
                (TlsParam::SslRootCert, "/ca.pem".to_string())
            ]
        );
        let (rest, taken) = take_tls_params("postgresql://h/db?sslmode=require");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(taken, vec![(TlsParam::SslMode, "require".to_string())]);
    }

    #[test]
    fn tls_params_leave_key_value_strings_with_quotes_intact() {
        let (rest, taken) = take_tls_params(
            "host=localhost password='a b\\'c' sslrootcert = '/my certs/ca.pem' sslmode=verify-ca user=x",
        );
        assert_eq!(rest, "host=localhost password='a b\\'c' user=x");
        assert_eq!(
            taken,
            vec![
                (TlsParam::SslRootCert, "/my certs/ca.pem".to_string()),
                (TlsParam::SslMode, "verify-ca".to_string())
            ]
        );
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_negotiates() {
        let t = parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.config.get_ssl_mode(), PgSslMode::Require);
        let t = parse("host=h dbname=db").unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        let t = parse("host=h sslmode=disable").unwrap();
        assert_eq!(t.config.get_ssl_mode(), PgSslMode::Disable);
        assert!(parse("postgres://h/db?sslmode=allow").is_err());
        assert!(parse("postgres://h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        let err = parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("sslrootcert") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn parse_errors_never_quote_the_string() {
        for s in [
            "host=h password=abc secretpart=1",
            "host=h password=abc secretpart",
            "postgres://u:secretpart@h/db?secretpart",
        ] {
            let err = parse(s).err().unwrap().to_string();
            assert!(!err.contains("secretpart"), "{s}: {err}");
        }
    }
}
