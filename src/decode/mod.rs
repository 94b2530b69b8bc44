//! OTLP proto/JSON → domain rows.
//!
//! One Kafka message is decoded in three steps, each its own file:
//! parse the payload into the prost types (`proto`, or `json` which maps
//! OTLP/JSON onto the same types), then validate and turn every span or log
//! record into a row (`rows`, `logs`, with the checks in `validate`), writing
//! attribute values as JSON text on the way (`anyvalue`).
//!
//! A message is stored whole or not at all: the first span that cannot be
//! stored makes the whole message poison, with a [`Reason`] and a detail that
//! names the span, the field, the value and the limit.
//!
//! Nesting is bounded twice. The parsers stop first: prost at 100 nested
//! messages, serde_json at 128 nested arrays and objects, which caps an
//! attribute value at about 47 levels in protobuf and 39 in JSON whatever
//! `--max-value-depth` allows. The JSON writer then refuses anything deeper
//! than `--max-value-depth`, checking before it descends.

mod anyvalue;
mod json;
pub mod logs;
pub mod prescan;
mod proto;
mod proto_rows;
mod rows;
mod validate;
mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Reason, Result};
use crate::model::{Decoded, Origin};

pub use prescan::{Counts, ItemLimits};

pub use json::{parse_logs_request_json, parse_request_json};
pub use proto::{parse_logs_request_proto, parse_request_proto};

/// How a topic's producers encode their messages.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::EnumString,
    strum::Display,
    strum::IntoStaticStr,
    strum::VariantNames,
)]
#[strum(serialize_all = "snake_case")]
pub enum Encoding {
    OtlpProto,
    OtlpJson,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// What a topic carries: OTLP trace or logs export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

/// How to read a topic's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    pub signal: Signal,
    pub encoding: Encoding,
}

impl Source {
    pub const fn traces(encoding: Encoding) -> Self {
        Source {
            signal: Signal::Traces,
            encoding,
        }
    }

    pub const fn logs(encoding: Encoding) -> Self {
        Source {
            signal: Signal::Logs,
            encoding,
        }
    }
}

/// Limits against input that could exhaust the process, and the acceptance window.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_value_depth: usize,
    pub max_attributes: usize,
    /// What one message may decode into.
    pub items: ItemLimits,
    pub accept_past: Duration,
    pub accept_future: Duration,
}

/// Decodes one trace export message into span and event rows for `tenant`.
///
/// `now` anchors the acceptance window for span start times.
pub fn decode_traces(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    scan(payload, Source::traces(encoding), limits)?;
    decode_scanned_traces(payload, encoding, tenant, limits, now)
}

/// Decodes one logs export message into log rows for `tenant`, keyed by
/// where it was read (`origin`).
///
/// `now` anchors the acceptance window for record times.
pub fn decode_logs(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    origin: &Origin<'_>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    decode(payload, Source::logs(encoding), tenant, origin, limits, now)
}

/// Checks and decodes one message of `source`, read at `origin`: what the
/// worker does in two steps ([`scan`] on receipt, [`decode_scanned`] in the
/// batch), in one.
pub fn decode(
    payload: &[u8],
    source: Source,
    tenant: &Arc<str>,
    origin: &Origin<'_>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    scan(payload, source, limits)?;
    decode_scanned(payload, source, tenant, origin, limits, now)
}

/// Checks a message's size and counts ([`prescan`]) without decoding it;
/// what it would decode into.
pub fn scan(payload: &[u8], source: Source, limits: &Limits) -> Result<Counts> {
    check_size(payload, limits)?;
    prescan::scan(payload, source.signal, source.encoding, &limits.items)
}

/// Decodes a message that [`scan`] already accepted.
pub fn decode_scanned(
    payload: &[u8],
    source: Source,
    tenant: &Arc<str>,
    origin: &Origin<'_>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    match source.signal {
        Signal::Traces => decode_scanned_traces(payload, source.encoding, tenant, limits, now),
        Signal::Logs => decode_scanned_logs(payload, source.encoding, tenant, origin, limits, now),
    }
}

fn decode_scanned_traces(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    let request = match encoding {
        Encoding::OtlpProto => match proto_rows::span_rows(payload, tenant, limits, now) {
            Some(decoded) => return Ok(decoded),
            // Whatever the fast path leaves, prost decides, with the reason.
            None => parse_request_proto(payload)?,
        },
        Encoding::OtlpJson => parse_request_json(payload)?,
    };
    rows::span_rows(request, tenant, limits, now)
}

fn decode_scanned_logs(
    payload: &[u8],
    encoding: Encoding,
    tenant: &Arc<str>,
    origin: &Origin<'_>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    let request = match encoding {
        Encoding::OtlpProto => parse_logs_request_proto(payload)?,
        Encoding::OtlpJson => parse_logs_request_json(payload)?,
    };
    logs::log_rows(request, tenant, origin, limits, now)
}

/// Checked before parsing, so that an oversized message costs nothing more.
fn check_size(payload: &[u8], limits: &Limits) -> Result<()> {
    if payload.len() > limits.max_message_bytes {
        return Err(Error::input(
            Reason::MessageTooLarge,
            format!(
                "message is {} bytes, more than --max-message-bytes {}",
                payload.len(),
                limits.max_message_bytes
            ),
        ));
    }
    Ok(())
}

/// Prefixes the detail of an input error with where it happened; built only
/// on the error path.
fn in_context(err: Error, context: impl FnOnce() -> String) -> Error {
    match err {
        Error::Input { reason, detail } => {
            // The context may quote the input (an attribute's key): capped again.
            Error::input(reason, format!("{}: {detail}", context()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
