//! The one error type, and the one table that classifies every failure.
//!
//! Each failure is [`Class::Transient`] (pause, back off, retry; never dead-letter),
//! [`Class::Poison`] (this message can never be written; isolate it) or
//! [`Class::Fatal`] (the instance cannot run as configured; exit). The README's
//! classification table is this file in prose; `tests/classification.rs`
//! fails when the two disagree.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_postgres::error::SqlState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Transient,
    Poison,
    Fatal,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Poison => "poison",
            Class::Fatal => "fatal",
        }
    }
}

/// Why a message is poison: a stable, bounded label for metrics, logs and DLQ headers.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Reason {
    /// Not a protobuf message, or one cut short.
    BadProtobuf,
    /// A protobuf `string` field holds invalid UTF-8.
    InvalidUtf8,
    /// Not OTLP/JSON.
    BadJson,
    /// trace_id, span_id or parent_span_id of the wrong length, or all zero.
    InvalidId,
    /// The tenant header is present but not a valid tenant id.
    InvalidTenant,
    /// No tenant header and no default tenant configured.
    MissingTenant,
    /// The message is larger than `--max-message-bytes`.
    MessageTooLarge,
    /// An AnyValue nests deeper than `--max-value-depth`.
    ValueTooDeep,
    /// More attributes (or array/map entries) than `--max-attributes` in one
    /// set, or than `--max-values-per-message` in the message.
    TooManyAttributes,
    /// More spans in one message than `--max-spans-per-message`.
    TooManySpans,
    /// More span events in one message than `--max-events-per-message`.
    TooManyEvents,
    /// More links in one message than `--max-links-per-message`.
    TooManyLinks,
    /// More log records in one message than `--max-log-records-per-message`.
    TooManyLogRecords,
    /// A span starts outside the acceptance window.
    TimestampOutOfWindow,
    /// PostgreSQL class 22.
    PgDataException,
    /// PostgreSQL class 21.
    PgCardinalityViolation,
    /// PostgreSQL class 23, other than what idempotency absorbs.
    PgIntegrityViolation,
    /// PostgreSQL class 54.
    PgProgramLimit,
    /// The code panicked while decoding or writing this message.
    Panic,
    /// The process died repeatedly while this message alone was being processed.
    CrashLoop,
    /// Writing this message alone outlasted the statement timeout, repeatedly.
    StatementTimeout,
    /// A record read back from the DLQ topic lacks spansink's headers or holds
    /// malformed ones, so it cannot be replayed.
    BadDeadLetter,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Every reason, for metrics that start at zero.
    pub fn all() -> &'static [Reason] {
        <Reason as strum::VariantArray>::VARIANTS
    }

    /// Where in the pipeline this reason is found: the DLQ `stage` header.
    pub fn stage(self) -> Stage {
        match self {
            Reason::BadProtobuf | Reason::InvalidUtf8 | Reason::BadJson | Reason::BadDeadLetter => {
                Stage::Decode
            }
            Reason::InvalidId
            | Reason::InvalidTenant
            | Reason::MissingTenant
            | Reason::MessageTooLarge
            | Reason::ValueTooDeep
            | Reason::TooManyAttributes
            | Reason::TooManySpans
            | Reason::TooManyEvents
            | Reason::TooManyLinks
            | Reason::TooManyLogRecords
            | Reason::TimestampOutOfWindow => Stage::Validate,
            Reason::PgDataException
            | Reason::PgCardinalityViolation
            | Reason::PgIntegrityViolation
            | Reason::PgProgramLimit
            | Reason::StatementTimeout => Stage::Write,
            Reason::Panic | Reason::CrashLoop => Stage::Crash,
        }
    }
}

/// Where a message was refused.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::Display,
    strum::EnumString,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum Stage {
    /// The value's bytes could not be read.
    Decode,
    /// Read, but refused by a rule on its content.
    Validate,
    /// PostgreSQL refused it.
    Write,
    /// The code panicked or the process died on it.
    Crash,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration. `setting` names the flag or librdkafka property.
    #[error("invalid configuration: {setting}: {reason}")]
    Config { setting: String, reason: String },

    /// Input that can never be stored: decode and validation failures.
    #[error("{reason}: {detail}")]
    Input { reason: Reason, detail: String },

    #[error("postgres{}: {}", pg_setting(.0), pg_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),

    #[error("postgres{}", pool_detail(.0))]
    Pool(#[from] deadpool_postgres::PoolError),

    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),

    /// A panic caught while a message or batch was decoded or written.
    #[error("panic: {0}")]
    Panic(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Shutdown was requested while the operation waited.
    #[error("shutting down")]
    Shutdown,

    /// A broken invariant: a bug, never the message's fault nor the operator's.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn config(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    /// Input errors quote the input: their detail is capped, so that a huge
    /// bad value never becomes a huge log line or header.
    pub fn input(reason: Reason, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let detail = if detail.len() > crate::logcap::MAX_TEXT {
            crate::logcap::capped(&detail)
        } else {
            detail
        };
        Error::Input { reason, detail }
    }

    /// The same verdict again, for a message judged once and refused later.
    /// Only input errors are ever reissued (a message's scan refuses nothing
    /// else); anything else would be a bug, reported as one.
    pub fn reissue(&self) -> Self {
        match self {
            Error::Input { reason, detail } => Error::Input {
                reason: *reason,
                detail: detail.clone(),
            },
            other => Error::Internal(other.to_string()),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The classification table.
    pub fn class(&self) -> Class {
        match self {
            Error::Config { .. } => Class::Fatal,
            Error::Input { .. } | Error::Panic(_) => Class::Poison,
            Error::Postgres(e) => classify_pg(e),
            Error::Pool(e) => classify_pool(e),
            Error::Kafka(e) => classify_kafka(e),
            // Disk full, a spool directory briefly unwritable: wait for the operator
            // rather than lose or dead-letter anything.
            Error::Io { .. } => Class::Transient,
            Error::Shutdown => Class::Transient,
            Error::Internal(_) => Class::Fatal,
        }
    }

    /// The poison reason, when [`Error::class`] is [`Class::Poison`].
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Input { reason, .. } => Some(*reason),
            Error::Panic(_) => Some(Reason::Panic),
            Error::Postgres(e) => pg_poison_reason(e),
            _ => None,
        }
    }

    /// The PostgreSQL SQLSTATE, when the failure came from the server.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) => e.code().map(|c| c.code()),
            Error::Pool(deadpool_postgres::PoolError::Backend(e)) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// A short label for the retry metric.
    pub fn transient_kind(&self) -> &'static str {
        match self {
            Error::Postgres(e) => match e.code() {
                None => "pg_connection",
                Some(c) if c.code().starts_with("08") => "pg_connection",
                Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE => "pg_serialization",
                Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED => "pg_deadlock",
                Some(c) if c.code().starts_with("53") => "pg_resources",
                Some(c) if c.code().starts_with("57P") => "pg_shutdown",
                Some(_) => "pg_other",
            },
            Error::Pool(deadpool_postgres::PoolError::Timeout(_)) => "pg_pool_timeout",
            Error::Pool(_) => "pg_connection",
            Error::Kafka(_) => "kafka",
            Error::Io { .. } => "io",
            _ => "other",
        }
    }
}

/// The text of a caught panic's payload.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        crate::logcap::capped(s)
    } else if let Some(s) = panic.downcast_ref::<String>() {
        crate::logcap::capped(s)
    } else {
        "panic with a non-string payload".to_string()
    }
}

/// The flag that decides where spansink connects, named in every error
/// about reaching PostgreSQL: a newcomer's first mistakes are made there.
pub const DATABASE_URL_SETTING: &str = "--database-url (SPANSINK_DATABASE_URL)";

/// Names the connection setting when the failure is about reaching the
/// server (no SQLSTATE, or classes 08, 28, 3D), not about a statement.
fn pg_setting(e: &tokio_postgres::Error) -> String {
    let about_connecting = match e.code() {
        None => true,
        Some(c) => matches!(&c.code()[..2], "08" | "28" | "3D"),
    };
    if about_connecting {
        format!(" at {DATABASE_URL_SETTING}")
    } else {
        String::new()
    }
}

/// PostgreSQL's message (which may quote a value), its detail and SQLSTATE;
/// for a failure without a server message, the whole chain of causes (an
/// `error connecting to server` says nothing without its I/O error).
fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = crate::logcap::capped(db.message());
            if let Some(detail) = db.detail() {
                text.push_str(": ");
                text.push_str(&crate::logcap::capped(detail));
            }
            format!("{text} (SQLSTATE {})", db.code().code())
        }
        None => crate::logcap::capped(&chain(e)),
    }
}

fn pool_detail(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(pg) => format!("{}: {}", pg_setting(pg), pg_detail(pg)),
        PoolError::Timeout(_) => {
            " pool: no connection free within --pg-pool-timeout (all --pg-pool-size in use, or the server slow to accept)".to_string()
        }
        other => format!(" pool: {}", chain(other)),
    }
}

/// An error and each of its causes, `: `-separated, leaving out a cause
/// whose text the error already shows.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// PostgreSQL raises 23514 both for a CHECK constraint and for a row that has no
/// partition. The second is ours to fix (create the partition and retry), never
/// the message's fault. They differ in the constraint name, which a CHECK
/// violation carries and partition routing does not; the message text would
/// be translated under another `lc_messages`.
pub fn is_missing_partition(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| *db.code() == SqlState::CHECK_VIOLATION && db.constraint().is_none())
}

/// Whether a connection failed because TLS refused the server (its
/// certificate, its name, the protocol), which no retry can change, rather
/// than because the network failed during the handshake (an I/O error,
/// without OpenSSL's error stack).
pub fn is_refused_by_tls(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(ssl) = cause.downcast_ref::<openssl::ssl::Error>() {
            return ssl.ssl_error().is_some();
        }
        source = cause.source();
    }
    false
}

fn classify_pg(e: &tokio_postgres::Error) -> Class {
    match e.code() {
        // A server certificate that the CA does not sign or that names another
        // host is refused the same way on every attempt.
        None if is_refused_by_tls(e) => Class::Fatal,
        // No SQLSTATE: the connection broke, or the client was closed.
        None => Class::Transient,
        Some(_) if is_missing_partition(e) => Class::Transient,
        Some(code) => classify_sqlstate(code.code()),
    }
}

/// The class of a PostgreSQL error by its SQLSTATE alone. (A 23514 without a
/// constraint name is a row with no partition, transient: see
/// [`is_missing_partition`].) The README's classification table is checked
/// against this function by a test.
pub fn classify_sqlstate(code: &str) -> Class {
    match code.get(..2).unwrap_or_default() {
        // Connection exceptions, resources (disk full, too many connections),
        // serialization failures and deadlocks: the server's trouble, not the data's.
        "08" | "53" => Class::Transient,
        "40" if code == "40001" || code == "40P01" => Class::Transient,
        "57" if matches!(code, "57P01" | "57P02" | "57P03" | "57P04" | "57P05") => Class::Transient,
        // Statement timeout or a cancel by an operator: try again later.
        "57" if code == "57014" => Class::Transient,
        // Lock not available, object in use.
        "55" => Class::Transient,
        // Data exceptions, cardinality violations, integrity violations and
        // program limits belong to the message.
        "21" | "22" | "23" | "54" => Class::Poison,
        // Invalid authorization, missing database, insufficient privilege,
        // an undefined table or column (the schema is not migrated), a config
        // file error: no retry can help.
        "28" | "3D" | "3F" | "42" | "F0" => Class::Fatal,
        // Anything else, such as an internal error: on purpose transient. A
        // retry that never succeeds shows as a stalled partition and an alert;
        // a dead letter sent by mistake would be silent data loss.
        _ => Class::Transient,
    }
}

fn pg_poison_reason(e: &tokio_postgres::Error) -> Option<Reason> {
    if classify_pg(e) != Class::Poison {
        return None;
    }
    let code = e.code()?.code();
    Some(match &code[..2] {
        "21" => Reason::PgCardinalityViolation,
        "22" => Reason::PgDataException,
        "23" => Reason::PgIntegrityViolation,
        _ => Reason::PgProgramLimit,
    })
}

fn classify_pool(e: &deadpool_postgres::PoolError) -> Class {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(pg) => match classify_pg(pg) {
            // A failure to connect is never the message's fault.
            Class::Poison => Class::Transient,
            c => c,
        },
        PoolError::Timeout(_) => Class::Transient,
        PoolError::Closed => Class::Transient,
        PoolError::NoRuntimeSpecified => Class::Fatal,
        PoolError::PostCreateHook(_) => Class::Transient,
    }
}

fn classify_kafka(e: &KafkaError) -> Class {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidConfig,
        ) => Class::Fatal,
        _ => match e {
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => Class::Fatal,
            // Broker down, transport errors, leader changes, an unknown topic (it is
            // waited for), a rebalance in progress: all pass with time.
            _ => Class::Transient,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_stage_and_label() {
        for &r in Reason::all() {
            assert!(!r.as_str().is_empty());
            assert_eq!(r.as_str().parse::<Reason>().ok(), Some(r));
            assert_eq!(r.stage().as_str().parse::<Stage>().ok(), Some(r.stage()));
            assert_eq!(Error::input(r, "x").class(), Class::Poison);
        }
    }

    #[test]
    fn config_is_fatal_and_io_is_transient() {
        assert_eq!(Error::config("--x", "bad").class(), Class::Fatal);
        let io = Error::io("spool", std::io::Error::other("disk full"));
        assert_eq!(io.class(), Class::Transient);
    }

    #[test]
    fn kafka_auth_is_fatal_and_transport_is_transient() {
        let auth = KafkaError::MessageConsumption(RDKafkaErrorCode::SaslAuthenticationFailed);
        assert_eq!(Error::Kafka(auth).class(), Class::Fatal);
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(Error::Kafka(down).class(), Class::Transient);
        let unknown = KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(Error::Kafka(unknown).class(), Class::Transient);
    }
}
