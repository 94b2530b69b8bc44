//! A message's spans grouped into the export request, one resource a service
//! with the attributes an SDK would send. The one part that knows the
//! request's layout.

use rand::Rng;

use crate::otlp::common::v1::InstrumentationScope;
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span};
use crate::otlp::ExportTraceServiceRequest;

use super::attrs::{i, kv, s};
use super::shop::SERVICES;
use super::{Generator, RUN_ID_ATTRIBUTE};

const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.30.0";

/// The spans of one message, grouped by service.
#[derive(Default)]
pub(super) struct MessageBuilder {
    pub(super) first_trace: Option<[u8; 16]>,
    by_service: Vec<(usize, Vec<Span>)>,
    pub(super) span_count: usize,
}

impl MessageBuilder {
    pub(super) fn push(&mut self, service: usize, span: Span) {
        self.span_count += 1;
        match self.by_service.iter_mut().find(|(s, _)| *s == service) {
            Some((_, spans)) => spans.push(span),
            None => self.by_service.push((service, vec![span])),
        }
    }
}

impl Generator {
    /// Groups the message's spans into one resource per service, in order of appearance.
    pub(super) fn finish(&mut self, batch: MessageBuilder) -> ExportTraceServiceRequest {
        let resource_spans = batch
            .by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(self.resource(service)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "spansink.loadgen".into(),
                        version: crate::VERSION.into(),
                        attributes: Vec::new(),
                        dropped_attributes_count: 0,
                    }),
                    spans,
                    schema_url: SCHEMA_URL.into(),
                }],
                schema_url: SCHEMA_URL.into(),
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }

    fn resource(&mut self, service: usize) -> Resource {
        let svc = &SERVICES[service];
        let replica: usize = self.rng.random_range(0..3);
        Resource {
            attributes: vec![
                kv("service.name", s(svc.name)),
                kv("service.namespace", s("shop")),
                kv("service.version", s(svc.version)),
                kv("service.instance.id", s(&format!("{}-{replica}", svc.name))),
                kv("deployment.environment.name", s("loadgen")),
                kv("host.name", s(&format!("node-{}", (service + replica) % 4))),
                kv("process.pid", i(1000 + 7 * (service * 3 + replica) as i64)),
                kv("telemetry.sdk.name", s("opentelemetry")),
                kv("telemetry.sdk.language", s(svc.language)),
                kv("telemetry.sdk.version", s("1.30.0")),
                kv(RUN_ID_ATTRIBUTE, s(&self.spec.run_id)),
            ],
            dropped_attributes_count: 0,
        }
    }
}
