//! The tenant mix: which tenants send, and their shares of the traffic. Apart
//! from the generator because it is also a command-line value, parsed and
//! printed on its own.

use std::fmt;
use std::str::FromStr;

/// Tenants and their relative share of the traffic, as in `acme:3,globex:1,initech`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMix(Vec<(String, u32)>);

impl TenantMix {
    /// The tenants and their weights, in the order given.
    pub fn entries(&self) -> &[(String, u32)] {
        &self.0
    }

    pub fn contains(&self, tenant: &str) -> bool {
        self.0.iter().any(|(t, _)| t == tenant)
    }

    pub(super) fn total_weight(&self) -> u64 {
        self.0.iter().map(|(_, w)| u64::from(*w)).sum()
    }

    /// The tenant at `point` of the cumulative weights, `point < total_weight()`.
    pub(super) fn at(&self, mut point: u64) -> &str {
        for (tenant, weight) in &self.0 {
            let weight = u64::from(*weight);
            if point < weight {
                return tenant;
            }
            point -= weight;
        }
        // Unreachable for a point below the total; the last tenant is a safe answer.
        self.0.last().map_or("", |(t, _)| t.as_str())
    }
}

impl FromStr for TenantMix {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut entries: Vec<(String, u32)> = Vec::new();
        for part in s.split(',').map(str::trim) {
            // Tenant ids cannot contain ':', so the last one separates the weight.
            let (tenant, weight) = match part.rsplit_once(':') {
                Some((t, w)) => (t, parse_weight(t, w)?),
                None => (part, 1),
            };
            crate::tenant::validate(tenant).map_err(|e| format!("{part:?}: {e}"))?;
            if entries.iter().any(|(t, _)| t == tenant) {
                return Err(format!("tenant {tenant:?} is listed twice"));
            }
            entries.push((tenant.to_string(), weight));
        }
        Ok(TenantMix(entries))
    }
}

fn parse_weight(tenant: &str, weight: &str) -> std::result::Result<u32, String> {
    match weight.trim().parse::<u32>() {
        Ok(0) => Err(format!(
            "tenant {tenant:?} has weight 0; leave it out instead"
        )),
        Ok(w) => Ok(w),
        Err(_) => Err(format!(
            "weight {weight:?} of tenant {tenant:?} is not a whole number from 1"
        )),
    }
}

impl fmt::Display for TenantMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (tenant, weight)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{tenant}:{weight}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_mix_parses_weights_and_refuses_bad_entries() {
        let mix: TenantMix = "acme:3, globex:1,initech".parse().unwrap();
        assert_eq!(
            mix.entries(),
            &[
                ("acme".into(), 3),
                ("globex".into(), 1),
                ("initech".into(), 1)
            ]
        );
        assert_eq!(mix.to_string(), "acme:3,globex:1,initech:1");
        for bad in [
            "",
            "acme,",
            "a/b",
            "acme:0",
            "acme:x",
            "acme:-1",
            "acme,acme:2",
            "..",
        ] {
            assert!(bad.parse::<TenantMix>().is_err(), "{bad:?}");
        }
    }
}
