//! `spansink demo` (placeholder until the pipeline lands).

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {}
