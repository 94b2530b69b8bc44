//! The command line, and one file per subcommand.

use clap::{Parser, Subcommand};

use crate::config::{LogArgs, MigrateArgs, RetentionCmdArgs, RunArgs};

pub mod bench;
pub mod demo;
pub mod healthcheck;
pub mod loadgen;
pub mod migrate;
pub mod replay;
pub mod retention;
pub mod run;
pub mod spool;
pub mod tenant;

#[derive(Debug, Parser)]
#[command(
    name = "spansink",
    version = crate::VERSION,
    about = "OpenTelemetry traces from Kafka into PostgreSQL, exactly once",
    // A later flag overrides an earlier one, as wrapper scripts expect.
    args_override_self = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume OTLP from Kafka and store it in PostgreSQL (the production consumer).
    Run(Box<RunArgs>),
    /// Apply the schema migrations and create the upcoming daily partitions.
    Migrate(MigrateArgs),
    /// Produce realistic synthetic OTLP trace traffic to a Kafka broker.
    Loadgen(loadgen::LoadgenArgs),
    /// Start an embedded Kafka, produce traffic, ingest it into PostgreSQL and report.
    Demo(demo::DemoArgs),
    /// Re-ingest dead letters from the DLQ topic or a spool directory.
    Replay(Box<replay::ReplayArgs>),
    /// Apply retention once: drop expired daily partitions, expire traces and
    /// dead-letter ledger rows (for cron; `run --retention` schedules it).
    Retention(RetentionCmdArgs),
    /// Exit 0 if a running instance's /healthz answers 200, else 1: a
    /// container health check that needs no curl in the image.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Inspect and drain the local poison spool.
    Spool(spool::SpoolArgs),
    /// Manage the reader roles of the read side and the tenants each may read.
    Tenant(tenant::TenantArgs),
    /// Measure the pipeline end to end beside PostgreSQL's own ceiling.
    Bench(Box<bench::BenchArgs>),
    /// Host librdkafka's mock cluster until standard input closes (for the bench).
    #[command(hide = true)]
    MockBroker(bench::MockBrokerArgs),
}
