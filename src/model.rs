//! Domain rows: what one Kafka message decodes into, ready for PostgreSQL.
//!
//! JSON-valued columns are carried as JSON text that `decode` already wrote, so
//! that the writer streams bytes into binary COPY without building a tree.

use std::sync::Arc;

/// One row of `spans`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRow {
    pub tenant_id: Arc<str>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span (OTLP sends an empty `parent_span_id`).
    pub parent_span_id: Option<[u8; 8]>,
    pub trace_state: String,
    pub flags: u32,
    pub name: String,
    pub kind: i32,
    pub start_unix_nano: i64,
    pub end_unix_nano: i64,
    pub status_code: i32,
    pub status_message: String,
    /// The resource's `service.name` attribute when it is a string.
    pub service_name: Option<Arc<str>>,
    /// JSON object text, shared by every span of one resource.
    pub resource_attributes: Arc<str>,
    pub scope_name: Arc<str>,
    pub scope_version: Arc<str>,
    /// JSON object text.
    pub attributes: String,
    pub dropped_attributes_count: u32,
    pub dropped_events_count: u32,
    pub dropped_links_count: u32,
    /// JSON array text: `[{"trace_id":hex,"span_id":hex,"trace_state":..,"flags":..,"attributes":{..},"dropped_attributes_count":..}]`.
    pub links: String,
    pub link_count: u32,
    pub event_count: u32,
}

impl SpanRow {
    /// A root span with nothing but its identity and a 1 ns extent, for tests
    /// to adjust with struct update syntax.
    #[cfg(test)]
    pub(crate) fn bare(tenant: &str, trace_id: [u8; 16], id: u8, start: i64) -> Self {
        SpanRow {
            tenant_id: Arc::from(tenant),
            trace_id,
            span_id: [id; 8],
            parent_span_id: None,
            trace_state: String::new(),
            flags: 0,
            name: format!("s{id}"),
            kind: 1,
            start_unix_nano: start,
            end_unix_nano: start + 1,
            status_code: 0,
            status_message: String::new(),
            service_name: None,
            resource_attributes: Arc::from("{}"),
            scope_name: Arc::from(""),
            scope_version: Arc::from(""),
            attributes: "{}".into(),
            dropped_attributes_count: 0,
            dropped_events_count: 0,
            dropped_links_count: 0,
            links: "[]".into(),
            link_count: 0,
            event_count: 0,
        }
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }

    pub fn is_error(&self) -> bool {
        self.status_code == STATUS_CODE_ERROR
    }

    pub fn duration_ns(&self) -> i64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

pub const STATUS_CODE_ERROR: i32 = 2;

/// One row of `span_events`: a timed log line of a span, unique per span and position.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEventRow {
    pub tenant_id: Arc<str>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The owning span's start: the partition key, so that events live and
    /// expire with their span.
    pub span_start_unix_nano: i64,
    /// Position of the event within its span.
    pub event_index: i32,
    pub time_unix_nano: i64,
    pub name: String,
    /// JSON object text.
    pub attributes: String,
    pub dropped_attributes_count: u32,
}

/// Values changed so that PostgreSQL accepts them; each one is counted in a metric.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sanitized {
    /// NUL characters replaced with U+FFFD in text and JSON strings.
    pub nul_replaced: u64,
    /// NaN and ±Infinity doubles stored as the strings "NaN", "Infinity", "-Infinity".
    pub nonfinite_floats: u64,
}

impl Sanitized {
    pub fn add(&mut self, other: Sanitized) {
        self.nul_replaced += other.nul_replaced;
        self.nonfinite_floats += other.nonfinite_floats;
    }
}

/// Everything one message turns into: the spans and span events of a trace
/// export, or the log records of a logs export.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decoded {
    pub spans: Vec<SpanRow>,
    pub events: Vec<SpanEventRow>,
    pub logs: Vec<LogRow>,
    pub sanitized: Sanitized,
}

impl Decoded {
    /// Memory this message holds while it waits in a batch, for the in-flight budget.
    pub fn approx_bytes(&self) -> usize {
        let spans: usize = self
            .spans
            .iter()
            .map(|s| {
                std::mem::size_of::<SpanRow>()
                    + s.trace_state.len()
                    + s.name.len()
                    + s.status_message.len()
                    + s.attributes.len()
                    + s.links.len()
            })
            .sum();
        let events: usize = self
            .events
            .iter()
            .map(|e| std::mem::size_of::<SpanEventRow>() + e.name.len() + e.attributes.len())
            .sum();
        let logs: usize = self
            .logs
            .iter()
            .map(|l| {
                std::mem::size_of::<LogRow>()
                    + l.severity_text.len()
                    + l.body.len()
                    + l.attributes.len()
                    + l.event_name.len()
            })
            .sum();
        spans + events + logs
    }
}

/// Where a message was read from: what keys its log records. Replay gives
/// the dead letter's source, so that a record replayed is the record consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp in milliseconds; `None` when the message had none.
    pub timestamp_ms: Option<i64>,
}

/// One OTLP log record, ready for the logs table.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRow {
    pub tenant_id: Arc<str>,
    /// The record's key: see `decode::logs::record_id`.
    pub record_id: [u8; 16],
    /// When the event happened; the observed time when the producer left it 0.
    pub time_unix_nano: i64,
    pub observed_time_unix_nano: i64,
    pub severity_number: i32,
    pub severity_text: String,
    /// JSON text of the body AnyValue (`null` when there is none).
    pub body: String,
    /// JSON object text.
    pub attributes: String,
    /// JSON object text, shared by every record of one resource.
    pub resource_attributes: Arc<str>,
    /// The resource's `service.name` attribute when it is a string.
    pub service_name: Option<Arc<str>>,
    pub scope_name: Arc<str>,
    pub scope_version: Arc<str>,
    pub flags: u32,
    /// `None` when the record carries no trace context.
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
    pub event_name: String,
    pub dropped_attributes_count: u32,
}
