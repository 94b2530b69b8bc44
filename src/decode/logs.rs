//! Logs export requests → log rows.

use std::sync::Arc;
use std::time::SystemTime;

use crate::error::Result;
use crate::model::{Decoded, LogRow, Origin};
use crate::otlp::logs::v1::LogRecord;
use crate::otlp::ExportLogsServiceRequest;

use super::anyvalue::JsonWriter;
use super::rows::{ResourceColumns, ScopeColumns};
use super::validate::{self, Window};
use super::{in_context, Limits};

/// Turns one logs export request into rows, or the first reason it cannot be stored.
pub(super) fn log_rows(
    request: ExportLogsServiceRequest,
    tenant: &Arc<str>,
    origin: &Origin<'_>,
    limits: &Limits,
    now: SystemTime,
) -> Result<Decoded> {
    let window = Window::new(now, limits);
    let mut json = JsonWriter::new(limits);
    let count = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    let mut logs = Vec::with_capacity(count);
    let mut index: u64 = 0;
    for (r, resource_logs) in request.resource_logs.into_iter().enumerate() {
        let resource = ResourceColumns::new(resource_logs.resource, &mut json)
            .map_err(|e| in_context(e, || format!("resource_logs[{r}]")))?;
        for (s, scope_logs) in resource_logs.scope_logs.into_iter().enumerate() {
            let scope = ScopeColumns::new(scope_logs.scope, &mut json);
            for (i, record) in scope_logs.log_records.into_iter().enumerate() {
                let id = record_id(tenant, origin, index);
                index += 1;
                let row = log_row(record, tenant, id, &resource, &scope, &window, &mut json)
                    .map_err(|e| {
                        in_context(e, || {
                            format!("resource_logs[{r}].scope_logs[{s}].log_records[{i}]")
                        })
                    })?;
                logs.push(row);
            }
        }
    }
    Ok(Decoded {
        logs,
        sanitized: json.sanitized,
        ..Decoded::default()
    })
}

/// A log record's key. A log line has no identity of its own: the same line
/// sent twice is two lines. So the key is where the record was read: the
/// tenant, the source topic, partition and offset, the Kafka timestamp (a
/// recreated topic restarts its offsets, not its clock) and the record's
/// position in the message, each field length-prefixed or fixed-width so
/// that no two inputs run together. BLAKE3, cut to 128 bits: stable across
/// versions and platforms, and no producer can make two records collide.
pub fn record_id(tenant: &str, origin: &Origin<'_>, index: u64) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(b"spansink.log_record.v1");
    for text in [tenant, origin.topic] {
        h.update(&(text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    h.update(&origin.partition.to_be_bytes());
    h.update(&origin.offset.to_be_bytes());
    match origin.timestamp_ms {
        Some(ts) => h.update(&[1]).update(&ts.to_be_bytes()),
        None => h.update(&[0]),
    };
    h.update(&index.to_be_bytes());
    let mut id = [0; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    id
}

fn log_row(
    record: LogRecord,
    tenant: &Arc<str>,
    record_id: [u8; 16],
    resource: &ResourceColumns,
    scope: &ScopeColumns,
    window: &Window,
    json: &mut JsonWriter,
) -> Result<LogRow> {
    let LogRecord {
        time_unix_nano,
        observed_time_unix_nano,
        severity_number,
        severity_text,
        body,
        attributes,
        dropped_attributes_count,
        flags,
        trace_id,
        span_id,
        event_name,
    } = record;
    // OTLP: a record without an event time is known by when the collector saw it.
    let time_unix_nano = if time_unix_nano == 0 {
        window.check("observed_time_unix_nano", observed_time_unix_nano)?
    } else {
        window.check("time_unix_nano", time_unix_nano)?
    };
    Ok(LogRow {
        tenant_id: Arc::clone(tenant),
        record_id,
        time_unix_nano,
        observed_time_unix_nano: validate::stored_time(
            "observed_time_unix_nano",
            observed_time_unix_nano,
        )?,
        severity_number,
        severity_text: json.text(severity_text),
        body: json
            .value(body.as_ref())
            .map_err(|e| in_context(e, || "body".to_string()))?,
        attributes: json.attributes(&attributes)?,
        resource_attributes: Arc::clone(&resource.attributes),
        service_name: resource.service_name.clone(),
        scope_name: Arc::clone(&scope.name),
        scope_version: Arc::clone(&scope.version),
        flags,
        trace_id: validate::optional_id("trace_id", &trace_id)?,
        span_id: validate::optional_id("span_id", &span_id)?,
        event_name: json.text(event_name),
        dropped_attributes_count,
    })
}
