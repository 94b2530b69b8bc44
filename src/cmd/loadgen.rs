//! `spansink loadgen` (placeholder until the generator lands).

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {}
