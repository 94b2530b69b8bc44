//! What every Kafka client of spansink is given: the brokers and the
//! operator's librdkafka settings (`--kafka key=value`), and the one table of
//! settings spansink owns for each kind of client.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::error::{Error, Result};

/// One librdkafka setting passed through.
#[derive(Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

/// Shows the key only: the value may be a password.
impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=***", self.key)
    }
}

impl std::str::FromStr for Setting {
    type Err = String;

    /// `key=value`; the value may itself hold `=`.
    fn from_str(s: &str) -> std::result::Result<Setting, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not key=value", Setting::key_of(s)))?;
        let key = k.trim();
        if key.is_empty() {
            return Err("a setting has an empty key".to_string());
        }
        Ok(Setting {
            key: key.to_string(),
            value: v.to_string(),
        })
    }
}

impl Setting {
    /// What an error may show of a malformed setting: never a value.
    fn key_of(s: &str) -> &str {
        s.split('=').next().unwrap_or_default()
    }
}

/// The kinds of client spansink runs, each with settings of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The group consumer of `run`.
    Consumer,
    /// The dead-letter producer.
    DeadLetters,
    /// `loadgen`'s producer.
    Loadgen,
}

/// Settings spansink sets itself, for which clients, and the guarantee an
/// operator's value would break.
const RESERVED: &[(&str, &[Client], &str)] = {
    use Client::{Consumer, DeadLetters, Loadgen};
    &[
        (
            "bootstrap.servers",
            &[Consumer, DeadLetters, Loadgen],
            "use --brokers",
        ),
        (
            "metadata.broker.list",
            &[Consumer, DeadLetters, Loadgen],
            "use --brokers",
        ),
        ("group.id", &[Consumer], "use --group-id"),
        (
            "enable.auto.commit",
            &[Consumer],
            "offsets are committed only after PostgreSQL commits",
        ),
        (
            "enable.auto.offset.store",
            &[Consumer],
            "offsets are stored only after PostgreSQL commits",
        ),
        (
            "partition.assignment.strategy",
            &[Consumer],
            "spansink assigns incrementally (cooperative-sticky)",
        ),
        (
            "auto.offset.reset",
            &[Consumer],
            "a partition without a stored offset, or with one out of range, starts at the earliest message Kafka holds, so that none is skipped",
        ),
        (
            "enable.idempotence",
            &[DeadLetters, Loadgen],
            "the producer is idempotent, so that a retry never duplicates",
        ),
        (
            "acks",
            &[DeadLetters, Loadgen],
            "every record waits for all in-sync replicas, so that none is lost",
        ),
        (
            "request.required.acks",
            &[DeadLetters, Loadgen],
            "every record waits for all in-sync replicas, so that none is lost",
        ),
        (
            "message.timeout.ms",
            &[DeadLetters],
            "use --dlq-message-timeout",
        ),
        (
            "delivery.timeout.ms",
            &[DeadLetters],
            "use --dlq-message-timeout",
        ),
        (
            "transactional.id",
            &[DeadLetters],
            "the dead-letter producer does not run transactions",
        ),
    ]
};

/// The brokers and the operator's settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub brokers: String,
    pub overrides: Vec<Setting>,
}

impl Settings {
    /// Refuses an empty broker list, and any setting that `client` must own,
    /// naming it and what it would break.
    pub fn check(&self, client: Client) -> Result<()> {
        if self.brokers.trim().is_empty() {
            return Err(Error::config("--brokers", "is empty"));
        }
        for s in &self.overrides {
            let owned = RESERVED
                .iter()
                .find(|(key, clients, _)| *key == s.key && clients.contains(&client));
            if let Some((_, _, why)) = owned {
                return Err(Error::config(
                    format!("--kafka {}", s.key),
                    format!("cannot be set: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// A client configuration with the brokers, then `own` settings, then the
    /// operator's (which [`Settings::check`] has vetted).
    pub fn client_config(&self, own: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in own {
            config.set(*key, value);
        }
        for s in &self.overrides {
            config.set(&s.key, &s.value);
        }
        config
    }

    /// How much of librdkafka's own log a long-lived client passes on:
    /// warnings and errors, and its debug lines too once the operator asks for
    /// them with `--kafka debug=…`, which they would not see otherwise (the
    /// `--log` filter still applies, as `librdkafka=debug`).
    pub fn log_level(&self) -> RDKafkaLogLevel {
        let debugging = self
            .overrides
            .iter()
            .any(|s| s.key == "debug" && !s.value.trim().is_empty());
        if debugging {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys: &[&str]) -> Settings {
        Settings {
            brokers: "b:9092".into(),
            overrides: keys
                .iter()
                .map(|k| Setting {
                    key: k.to_string(),
                    value: "x".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn librdkafka_logs_debug_lines_only_when_the_operator_asks_for_them() {
        let debug = |s: Settings| matches!(s.log_level(), RDKafkaLogLevel::Debug);
        let warning = |s: Settings| matches!(s.log_level(), RDKafkaLogLevel::Warning);
        assert!(warning(settings(&[])));
        assert!(warning(settings(&["session.timeout.ms"])));
        assert!(debug(settings(&["debug"])));
        let mut empty = settings(&["debug"]);
        empty.overrides[0].value = " ".into();
        assert!(warning(empty));
    }

    #[test]
    fn a_setting_needs_a_key_and_keeps_every_equals_sign_of_its_value() {
        let s: Setting = "sasl.password=a=b".parse().unwrap();
        assert_eq!((s.key.as_str(), s.value.as_str()), ("sasl.password", "a=b"));
        let err = "novalue".parse::<Setting>().unwrap_err();
        assert!(err.contains("novalue"));
        assert!("=x".parse::<Setting>().is_err());
        assert_eq!(format!("{s:?}"), "sasl.password=***");
    }

    #[test]
    fn each_client_refuses_the_settings_it_owns_by_name() {
        let err = settings(&["enable.auto.commit"])
            .check(Client::Consumer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable.auto.commit"), "{err}");
        assert!(settings(&["enable.auto.commit"])
            .check(Client::Loadgen)
            .is_ok());
        assert!(settings(&["auto.offset.reset"])
            .check(Client::Consumer)
            .is_err());
        assert!(settings(&["acks"]).check(Client::DeadLetters).is_err());
        assert!(settings(&["acks"]).check(Client::Consumer).is_ok());
        assert!(settings(&["session.timeout.ms"])
            .check(Client::Consumer)
            .is_ok());
        let empty = Settings::default();
        assert!(empty.check(Client::Consumer).is_err());
    }
}
