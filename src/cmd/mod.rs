//! One file per subcommand.

pub mod demo;
pub mod loadgen;
pub mod migrate;
pub mod replay;
pub mod run;
pub mod spool;
