//! Kafka: the consumer (`consume`), assignment and revocation (`rebalance`),
//! ownership and the advisory offset commit (`commit`), freeing a paused
//! partition's prefetch (`pause`), and an embedded broker for the demo and the
//! tests (`mock`).

pub mod commit;
pub mod consume;
pub mod lag;
pub mod mock;
pub mod pause;
pub mod rebalance;
pub mod settings;

pub use settings::{Client, Setting, Settings};

use rdkafka::error::KafkaError;

use crate::error::Error;

/// librdkafka's refusal of a client's configuration, naming the setting but
/// never its value: the value may be a password (`sasl.password`, a typo of
/// it, `ssl.key.password`), and librdkafka's own text repeats it.
pub fn config_error(client: &str, e: KafkaError) -> Error {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            let desc = if value.is_empty() {
                desc
            } else {
                desc.replace(&value, "***")
            };
            Error::config(format!("--kafka {key}"), format!("{client}: {desc}"))
        }
        other => Error::config("--kafka", format!("{client}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaConfRes;

    #[test]
    fn a_refused_setting_is_named_and_its_value_never_shown() {
        let e = KafkaError::ClientConfig(
            RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
            "No such configuration property: \"sasl.pasword\" with SECRET".into(),
            "sasl.pasword".into(),
            "SECRET".into(),
        );
        let text = config_error("consumer", e).to_string();
        assert!(text.contains("--kafka sasl.pasword"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }
}
