//! The Kafka security settings the README documents are accepted by the
//! librdkafka spansink is built with: each example of its "Kafka security"
//! section becomes a consumer configuration, through the same code as
//! `spansink run`, and librdkafka creates a client from it. OAUTHBEARER with
//! OIDC needs librdkafka built with libcurl; without it, creating the client
//! fails on `sasl.oauthbearer.method`.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use spansink::kafka::consume::{consumer_config, Prefetch};
use spansink::kafka::{Client, Settings};

/// The `--kafka KEY=VALUE` settings of each shell example in the README's
/// "Kafka security" section.
fn readme_examples() -> Vec<Vec<(String, String)>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n### Kafka security\n")
        .nth(1)
        .expect("a Kafka security section");
    // Up to the next heading of any level, outside code blocks.
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|h| section.find(h))
        .min()
        .unwrap_or(section.len());
    let section = &section[..end];
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|block| {
            let words: Vec<&str> = block.split_whitespace().collect();
            words
                .windows(2)
                .filter(|w| w[0] == "--kafka")
                .filter_map(|w| w[1].split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Files the examples name do not exist here, and URLs would reach out:
/// keys that take a path are left out, and a token endpoint is a closed
/// loopback port.
fn runnable(settings: &[(String, String)]) -> Vec<spansink::kafka::Setting> {
    settings
        .iter()
        .filter(|(_, v)| !v.starts_with('/'))
        .map(|(k, v)| {
            let v = if v.starts_with("https://") {
                "http://127.0.0.1:1/token".to_string()
            } else {
                v.clone()
            };
            format!("{k}={v}").parse().expect("setting")
        })
        .collect()
}

#[test]
fn every_documented_security_example_creates_a_client() {
    let examples = readme_examples();
    assert_eq!(
        examples.len(),
        4,
        "TLS, PLAIN, SCRAM, OAUTHBEARER: {examples:?}"
    );
    let mechanisms: Vec<String> = examples
        .iter()
        .map(|e| {
            e.iter()
                .find(|(k, _)| k == "sasl.mechanism")
                .map_or("none".to_string(), |(_, v)| v.clone())
        })
        .collect();
    assert_eq!(
        mechanisms,
        ["none", "PLAIN", "SCRAM-SHA-512", "OAUTHBEARER"],
        "the examples, in order"
    );
    for example in &examples {
        let settings = Settings {
            brokers: "127.0.0.1:1".to_string(),
            overrides: runnable(example),
        };
        settings
            .check(Client::Consumer)
            .unwrap_or_else(|e| panic!("{example:?}: {e}"));
        let config = consumer_config(
            &settings,
            "security-test",
            &Prefetch::within(64 << 20),
            1 << 20,
        );
        let created: Result<BaseConsumer, _> = config.create();
        if let Err(e) = created {
            panic!("{example:?}: librdkafka refuses it: {e}");
        }
    }
}

#[test]
fn librdkafka_is_built_with_tls_scram_and_oidc() {
    let native = ClientConfig::new()
        .create_native_config()
        .expect("native config");
    let features = native.get("builtin.features").expect("builtin.features");
    for wanted in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "http",
        "oidc",
    ] {
        assert!(
            features.split(',').any(|f| f == wanted),
            "librdkafka lacks {wanted}: {features}"
        );
    }
}
