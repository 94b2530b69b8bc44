//! The poison path: a message that can never be written is isolated down to
//! itself (`isolate`), written durably to the local spool (`spool`), and
//! published to the dead-letter topic (`dlq`) once its partition's offset has
//! moved past it in PostgreSQL. `breaker` stops the path from dead-lettering a
//! whole stream when the cause is systemic.
//!
//! `decode | pg::write → poison::isolate → poison::spool → pg commit → poison::dlq`

pub mod breaker;
pub mod crashguard;
pub mod dlq;
pub mod durable;
pub mod forward;
pub mod isolate;
pub mod reader;
pub mod record;
pub mod spool;
