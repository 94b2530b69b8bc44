//! Kafka: the consumer (`consume`), assignment and revocation (`rebalance`),
//! ownership and the advisory offset commit (`commit`), and an embedded broker
//! for the demo and the tests (`mock`).

pub mod commit;
pub mod consume;
pub mod lag;
pub mod mock;
pub mod rebalance;
