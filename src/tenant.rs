//! Tenant ids: from a Kafka header, else a configured default, validated.
//!
//! The rules follow the `X-Scope-OrgID` convention of Grafana Mimir, Loki and
//! Tempo, so that the same tenant ids work across the stack.

use std::sync::Arc;

use crate::error::{Error, Reason, Result};

pub const MAX_TENANT_LEN: usize = 150;

/// Checks one tenant id: 1 to 150 bytes of `[A-Za-z0-9!-_.*'()]`, not `.` or `..`.
pub fn validate(tenant: &str) -> std::result::Result<(), String> {
    if tenant.is_empty() {
        return Err("tenant id is empty".into());
    }
    if tenant.len() > MAX_TENANT_LEN {
        return Err(format!(
            "tenant id is {} bytes, more than {MAX_TENANT_LEN}",
            tenant.len()
        ));
    }
    if tenant == "." || tenant == ".." {
        return Err(format!("tenant id {tenant:?} is not allowed"));
    }
    if let Some(c) = tenant
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()".contains(*c)))
    {
        return Err(format!(
            "tenant id contains {c:?}; allowed are letters, digits and !-_.*'()"
        ));
    }
    Ok(())
}

/// Resolves the tenant of one message from its header value, if any.
pub fn resolve(header: Option<&[u8]>, default: &str) -> Result<Arc<str>> {
    match header {
        Some(raw) => {
            let s = std::str::from_utf8(raw).map_err(|_| {
                Error::input(Reason::InvalidTenant, "tenant header is not valid UTF-8")
            })?;
            validate(s).map_err(|e| Error::input(Reason::InvalidTenant, e))?;
            Ok(Arc::from(s))
        }
        None if default.is_empty() => Err(Error::input(
            Reason::MissingTenant,
            "no tenant header and no --default-tenant",
        )),
        None => Ok(Arc::from(default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_over_default() {
        assert_eq!(&*resolve(Some(b"acme"), "anonymous").unwrap(), "acme");
        assert_eq!(&*resolve(None, "anonymous").unwrap(), "anonymous");
    }

    #[test]
    fn bad_tenants_are_poison_with_a_reason() {
        let cases: [(Option<&[u8]>, &str, Reason); 5] = [
            (None, "", Reason::MissingTenant),
            (Some(b""), "d", Reason::InvalidTenant),
            (Some(b"a/b"), "d", Reason::InvalidTenant),
            (Some(b".."), "d", Reason::InvalidTenant),
            (Some(&[0xff, 0xfe]), "d", Reason::InvalidTenant),
        ];
        for (h, d, want) in cases {
            let err = resolve(h, d).unwrap_err();
            assert_eq!(err.reason(), Some(want), "{h:?}");
        }
        let long = "a".repeat(MAX_TENANT_LEN + 1);
        assert!(resolve(Some(long.as_bytes()), "d").is_err());
        assert!(resolve(Some("a".repeat(MAX_TENANT_LEN).as_bytes()), "d").is_ok());
    }
}
