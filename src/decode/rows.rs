//! Trace export requests → span and event rows, and the resource and scope
//! columns that spans and log records share.

use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{Error, Reason, Result};
use crate::model::{Decoded, SpanEventRow, SpanRow};
use crate::otlp::common::v1::{any_value::Value, InstrumentationScope};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{span, Span};
use crate::otlp::ExportTraceServiceRequest;

use super::anyvalue::JsonWriter;
use super::validate::{self, Window};
use super::{in_context, Limits};

/// The columns every row of one resource shares, written once.
pub(super) struct ResourceColumns {
    pub(super) attributes: Arc<str>,
    pub(super) service_name: Option<Arc<str>>,
}

impl ResourceColumns {
    pub(super) fn new(resource: Option<Resource>, json: &mut JsonWriter) -> Result<Self> {
        let attributes = resource.map(|r| r.attributes).unwrap_or_default();
        let text = json
            .attributes(&attributes)
            .map_err(|e| in_context(e, || "resource".to_string()))?;
        // The last one wins, as it does in the jsonb object.
        let service_name = attributes
            .into_iter()
            .rev()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value?.value? {
                Value::StringValue(s) => Some(json.shared_text(&s)),
                _ => None,
            });
        Ok(ResourceColumns {
            attributes: Arc::from(text),
            service_name,
        })
    }
}

/// The instrumentation scope columns every row of one scope shares.
pub(super) struct ScopeColumns {
    pub(super) name: Arc<str>,
    pub(super) version: Arc<str>,
}

impl ScopeColumns {
    pub(super) fn new(scope: Option<InstrumentationScope>, json: &mut JsonWriter) -> Self {
        let scope = scope.unwrap_or_default();
        ScopeColumns {
            name: json.shared_text(&scope.name),
            version: json.shared_text(&scope.version),
        }
    }
}

/// Turns one trace export request into rows, or the first reason it cannot be stored.
pub(super) fn span_rows(
    request: ExportTraceServiceRequest,
    tenant: &Arc<str>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    let mut rows = SpanRows {
        tenant,
        window: Window::new(now, limits),
        json: JsonWriter::new(limits),
        out: Decoded::default(),
    };
    rows.reserve(&request);
    for (r, resource_spans) in request.resource_spans.into_iter().enumerate() {
        let resource = ResourceColumns::new(resource_spans.resource, &mut rows.json)
            .map_err(|e| in_context(e, || format!("resource_spans[{r}]")))?;
        for (s, scope_spans) in resource_spans.scope_spans.into_iter().enumerate() {
            let scope = ScopeColumns::new(scope_spans.scope, &mut rows.json);
            for (i, span) in scope_spans.spans.into_iter().enumerate() {
                rows.push(span, &resource, &scope).map_err(|e| {
                    in_context(e, || {
                        format!("resource_spans[{r}].scope_spans[{s}].spans[{i}]")
                    })
                })?;
            }
        }
    }
    rows.out.sanitized = rows.json.sanitized;
    Ok(rows.out)
}

struct SpanRows<'a> {
    tenant: &'a Arc<str>,
    window: Window,
    json: JsonWriter,
    out: Decoded,
}

/// What identifies a span's events: the span's key columns.
struct SpanKey {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    start_unix_nano: i64,
}

impl SpanRows<'_> {
    fn reserve(&mut self, request: &ExportTraceServiceRequest) {
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans);
        let (span_count, event_count) = spans.fold((0, 0), |(n, e), s| (n + 1, e + s.events.len()));
        self.out.spans.reserve_exact(span_count);
        self.out.events.reserve_exact(event_count);
    }

    fn push(&mut self, span: Span, resource: &ResourceColumns, scope: &ScopeColumns) -> Result<()> {
        let trace_id = validate::trace_id("trace_id", &span.trace_id)?;
        let span_id = validate::span_id("span_id", &span.span_id)?;
        // From here on the span has an id to be named by.
        self.push_valid(span, trace_id, span_id, resource, scope)
            .map_err(|e| in_context(e, || format!("span {}", hex::encode(span_id))))
    }

    fn push_valid(
        &mut self,
        span: Span,
        trace_id: [u8; 16],
        span_id: [u8; 8],
        resource: &ResourceColumns,
        scope: &ScopeColumns,
    ) -> Result<()> {
        // Every field named, so that a field added to the proto is a compile
        // error here rather than silently dropped.
        let Span {
            trace_id: _,
            span_id: _,
            trace_state,
            parent_span_id,
            flags,
            name,
            kind,
            start_time_unix_nano,
            end_time_unix_nano,
            attributes,
            dropped_attributes_count,
            events,
            dropped_events_count,
            links,
            dropped_links_count,
            status,
        } = span;
        let parent_span_id = validate::parent_span_id(&parent_span_id)?;
        let key = SpanKey {
            trace_id,
            span_id,
            start_unix_nano: self
                .window
                .check("start_time_unix_nano", start_time_unix_nano)?,
        };
        let end_unix_nano = validate::stored_time("end_time_unix_nano", end_time_unix_nano)?;
        let attributes = self.json.attributes(&attributes)?;
        let links_json = self.links(&links)?;
        let event_count = count(events.len());
        for (index, event) in events.into_iter().enumerate() {
            let row = self
                .event(event, index, &key)
                .map_err(|e| in_context(e, || format!("events[{index}]")))?;
            self.out.events.push(row);
        }
        let status = status.unwrap_or_default();
        self.out.spans.push(SpanRow {
            tenant_id: Arc::clone(self.tenant),
            trace_id,
            span_id,
            parent_span_id,
            trace_state: self.json.text(trace_state),
            flags,
            name: self.json.text(name),
            kind,
            start_unix_nano: key.start_unix_nano,
            end_unix_nano,
            status_code: status.code,
            status_message: self.json.text(status.message),
            service_name: resource.service_name.clone(),
            resource_attributes: Arc::clone(&resource.attributes),
            scope_name: Arc::clone(&scope.name),
            scope_version: Arc::clone(&scope.version),
            attributes,
            dropped_attributes_count,
            dropped_events_count,
            dropped_links_count,
            links: links_json,
            link_count: count(links.len()),
            event_count,
        });
        Ok(())
    }

    fn event(&mut self, event: span::Event, index: usize, span: &SpanKey) -> Result<SpanEventRow> {
        let event_index = i32::try_from(index).map_err(|_| {
            Error::input(
                Reason::TooManyAttributes,
                "a span has more events than an int column can number",
            )
        })?;
        Ok(SpanEventRow {
            tenant_id: Arc::clone(self.tenant),
            trace_id: span.trace_id,
            span_id: span.span_id,
            span_start_unix_nano: span.start_unix_nano,
            event_index,
            time_unix_nano: validate::stored_time("time_unix_nano", event.time_unix_nano)?,
            name: self.json.text(event.name),
            attributes: self.json.attributes(&event.attributes)?,
            dropped_attributes_count: event.dropped_attributes_count,
        })
    }

    /// The links as one JSON array, each link's ids checked like a span's.
    fn links(&mut self, links: &[span::Link]) -> Result<String> {
        let mut out = String::with_capacity(2 + links.len() * 160);
        out.push('[');
        for (i, link) in links.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.write_link(&mut out, link)
                .map_err(|e| in_context(e, || format!("links[{i}]")))?;
        }
        out.push(']');
        Ok(out)
    }

    fn write_link(&mut self, out: &mut String, link: &span::Link) -> Result<()> {
        let trace_id = validate::trace_id("trace_id", &link.trace_id)?;
        let span_id = validate::span_id("span_id", &link.span_id)?;
        begin_link(
            out,
            &mut self.json,
            trace_id,
            span_id,
            &link.trace_state,
            link.flags,
        );
        self.json.write_attributes(out, &link.attributes)?;
        end_link(out, link.dropped_attributes_count);
        Ok(())
    }
}

/// Opens a link's JSON object and writes it up to `"attributes":`; the
/// caller writes the attributes object, then [`end_link`]. Both decoding
/// paths write links through these two, so the layout is written once.
pub(super) fn begin_link(
    out: &mut String,
    json: &mut JsonWriter,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    trace_state: &str,
    flags: u32,
) {
    out.push_str(r#"{"trace_id":""#);
    out.push_str(&hex::encode(trace_id));
    out.push_str(r#"","span_id":""#);
    out.push_str(&hex::encode(span_id));
    out.push_str(r#"","trace_state":"#);
    json.write_str(out, trace_state);
    out.push_str(r#","flags":"#);
    out.push_str(itoa::Buffer::new().format(flags));
    out.push_str(r#","attributes":"#);
}

/// Closes what [`begin_link`] opened, after the attributes.
pub(super) fn end_link(out: &mut String, dropped_attributes_count: u32) {
    out.push_str(r#","dropped_attributes_count":"#);
    out.push_str(itoa::Buffer::new().format(dropped_attributes_count));
    out.push('}');
}

/// A count column; a message small enough to be accepted cannot reach the cap.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
