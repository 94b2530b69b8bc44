//! spansink's headers on a dead-letter record: one table, written by the
//! publisher and read back by `replay`.
//!
//! The record's headers are the original ones first, in their order, then
//! spansink's, then a second set under Kafka Connect's `__connect.errors.*`
//! names, so that tools built for Connect's dead-letter queues can read and
//! reprocess these records as they are. Header values are UTF-8 text:
//! numbers in decimal, times in RFC 3339 UTC with millisecond precision.
//! Optional facts that are unknown are left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};

use crate::error::{Error, Reason, Result, Stage};
use crate::otlp::spansink::v1::{DeadLetter, Header};

/// The names of the headers spansink adds to a dead-letter record.
pub mod name {
    /// The dead-letter id; the same poison published twice carries the same id.
    pub const ID: &str = "spansink.dlq.id";
    pub const GROUP: &str = "spansink.dlq.group";
    pub const SOURCE_TOPIC: &str = "spansink.dlq.source.topic";
    pub const SOURCE_PARTITION: &str = "spansink.dlq.source.partition";
    pub const SOURCE_OFFSET: &str = "spansink.dlq.source.offset";
    /// The original message's Kafka timestamp; absent when it had none.
    pub const SOURCE_TIMESTAMP: &str = "spansink.dlq.source.timestamp";
    /// Absent when the tenant was never determined.
    pub const TENANT: &str = "spansink.dlq.tenant";
    pub const STAGE: &str = "spansink.dlq.stage";
    pub const REASON: &str = "spansink.dlq.reason";
    /// At most 1024 bytes.
    pub const ERROR: &str = "spansink.dlq.error";
    /// Absent unless PostgreSQL refused the message.
    pub const SQLSTATE: &str = "spansink.dlq.sqlstate";
    pub const ATTEMPTS: &str = "spansink.dlq.attempts";
    pub const FIRST_FAILURE: &str = "spansink.dlq.first.failure";
    /// The original value's size in bytes.
    pub const SIZE: &str = "spansink.dlq.size";
    pub const INSTANCE: &str = "spansink.dlq.instance";
    pub const VERSION: &str = "spansink.dlq.version";
    /// Only on a marker: the record stands for a dead letter the topic refused
    /// (its size); the value is absent, and this is the original value's size
    /// in bytes. The whole record is in the publishing spool's `oversize/`.
    pub const OVERSIZE: &str = "spansink.dlq.oversize";
    /// Only on a marker: why the topic refused the dead letter itself.
    pub const REFUSED: &str = "spansink.dlq.refused";

    pub const CONNECT_TOPIC: &str = "__connect.errors.topic";
    pub const CONNECT_PARTITION: &str = "__connect.errors.partition";
    pub const CONNECT_OFFSET: &str = "__connect.errors.offset";
    /// `spansink.poison.<reason>`.
    pub const CONNECT_EXCEPTION_CLASS: &str = "__connect.errors.exception.class.name";
    /// The error text.
    pub const CONNECT_EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";
    /// See [`super::connect_stage`].
    pub const CONNECT_STAGE: &str = "__connect.errors.stage";
}

/// Prefix of the Connect exception class name; the reason follows.
pub const EXCEPTION_CLASS_PREFIX: &str = "spansink.poison.";

/// One header: how it is written from a dead letter (`None`: left out) and,
/// for spansink's own, how it is read back (`Err`: why the value is wrong).
struct Field {
    name: &'static str,
    write: fn(&DeadLetter) -> Option<String>,
    read: Option<Read>,
    /// A record without it cannot be replayed.
    required: bool,
}

/// Stores a header's value into the dead letter, or says why it cannot.
type Read = fn(&mut DeadLetter, &str) -> std::result::Result<(), String>;

/// Every header spansink writes, in the order it writes them.
const FIELDS: &[Field] = &[
    Field {
        name: name::ID,
        write: |d| Some(d.id.clone()),
        read: Some(|d, v| {
            d.id = v.into();
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::GROUP,
        write: |d| Some(d.group.clone()),
        read: Some(|d, v| {
            d.group = v.into();
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::SOURCE_TOPIC,
        write: |d| Some(d.topic.clone()),
        read: Some(|d, v| {
            d.topic = v.into();
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::SOURCE_PARTITION,
        write: |d| Some(d.partition.to_string()),
        read: Some(|d, v| {
            d.partition = number(v, "a partition")?;
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::SOURCE_OFFSET,
        write: |d| Some(d.offset.to_string()),
        read: Some(|d, v| {
            d.offset = number(v, "an offset")?;
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::SOURCE_TIMESTAMP,
        write: |d| d.timestamp_ms.and_then(rfc3339_millis),
        read: Some(|d, v| {
            d.timestamp_ms = Some(parse_rfc3339_millis(v)?);
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::TENANT,
        write: |d| d.tenant.clone(),
        read: Some(|d, v| {
            d.tenant = Some(v.into());
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::STAGE,
        write: |d| Some(d.stage.clone()),
        read: Some(|d, v| {
            d.stage = v.into();
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::REASON,
        write: |d| Some(d.reason.clone()),
        read: Some(|d, v| {
            d.reason = v.into();
            Ok(())
        }),
        required: true,
    },
    Field {
        name: name::ERROR,
        write: |d| Some(d.error.clone()),
        read: Some(|d, v| {
            d.error = v.into();
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::SQLSTATE,
        write: |d| d.sqlstate.clone(),
        read: Some(|d, v| {
            d.sqlstate = Some(v.into());
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::ATTEMPTS,
        write: |d| Some(d.attempts.to_string()),
        read: Some(|d, v| {
            d.attempts = number(v, "a count")?;
            Ok(())
        }),
        required: false,
    },
    // The record's own value says it: written for readers, never read back.
    Field {
        name: name::SIZE,
        write: |d| Some(d.payload.len().to_string()),
        read: None,
        required: false,
    },
    // Only a damaged record holds a time RFC 3339 cannot write (before 1970
    // or after 9999); the header is then left out rather than invented.
    Field {
        name: name::FIRST_FAILURE,
        write: |d| rfc3339_millis(d.first_failure_unix_ms),
        read: Some(|d, v| {
            d.first_failure_unix_ms = parse_rfc3339_millis(v)?;
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::INSTANCE,
        write: |d| Some(d.instance.clone()),
        read: Some(|d, v| {
            d.instance = v.into();
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::VERSION,
        write: |d| Some(d.version.clone()),
        read: Some(|d, v| {
            d.version = v.into();
            Ok(())
        }),
        required: false,
    },
    Field {
        name: name::CONNECT_TOPIC,
        write: |d| Some(d.topic.clone()),
        read: None,
        required: false,
    },
    Field {
        name: name::CONNECT_PARTITION,
        write: |d| Some(d.partition.to_string()),
        read: None,
        required: false,
    },
    Field {
        name: name::CONNECT_OFFSET,
        write: |d| Some(d.offset.to_string()),
        read: None,
        required: false,
    },
    Field {
        name: name::CONNECT_EXCEPTION_CLASS,
        write: |d| Some(format!("{EXCEPTION_CLASS_PREFIX}{}", d.reason)),
        read: None,
        required: false,
    },
    Field {
        name: name::CONNECT_EXCEPTION_MESSAGE,
        write: |d| Some(d.error.clone()),
        read: None,
        required: false,
    },
    Field {
        name: name::CONNECT_STAGE,
        write: |d| Some(connect_stage(&d.stage).into()),
        read: None,
        required: false,
    },
];

fn number<T: std::str::FromStr>(v: &str, what: &str) -> std::result::Result<T, String> {
    v.parse().map_err(|_| format!("{v:?} is not {what}"))
}

/// Kafka Connect's name for where a record failed.
///
/// | spansink stage | Connect stage     | why                                        |
/// |----------------|-------------------|--------------------------------------------|
/// | decode         | `VALUE_CONVERTER` | the value's bytes could not be read        |
/// | validate       | `TRANSFORMATION`  | read, but refused by a rule on its content |
/// | write, crash   | `TASK_PUT`        | the sink could not store it                |
///
/// Any other stage (a later version's) is `TASK_PUT`, Connect's stage for "the
/// sink refused it".
pub fn connect_stage(stage: &str) -> &'static str {
    match stage.parse::<Stage>() {
        Ok(Stage::Decode) => "VALUE_CONVERTER",
        Ok(Stage::Validate) => "TRANSFORMATION",
        Ok(Stage::Write | Stage::Crash) | Err(_) => "TASK_PUT",
    }
}

/// The record's headers: the original ones first, in their order, then
/// [`FIELDS`].
pub fn headers(d: &DeadLetter) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(d.headers.len() + FIELDS.len());
    for original in &d.headers {
        h = h.insert(KafkaHeader {
            key: &original.key,
            value: original.value.as_deref(),
        });
    }
    for field in FIELDS {
        if let Some(value) = (field.write)(d) {
            h = h.insert(KafkaHeader {
                key: field.name,
                value: Some(&value),
            });
        }
    }
    h
}

/// The last millisecond RFC 3339 can write: 9999-12-31T23:59:59.999Z.
pub(crate) const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// `ms` since the epoch as RFC 3339 UTC with milliseconds; `None` outside 1970..=9999.
fn rfc3339_millis(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms)
        .ok()
        .filter(|&m| m <= MAX_RFC3339_MS as u64)?;
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    Some(humantime::format_rfc3339_millis(time).to_string())
}

fn parse_rfc3339_millis(value: &str) -> std::result::Result<i64, String> {
    let time: SystemTime = humantime::parse_rfc3339(value)
        .map_err(|e| format!("{value:?} is not an RFC 3339 UTC time: {e}"))?;
    time.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .ok_or_else(|| format!("{value:?} is out of range"))
}

fn bad_header(key: &str, why: impl std::fmt::Display) -> Error {
    Error::input(Reason::BadDeadLetter, format!("header {key}: {why}"))
}

/// Whether a dead-letter record is a marker for one the topic refused (its
/// value is not the message: see [`name::OVERSIZE`]).
pub fn is_marker<H: Headers + ?Sized>(headers: &H) -> bool {
    let all = all_headers(headers);
    let start = all.iter().rposition(|h| h.key == name::ID);
    start.is_some_and(|s| all[s..].iter().any(|h| h.key == name::OVERSIZE))
}

fn all_headers<H: Headers + ?Sized>(headers: &H) -> Vec<KafkaHeader<'_, &[u8]>> {
    (0..headers.count())
        .filter_map(|i| headers.try_get(i))
        .collect()
}

/// Reads a dead-letter record back: spansink's headers, its original headers,
/// and from the record, its key and value. For `replay`.
pub fn from_message<M: Message>(message: &M) -> Result<DeadLetter> {
    let headers = message
        .headers()
        .ok_or_else(|| bad_header(name::ID, "the record has no headers"))?;
    let mut d = parse_headers(headers)?;
    d.key = message.key().map(<[u8]>::to_vec);
    d.payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
    Ok(d)
}

/// Reads spansink's headers of a dead-letter record into a [`DeadLetter`]
/// whose key and payload are left empty for the caller to take from the record.
///
/// spansink's headers start at the last `spansink.dlq.id`: everything before it
/// is the original message's, even a header by that name (a message that was
/// dead-lettered, replayed and refused again). Unknown headers after it are
/// ignored, so that a later version may add some. The fields marked required
/// must be there; the other facts are descriptive and default when absent.
pub fn parse_headers<H: Headers + ?Sized>(headers: &H) -> Result<DeadLetter> {
    let all = all_headers(headers);
    let start = all
        .iter()
        .rposition(|h| h.key == name::ID)
        .ok_or_else(|| bad_header(name::ID, "missing: not a spansink dead letter"))?;
    let mut d = DeadLetter {
        headers: all[..start]
            .iter()
            .map(|h| Header {
                key: h.key.to_string(),
                value: h.value.map(<[u8]>::to_vec),
            })
            .collect(),
        ..DeadLetter::default()
    };
    let mut seen = vec![false; FIELDS.len()];
    for h in &all[start..] {
        let Some(i) = FIELDS.iter().position(|f| f.name == h.key) else {
            continue;
        };
        let Some(read) = FIELDS[i].read else { continue };
        let value = h.value.ok_or_else(|| bad_header(h.key, "has no value"))?;
        let text = std::str::from_utf8(value).map_err(|e| bad_header(h.key, e))?;
        read(&mut d, text).map_err(|why| bad_header(h.key, why))?;
        seen[i] = true;
    }
    match FIELDS
        .iter()
        .zip(&seen)
        .find(|(f, seen)| f.required && !**seen)
    {
        Some((missing, _)) => Err(bad_header(missing.name, "missing")),
        None => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Class;
    use crate::poison::record;

    fn letter() -> DeadLetter {
        DeadLetter {
            id: record::dead_letter_id("g", "otlp_spans", 2, 41),
            group: "g".into(),
            topic: "otlp_spans".into(),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_700_000_000_123),
            key: Some(b"k".to_vec()),
            headers: vec![
                Header {
                    key: name::ID.into(),
                    value: Some(b"from an earlier trip".to_vec()),
                },
                Header {
                    key: "empty".into(),
                    value: None,
                },
            ],
            payload: vec![0, 159, 146, 150],
            tenant: Some("acme".into()),
            stage: "write".into(),
            reason: "pg_data_exception".into(),
            error: "value out of range".into(),
            sqlstate: Some("22003".into()),
            attempts: 3,
            first_failure_unix_ms: 1_700_000_001_000,
            instance: "host-1".into(),
            version: "0.1.0".into(),
            // Not a header: it names a spool, which means nothing downstream.
            spool_id: String::new(),
        }
    }

    fn value<'h>(h: &'h OwnedHeaders, key: &str) -> Option<&'h str> {
        (0..h.count())
            .rev()
            .filter_map(|i| h.try_get(i))
            .find(|x| x.key == key)
            .and_then(|x| x.value)
            .map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn headers_round_trip_with_an_original_header_of_the_same_name() {
        let d = letter();
        let h = headers(&d);
        assert_eq!(h.get(0).value, Some(&b"from an earlier trip"[..]));
        assert_eq!(h.get(1).value, None);
        let mut back = parse_headers(&h).unwrap();
        back.key = d.key.clone();
        back.payload = d.payload.clone();
        assert_eq!(back, d);
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let h = headers(&letter());
        assert_eq!(
            value(&h, name::SOURCE_TIMESTAMP),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            value(&h, name::FIRST_FAILURE),
            Some("2023-11-14T22:13:21.000Z")
        );
    }

    #[test]
    fn unknown_and_unwritable_facts_are_left_out() {
        let d = DeadLetter {
            timestamp_ms: Some(-1),
            tenant: None,
            sqlstate: None,
            first_failure_unix_ms: MAX_RFC3339_MS + 1,
            ..letter()
        };
        let h = headers(&d);
        for key in [
            name::SOURCE_TIMESTAMP,
            name::TENANT,
            name::SQLSTATE,
            name::FIRST_FAILURE,
        ] {
            assert_eq!(value(&h, key), None, "{key}");
        }
        let back = parse_headers(&h).unwrap();
        assert_eq!(back.timestamp_ms, None);
        assert_eq!(back.tenant, None);
        assert_eq!(back.first_failure_unix_ms, 0);
    }

    #[test]
    fn connect_stages_follow_the_documented_mapping() {
        assert_eq!(connect_stage("decode"), "VALUE_CONVERTER");
        assert_eq!(connect_stage("validate"), "TRANSFORMATION");
        assert_eq!(connect_stage("write"), "TASK_PUT");
        assert_eq!(connect_stage("crash"), "TASK_PUT");
        assert_eq!(connect_stage("panic"), "TASK_PUT");
        for &r in Reason::all() {
            assert!(!connect_stage(r.stage().as_str()).is_empty());
        }
        let h = headers(&letter());
        assert_eq!(
            value(&h, name::CONNECT_EXCEPTION_CLASS),
            Some("spansink.poison.pg_data_exception")
        );
    }

    #[test]
    fn a_record_without_spansink_headers_is_a_bad_dead_letter() {
        let h = OwnedHeaders::new().insert(KafkaHeader {
            key: "X-Scope-OrgID",
            value: Some("acme"),
        });
        let err = parse_headers(&h).unwrap_err();
        assert_eq!(err.class(), Class::Poison);
        assert_eq!(err.reason(), Some(Reason::BadDeadLetter));
    }

    #[test]
    fn malformed_or_missing_required_headers_are_named() {
        let h = OwnedHeaders::new()
            .insert(KafkaHeader {
                key: name::ID,
                value: Some("x"),
            })
            .insert(KafkaHeader {
                key: name::SOURCE_OFFSET,
                value: Some("forty"),
            });
        let err = parse_headers(&h).unwrap_err().to_string();
        assert!(err.contains(name::SOURCE_OFFSET), "{err}");

        let h = headers(&letter());
        let mut keep: Vec<_> = (0..h.count()).map(|i| h.get(i)).collect();
        keep.retain(|x| x.key != name::REASON);
        let trimmed = keep.into_iter().fold(OwnedHeaders::new(), |acc, x| {
            acc.insert(KafkaHeader {
                key: x.key,
                value: x.value,
            })
        });
        let err = parse_headers(&trimmed).unwrap_err().to_string();
        assert!(err.contains(name::REASON), "{err}");
    }
}
