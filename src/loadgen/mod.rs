//! Realistic synthetic OTLP traces: the traffic of `spansink loadgen`, `spansink
//! demo` and the integration tests.
//!
//! Each message holds whole traces of a small web shop: an HTTP request enters a
//! front service, which calls two or three back-end services over HTTP, and they
//! query their databases. Attributes follow the OpenTelemetry semantic conventions
//! and between them use every kind of `AnyValue`, so that a decoder is exercised
//! on everything it must store. The output depends only on the seed and on the
//! `now` given, so a failing run can be replayed exactly.

pub mod json;

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::otlp::common::v1::{
    any_value::Value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use crate::otlp::resource::v1::Resource;
use crate::otlp::trace::v1::span::{Event, Link, SpanKind};
use crate::otlp::trace::v1::status::StatusCode;
use crate::otlp::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use crate::otlp::ExportTraceServiceRequest;

/// The resource attribute that tags every span of one generator run.
pub const RUN_ID_ATTRIBUTE: &str = "loadgen.run_id";

/// Tenants and their relative share of the traffic, as in `acme:3,globex:1,initech`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMix(Vec<(String, u32)>);

impl TenantMix {
    /// The tenants and their weights, in the order given.
    pub fn entries(&self) -> &[(String, u32)] {
        &self.0
    }

    pub fn contains(&self, tenant: &str) -> bool {
        self.0.iter().any(|(t, _)| t == tenant)
    }

    fn total_weight(&self) -> u64 {
        self.0.iter().map(|(_, w)| u64::from(*w)).sum()
    }

    /// The tenant at `point` of the cumulative weights, `point < total_weight()`.
    fn at(&self, mut point: u64) -> &str {
        for (tenant, weight) in &self.0 {
            let weight = u64::from(*weight);
            if point < weight {
                return tenant;
            }
            point -= weight;
        }
        // Unreachable for a point below the total; the last tenant is a safe answer.
        self.0.last().map_or("", |(t, _)| t.as_str())
    }
}

impl FromStr for TenantMix {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut entries: Vec<(String, u32)> = Vec::new();
        for part in s.split(',').map(str::trim) {
            // Tenant ids cannot contain ':', so the last one separates the weight.
            let (tenant, weight) = match part.rsplit_once(':') {
                Some((t, w)) => (t, parse_weight(t, w)?),
                None => (part, 1),
            };
            crate::tenant::validate(tenant).map_err(|e| format!("{part:?}: {e}"))?;
            if entries.iter().any(|(t, _)| t == tenant) {
                return Err(format!("tenant {tenant:?} is listed twice"));
            }
            entries.push((tenant.to_string(), weight));
        }
        Ok(TenantMix(entries))
    }
}

fn parse_weight(tenant: &str, weight: &str) -> std::result::Result<u32, String> {
    match weight.trim().parse::<u32>() {
        Ok(0) => Err(format!(
            "tenant {tenant:?} has weight 0; leave it out instead"
        )),
        Ok(w) => Ok(w),
        Err(_) => Err(format!(
            "weight {weight:?} of tenant {tenant:?} is not a whole number from 1"
        )),
    }
}

impl fmt::Display for TenantMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (tenant, weight)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{tenant}:{weight}")?;
        }
        Ok(())
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    pub tenants: TenantMix,
    /// Spans in each message; whole traces are cut to fit.
    pub spans_per_message: usize,
    pub seed: u64,
    /// Written to every resource as `loadgen.run_id`, so that a run's spans can be counted.
    pub run_id: String,
    /// The share of spans with status ERROR, from 0 to 1.
    pub error_ratio: f64,
}

impl TrafficSpec {
    /// Checks the spec; errors name the command-line flag of the setting.
    pub fn validate(&self) -> Result<()> {
        if self.tenants.entries().is_empty() {
            return Err(Error::config("--tenants", "at least one tenant is needed"));
        }
        if self.spans_per_message == 0 {
            return Err(Error::config("--spans-per-message", "must be at least 1"));
        }
        if self.run_id.is_empty() {
            return Err(Error::config("--run-id", "is empty"));
        }
        if !(0.0..=1.0).contains(&self.error_ratio) {
            return Err(Error::config("--error-ratio", "must be between 0 and 1"));
        }
        Ok(())
    }
}

/// One Kafka message's worth of traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedMessage {
    pub tenant: String,
    /// The hex id of the message's first trace: every trace lives in exactly one
    /// message, so keying by it keeps a trace on one partition.
    pub key: Vec<u8>,
    pub request: ExportTraceServiceRequest,
    pub span_count: usize,
}

/// A seeded, reproducible source of OTLP trace messages.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    spec: TrafficSpec,
    total_weight: u64,
}

impl Generator {
    pub fn new(mut spec: TrafficSpec) -> Self {
        // Keep the generator total even for an unvalidated spec.
        spec.error_ratio = if spec.error_ratio.is_nan() {
            0.0
        } else {
            spec.error_ratio.clamp(0.0, 1.0)
        };
        spec.spans_per_message = spec.spans_per_message.max(1);
        let total_weight = spec.tenants.total_weight();
        Generator {
            rng: StdRng::seed_from_u64(spec.seed),
            spec,
            total_weight,
        }
    }

    pub fn spec(&self) -> &TrafficSpec {
        &self.spec
    }

    /// One message of `spec.spans_per_message` spans.
    pub fn next_message(&mut self, now: SystemTime) -> GeneratedMessage {
        self.next_message_of(self.spec.spans_per_message, now)
    }

    /// One message of exactly `spans` spans (at least one), so that a run can
    /// produce an exact total.
    pub fn next_message_of(&mut self, spans: usize, now: SystemTime) -> GeneratedMessage {
        let now_ns = unix_nanos(now);
        let tenant = self.pick_tenant();
        let mut batch = MessageBuilder::default();
        let mut left = spans.max(1);
        while left > 0 {
            let size = self
                .rng
                .random_range(TRACE_SPANS_MIN..=TRACE_SPANS_MAX)
                .min(left);
            self.build_trace(size, now_ns, &mut batch);
            left -= size;
        }
        let key = batch.first_trace.map(hex::encode).unwrap_or_default();
        let span_count = batch.span_count;
        GeneratedMessage {
            tenant,
            key: key.into_bytes(),
            request: self.finish(batch),
            span_count,
        }
    }

    fn pick_tenant(&mut self) -> String {
        if self.total_weight == 0 {
            return String::new();
        }
        let point = self.rng.random_range(0..self.total_weight);
        self.spec.tenants.at(point).to_string()
    }

    /// Builds one trace of `size` spans into `out`.
    fn build_trace(&mut self, size: usize, now_ns: u64, out: &mut MessageBuilder) {
        let trace = TraceCtx {
            trace_id: self.nonzero::<16>(),
            trace_state: if self.rng.random_bool(0.1) {
                "ot=th:0"
            } else {
                ""
            },
            services: self.pick_services(),
        };
        out.first_trace.get_or_insert(trace.trace_id);

        let end = now_ns.saturating_sub(self.rng.random_range(0..=MAX_AGE_NS));
        let start = end.saturating_sub(self.root_duration_ns());
        let root_service = trace.services[0];
        let request = self.request(root_service);
        let mut spans = vec![self.server_span(&trace, None, root_service, &request, (start, end))];
        let mut called = 1;
        while spans.len() < size {
            let parent = self.pick_parent(&spans);
            let room = size - spans.len();
            let wants_call = called < trace.services.len() || self.rng.random_bool(0.3);
            if room >= 2 && trace.services.len() > 1 && wants_call {
                let callee = if called < trace.services.len() {
                    called += 1;
                    trace.services[called - 1]
                } else {
                    // Any back-end but the caller itself.
                    let caller = spans[parent].service;
                    let others: Vec<usize> = trace.services[1..]
                        .iter()
                        .copied()
                        .filter(|&s| s != caller)
                        .collect();
                    others
                        .choose(&mut self.rng)
                        .copied()
                        .unwrap_or(trace.services[1])
                };
                let [client, server] = self.http_call(&trace, &spans[parent], callee);
                spans.push(client);
                spans.push(server);
            } else if SERVICES[spans[parent].service].db.is_some() && self.rng.random_bool(0.6) {
                let db = self.db_call(&trace, &spans[parent]);
                spans.push(db);
            } else {
                let internal = self.internal_span(&trace, &spans[parent]);
                spans.push(internal);
            }
        }
        for node in spans {
            out.push(node.service, node.span);
        }
    }

    /// The entry service first, then one to three distinct back-ends.
    fn pick_services(&mut self) -> Vec<usize> {
        let entry = self.rng.random_range(0..ENTRY_SERVICES);
        let backends = self.rng.random_range(1..=3);
        let mut services = vec![entry];
        services.extend(
            rand::seq::index::sample(&mut self.rng, SERVICES.len() - ENTRY_SERVICES, backends)
                .into_iter()
                .map(|i| i + ENTRY_SERVICES),
        );
        services
    }

    /// A span that can have children: a SERVER or INTERNAL span.
    fn pick_parent(&mut self, spans: &[Node]) -> usize {
        let candidates: Vec<usize> = spans
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind != SpanKind::Client)
            .map(|(i, _)| i)
            .collect();
        candidates.choose(&mut self.rng).copied().unwrap_or(0)
    }

    /// One of the service's endpoints, with a concrete path.
    fn request(&mut self, service: usize) -> HttpRequest {
        let (method, route) = SERVICES[service]
            .routes
            .choose(&mut self.rng)
            .copied()
            .unwrap_or(("GET", "/"));
        let id = self.rng.random_range(1..100_000u32).to_string();
        HttpRequest {
            method,
            route,
            path: route.replace("{id}", &id),
        }
    }

    /// Root spans last from 2 ms to about 800 ms, spread log-uniformly as latencies are.
    fn root_duration_ns(&mut self) -> u64 {
        let ms = 10f64.powf(self.rng.random_range(0.3..2.9));
        (ms * 1e6) as u64
    }

    /// A window inside the parent's, starting in its first half.
    fn child_window(&mut self, (start, end): (u64, u64)) -> (u64, u64) {
        let len = end.saturating_sub(start);
        let child_start = start + self.rng.random_range(0..=len / 2);
        let room = end.saturating_sub(child_start);
        let child_len = self.rng.random_range(room / 10..=room);
        (child_start, child_start + child_len)
    }

    fn server_span(
        &mut self,
        trace: &TraceCtx,
        parent: Option<[u8; 8]>,
        service: usize,
        request: &HttpRequest,
        window: (u64, u64),
    ) -> Node {
        let failed = self.fails();
        let status_code = self.http_status(failed);
        let HttpRequest {
            method,
            route,
            ref path,
        } = *request;
        let mut attributes = vec![
            kv("http.request.method", s(method)),
            kv("http.route", s(route)),
            kv("url.path", s(path)),
            kv("url.scheme", s("https")),
            kv("http.response.status_code", i(status_code)),
            kv("server.address", s(SERVICES[service].name)),
            kv("server.port", i(8080)),
            kv("client.address", s(&self.ip())),
            kv("network.protocol.version", s("1.1")),
            kv(
                "user_agent.original",
                s(USER_AGENTS
                    .choose(&mut self.rng)
                    .copied()
                    .unwrap_or("curl/8.5.0")),
            ),
            kv(
                "http.request.header.accept",
                array(&["application/json", "text/plain;q=0.5"]),
            ),
        ];
        if parent.is_none() {
            attributes.extend(self.root_attributes());
        }
        if failed {
            attributes.push(kv("error.type", s(&status_code.to_string())));
        }
        let span_id = self.nonzero::<8>();
        let span = self.span(
            trace,
            SpanParts {
                parent,
                span_id,
                kind: SpanKind::Server,
                name: format!("{method} {route}"),
                window,
                // A SERVER span under a CLIENT span has a remote parent (W3C flags bits 8 and 9).
                flags: if parent.is_some() {
                    FLAGS_REMOTE
                } else {
                    FLAGS_LOCAL
                },
                attributes,
                failed,
            },
        );
        Node::new(service, span)
    }

    /// Attributes only the root span carries: between them every other `AnyValue` kind.
    fn root_attributes(&mut self) -> Vec<KeyValue> {
        let digest: [u8; 12] = self.nonzero::<12>();
        let cents = self.rng.random_range(0..100_000u32);
        vec![
            kv("http.request.body.size", i(self.rng.random_range(0..4096))),
            kv("app.cart.total", d(f64::from(cents) / 100.0)),
            kv("app.user.authenticated", b(self.rng.random_bool(0.7))),
            kv(
                "app.request.digest",
                AnyValue {
                    value: Some(Value::BytesValue(digest.to_vec())),
                },
            ),
            kv(
                "app.feature_flags",
                AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![
                            kv("new_checkout", b(self.rng.random_bool(0.5))),
                            kv(
                                "variant",
                                s(["a", "b", "control"]
                                    .choose(&mut self.rng)
                                    .copied()
                                    .unwrap_or("a")),
                            ),
                            kv("rollout.percent", i(25)),
                        ],
                    })),
                },
            ),
        ]
    }

    /// An outgoing HTTP call: a CLIENT span in the caller and a SERVER span in the callee.
    fn http_call(&mut self, trace: &TraceCtx, parent: &Node, callee: usize) -> [Node; 2] {
        let request = self.request(callee);
        let HttpRequest {
            method,
            route,
            ref path,
        } = request;
        let window = self.child_window(parent.window);
        let server_window = self.child_window(window);
        let client_id = self.nonzero::<8>();
        let callee_name = SERVICES[callee].name;
        let server = self.server_span(trace, Some(client_id), callee, &request, server_window);
        // The caller sees the callee's failure.
        let server_failed = server
            .span
            .status
            .as_ref()
            .is_some_and(|st| st.code == StatusCode::Error as i32);
        let status_code = self.http_status(server_failed);
        let mut attributes = vec![
            kv("http.request.method", s(method)),
            kv("url.full", s(&format!("http://{callee_name}:8080{path}"))),
            kv("server.address", s(callee_name)),
            kv("server.port", i(8080)),
            kv("http.response.status_code", i(status_code)),
            kv("http.request.resend_count", i(0)),
        ];
        if server_failed {
            attributes.push(kv("error.type", s(&status_code.to_string())));
        }
        let client = self.span(
            trace,
            SpanParts {
                parent: Some(parent.span_id),
                span_id: client_id,
                kind: SpanKind::Client,
                name: format!("{method} {route}"),
                window,
                flags: FLAGS_LOCAL,
                attributes,
                failed: server_failed,
            },
        );
        [Node::new(parent.service, client), server]
    }

    fn db_call(&mut self, trace: &TraceCtx, parent: &Node) -> Node {
        let Some(db) = SERVICES[parent.service].db.as_ref() else {
            return self.internal_span(trace, parent);
        };
        let table = db.tables.choose(&mut self.rng).copied().unwrap_or("items");
        let (operation, query) = if self.rng.random_bool(0.8) {
            ("SELECT", format!("SELECT * FROM {table} WHERE id = $1"))
        } else {
            (
                "UPDATE",
                format!("UPDATE {table} SET updated_at = now() WHERE id = $1"),
            )
        };
        let failed = self.fails();
        let mut attributes = vec![
            kv("db.system.name", s(db.system)),
            kv("db.namespace", s(db.namespace)),
            kv("db.collection.name", s(table)),
            kv("db.operation.name", s(operation)),
            kv("db.query.text", s(&query)),
            kv(
                "server.address",
                s(&format!("{}-db", SERVICES[parent.service].name)),
            ),
            kv("server.port", i(db.port)),
            kv(
                "db.response.returned_rows",
                i(self.rng.random_range(0..200)),
            ),
        ];
        if failed {
            attributes.push(kv("error.type", s("timeout")));
        }
        let window = self.child_window(parent.window);
        let span_id = self.nonzero::<8>();
        let span = self.span(
            trace,
            SpanParts {
                parent: Some(parent.span_id),
                span_id,
                kind: SpanKind::Client,
                name: format!("{operation} {}.{table}", db.namespace),
                window,
                flags: FLAGS_LOCAL,
                attributes,
                failed,
            },
        );
        Node::new(parent.service, span)
    }

    fn internal_span(&mut self, trace: &TraceCtx, parent: &Node) -> Node {
        let name = INTERNAL_OPERATIONS
            .choose(&mut self.rng)
            .copied()
            .unwrap_or("work");
        let failed = self.fails();
        let attributes = vec![
            kv("code.function.name", s(name)),
            kv("app.items", i(self.rng.random_range(1..50))),
            kv("app.cache.hit", b(self.rng.random_bool(0.8))),
            kv("app.score", d(self.rng.random_range(0.0..1.0))),
        ];
        let window = self.child_window(parent.window);
        let span_id = self.nonzero::<8>();
        let mut span = self.span(
            trace,
            SpanParts {
                parent: Some(parent.span_id),
                span_id,
                kind: SpanKind::Internal,
                name: name.to_string(),
                window,
                flags: FLAGS_LOCAL,
                attributes,
                failed,
            },
        );
        if !failed && self.rng.random_bool(0.1) {
            span.events.push(Event {
                time_unix_nano: window.0 + (window.1 - window.0) / 2,
                name: "cache.miss".into(),
                attributes: vec![kv(
                    "app.cache.key",
                    s(&format!("item:{}", self.rng.random_range(1..10_000))),
                )],
                dropped_attributes_count: 0,
            });
        }
        Node::new(parent.service, span)
    }

    /// The parts common to every span: ids, timing, status, the exception event of a
    /// failed span, the occasional link and dropped-attribute count.
    fn span(&mut self, trace: &TraceCtx, parts: SpanParts) -> Span {
        let SpanParts {
            parent,
            span_id,
            kind,
            name,
            window: (start, end),
            flags,
            attributes,
            failed,
        } = parts;
        let mut span = Span {
            trace_id: trace.trace_id.to_vec(),
            span_id: span_id.to_vec(),
            trace_state: trace.trace_state.to_string(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags,
            name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            dropped_attributes_count: 0,
            events: Vec::new(),
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            status: None,
        };
        if failed {
            let (kind_name, message) = EXCEPTIONS
                .choose(&mut self.rng)
                .copied()
                .unwrap_or(("Error", "failed"));
            span.status = Some(Status {
                message: message.to_string(),
                code: StatusCode::Error as i32,
            });
            span.events.push(exception_event(end, kind_name, message));
        } else if self.rng.random_bool(0.05) {
            span.status = Some(Status {
                message: String::new(),
                code: StatusCode::Ok as i32,
            });
        }
        if self.rng.random_bool(0.05) {
            span.links.push(Link {
                trace_id: self.nonzero::<16>().to_vec(),
                span_id: self.nonzero::<8>().to_vec(),
                trace_state: "ot=th:0".into(),
                attributes: vec![kv("app.link.reason", s("batch"))],
                dropped_attributes_count: 0,
                flags: FLAGS_REMOTE,
            });
        }
        if self.rng.random_bool(0.02) {
            span.dropped_attributes_count = self.rng.random_range(1..5);
        }
        span
    }

    fn fails(&mut self) -> bool {
        self.rng.random_bool(self.spec.error_ratio)
    }

    fn http_status(&mut self, failed: bool) -> i64 {
        let choices: &[i64] = if failed {
            &[500, 502, 503, 504]
        } else {
            &[200, 200, 200, 201, 204, 404]
        };
        choices.choose(&mut self.rng).copied().unwrap_or(200)
    }

    fn ip(&mut self) -> String {
        format!(
            "10.{}.{}.{}",
            self.rng.random_range(0..256),
            self.rng.random_range(0..256),
            self.rng.random_range(1..255)
        )
    }

    /// Random bytes that are not all zero: OTLP reserves all-zero ids as invalid.
    fn nonzero<const N: usize>(&mut self) -> [u8; N] {
        let mut id = [0u8; N];
        while id.iter().all(|&b| b == 0) {
            self.rng.fill(&mut id[..]);
        }
        id
    }

    /// Groups the message's spans into one resource per service, in order of appearance.
    fn finish(&mut self, batch: MessageBuilder) -> ExportTraceServiceRequest {
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

fn exception_event(at: u64, kind: &str, message: &str) -> Event {
    Event {
        time_unix_nano: at,
        name: "exception".into(),
        attributes: vec![
            kv("exception.type", s(kind)),
            kv("exception.message", s(message)),
            kv(
                "exception.stacktrace",
                s(&format!("{kind}: {message}\n    at handle (server.js:42:13)\n    at process (router.js:118:5)")),
            ),
        ],
        dropped_attributes_count: 0,
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A trace being built.
struct TraceCtx {
    trace_id: [u8; 16],
    trace_state: &'static str,
    /// The entry service first.
    services: Vec<usize>,
}

/// One HTTP request: the route template and the path it matched.
struct HttpRequest {
    method: &'static str,
    route: &'static str,
    path: String,
}

/// What differs between the kinds of span.
struct SpanParts {
    parent: Option<[u8; 8]>,
    span_id: [u8; 8],
    kind: SpanKind,
    name: String,
    window: (u64, u64),
    flags: u32,
    attributes: Vec<KeyValue>,
    failed: bool,
}

/// A span and what its children need to know about it.
struct Node {
    service: usize,
    span_id: [u8; 8],
    kind: SpanKind,
    window: (u64, u64),
    span: Span,
}

impl Node {
    fn new(service: usize, span: Span) -> Node {
        let mut span_id = [0u8; 8];
        span_id.copy_from_slice(&span.span_id);
        Node {
            service,
            span_id,
            kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
            window: (span.start_time_unix_nano, span.end_time_unix_nano),
            span,
        }
    }
}

/// The spans of one message, grouped by service.
#[derive(Default)]
struct MessageBuilder {
    first_trace: Option<[u8; 16]>,
    by_service: Vec<(usize, Vec<Span>)>,
    span_count: usize,
}

impl MessageBuilder {
    fn push(&mut self, service: usize, span: Span) {
        self.span_count += 1;
        match self.by_service.iter_mut().find(|(s, _)| *s == service) {
            Some((_, spans)) => spans.push(span),
            None => self.by_service.push((service, vec![span])),
        }
    }
}

const TRACE_SPANS_MIN: usize = 3;
const TRACE_SPANS_MAX: usize = 24;
/// Traces end up to this long before `now`.
const MAX_AGE_NS: u64 = 3_000_000_000;
/// W3C trace flags: sampled, plus "parent is local" known (bit 8).
const FLAGS_LOCAL: u32 = 0x101;
/// W3C trace flags: sampled, with a remote parent (bits 8 and 9).
const FLAGS_REMOTE: u32 = 0x301;
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.30.0";

struct Service {
    name: &'static str,
    version: &'static str,
    language: &'static str,
    routes: &'static [(&'static str, &'static str)],
    db: Option<Db>,
}

struct Db {
    system: &'static str,
    namespace: &'static str,
    port: i64,
    tables: &'static [&'static str],
}

/// The first `ENTRY_SERVICES` services receive the outside requests.
const ENTRY_SERVICES: usize = 2;
const SERVICES: &[Service] = &[
    Service {
        name: "frontend",
        version: "2.4.1",
        language: "nodejs",
        routes: &[
            ("GET", "/"),
            ("GET", "/product/{id}"),
            ("POST", "/cart"),
            ("POST", "/checkout"),
        ],
        db: None,
    },
    Service {
        name: "api-gateway",
        version: "1.9.0",
        language: "go",
        routes: &[
            ("GET", "/api/v1/products"),
            ("GET", "/api/v1/orders/{id}"),
            ("POST", "/api/v1/orders"),
        ],
        db: None,
    },
    Service {
        name: "cart",
        version: "3.0.2",
        language: "dotnet",
        routes: &[("GET", "/cart/{id}"), ("POST", "/cart/{id}/items")],
        db: Some(Db {
            system: "redis",
            namespace: "0",
            port: 6379,
            tables: &["carts"],
        }),
    },
    Service {
        name: "checkout",
        version: "1.12.0",
        language: "go",
        routes: &[("POST", "/checkout"), ("GET", "/checkout/{id}")],
        db: Some(Db {
            system: "postgresql",
            namespace: "orders",
            port: 5432,
            tables: &["orders", "order_items"],
        }),
    },
    Service {
        name: "payment",
        version: "0.8.5",
        language: "java",
        routes: &[("POST", "/charge"), ("POST", "/refund")],
        db: Some(Db {
            system: "postgresql",
            namespace: "payments",
            port: 5432,
            tables: &["charges", "ledger"],
        }),
    },
    Service {
        name: "inventory",
        version: "4.1.0",
        language: "rust",
        routes: &[("GET", "/stock/{id}"), ("POST", "/reserve")],
        db: Some(Db {
            system: "postgresql",
            namespace: "inventory",
            port: 5432,
            tables: &["items", "reservations"],
        }),
    },
    Service {
        name: "users",
        version: "2.0.0",
        language: "python",
        routes: &[("GET", "/users/{id}"), ("GET", "/session")],
        db: Some(Db {
            system: "mysql",
            namespace: "accounts",
            port: 3306,
            tables: &["users", "sessions"],
        }),
    },
    Service {
        name: "shipping",
        version: "1.3.7",
        language: "python",
        routes: &[("POST", "/quote"), ("GET", "/track/{id}")],
        db: Some(Db {
            system: "mongodb",
            namespace: "shipping",
            port: 27017,
            tables: &["shipments"],
        }),
    },
];

const INTERNAL_OPERATIONS: &[&str] = &[
    "render",
    "validate_cart",
    "compute_price",
    "serialize",
    "authorize",
    "apply_discounts",
];

const EXCEPTIONS: &[(&str, &str)] = &[
    ("java.net.SocketTimeoutException", "Read timed out"),
    ("ConnectionResetError", "connection reset by peer"),
    ("TimeoutError", "deadline exceeded after 2s"),
    ("InsufficientFunds", "card declined"),
];

const USER_AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15",
    "okhttp/4.12.0",
];

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
    }
}

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.to_string())),
    }
}

fn i(v: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(v)),
    }
}

fn d(v: f64) -> AnyValue {
    AnyValue {
        value: Some(Value::DoubleValue(v)),
    }
}

fn b(v: bool) -> AnyValue {
    AnyValue {
        value: Some(Value::BoolValue(v)),
    }
}

fn array(items: &[&str]) -> AnyValue {
    AnyValue {
        value: Some(Value::ArrayValue(ArrayValue {
            values: items.iter().map(|v| s(v)).collect(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use super::*;

    fn spec(seed: u64, spans_per_message: usize, error_ratio: f64) -> TrafficSpec {
        TrafficSpec {
            tenants: "acme:3,globex:1,initech".parse().unwrap(),
            spans_per_message,
            seed,
            run_id: "run-1".into(),
            error_ratio,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn spans(req: &ExportTraceServiceRequest) -> impl Iterator<Item = &Span> {
        req.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
    }

    fn value_kind(v: &AnyValue) -> &'static str {
        match &v.value {
            Some(Value::StringValue(_)) => "string",
            Some(Value::BoolValue(_)) => "bool",
            Some(Value::IntValue(_)) => "int",
            Some(Value::DoubleValue(_)) => "double",
            Some(Value::ArrayValue(_)) => "array",
            Some(Value::KvlistValue(_)) => "kvlist",
            Some(Value::BytesValue(_)) => "bytes",
            None => "empty",
        }
    }

    #[test]
    fn tenant_mix_parses_weights_and_refuses_bad_entries() {
        let mix: TenantMix = "acme:3, globex:1,initech".parse().unwrap();
        assert_eq!(
            mix.entries(),
            &[
                ("acme".into(), 3),
                ("globex".into(), 1),
                ("initech".into(), 1)
            ]
        );
        assert_eq!(mix.to_string(), "acme:3,globex:1,initech:1");
        for bad in [
            "",
            "acme,",
            "a/b",
            "acme:0",
            "acme:x",
            "acme:-1",
            "acme,acme:2",
            "..",
        ] {
            assert!(bad.parse::<TenantMix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenants_follow_their_weights() {
        let mut g = Generator::new(spec(1, 1, 0.0));
        let mut seen: HashMap<String, u32> = HashMap::new();
        for _ in 0..5000 {
            *seen.entry(g.next_message(now()).tenant).or_default() += 1;
        }
        // Expected shares 3:1:1 of 5000 = 3000, 1000, 1000.
        assert!((2800..3200).contains(&seen["acme"]), "{seen:?}");
        assert!((850..1150).contains(&seen["globex"]), "{seen:?}");
        assert!((850..1150).contains(&seen["initech"]), "{seen:?}");
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let mut a = Generator::new(spec(7, 50, 0.1));
        let mut b = Generator::new(spec(7, 50, 0.1));
        let mut c = Generator::new(spec(8, 50, 0.1));
        let (ma, mb, mc) = (
            a.next_message(now()),
            b.next_message(now()),
            c.next_message(now()),
        );
        assert_eq!(ma, mb);
        assert_ne!(ma.request, mc.request);
    }

    #[test]
    fn messages_hold_exactly_the_spans_asked_for() {
        let mut g = Generator::new(spec(3, 50, 0.0));
        for n in [1, 2, 3, 17, 50, 333] {
            let m = g.next_message_of(n, now());
            assert_eq!(m.span_count, n);
            assert_eq!(spans(&m.request).count(), n);
        }
        assert_eq!(g.next_message(now()).span_count, 50);
    }

    #[test]
    fn traces_are_well_formed() {
        let mut g = Generator::new(spec(11, 200, 0.1));
        let now_ns = unix_nanos(now());
        for _ in 0..20 {
            let m = g.next_message(now());
            let all: Vec<&Span> = spans(&m.request).collect();
            let by_id: HashMap<&[u8], &Span> =
                all.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
            assert_eq!(by_id.len(), all.len(), "span ids are unique");
            let first_trace = hex::encode(&all[0].trace_id);
            assert_eq!(m.key, first_trace.into_bytes());
            let mut roots = HashSet::new();
            for s in &all {
                assert_eq!(s.trace_id.len(), 16);
                assert_eq!(s.span_id.len(), 8);
                assert!(s.start_time_unix_nano <= s.end_time_unix_nano);
                assert!(s.end_time_unix_nano <= now_ns);
                assert!(s.start_time_unix_nano > now_ns - 5_000_000_000);
                if s.parent_span_id.is_empty() {
                    assert_eq!(s.kind, SpanKind::Server as i32);
                    assert!(roots.insert(s.trace_id.clone()), "one root per trace");
                    continue;
                }
                let parent = by_id[s.parent_span_id.as_slice()];
                assert_eq!(parent.trace_id, s.trace_id);
                assert!(parent.start_time_unix_nano <= s.start_time_unix_nano);
                assert!(s.end_time_unix_nano <= parent.end_time_unix_nano);
                if s.kind == SpanKind::Server as i32 {
                    assert_eq!(parent.kind, SpanKind::Client as i32);
                }
            }
            let traces: HashSet<&Vec<u8>> = all.iter().map(|s| &s.trace_id).collect();
            assert_eq!(traces.len(), roots.len());
        }
    }

    #[test]
    fn traces_cross_services_and_resources_carry_the_run_id() {
        let mut g = Generator::new(spec(5, 100, 0.0));
        let m = g.next_message(now());
        assert!(m.request.resource_spans.len() >= 2);
        let mut services = HashSet::new();
        for rs in &m.request.resource_spans {
            let attrs = &rs.resource.as_ref().unwrap().attributes;
            let get = |k: &str| {
                attrs
                    .iter()
                    .find(|kv| kv.key == k)
                    .and_then(|kv| kv.value.clone())
            };
            assert_eq!(get(RUN_ID_ATTRIBUTE), Some(s("run-1")));
            let Some(AnyValue {
                value: Some(Value::StringValue(name)),
            }) = get("service.name")
            else {
                panic!("no service.name");
            };
            assert!(services.insert(name), "one resource per service");
        }
    }

    #[test]
    fn every_value_kind_appears_in_every_message() {
        let mut g = Generator::new(spec(9, 5, 0.0));
        for _ in 0..50 {
            let m = g.next_message(now());
            let kinds: HashSet<&str> = spans(&m.request)
                .flat_map(|s| &s.attributes)
                .filter_map(|kv| kv.value.as_ref())
                .map(value_kind)
                .collect();
            for want in [
                "string", "bool", "int", "double", "array", "kvlist", "bytes",
            ] {
                assert!(kinds.contains(want), "{want} missing from {kinds:?}");
            }
        }
    }

    #[test]
    fn error_ratio_sets_error_status_with_an_exception_event() {
        let mut none = Generator::new(spec(2, 500, 0.0));
        let m = none.next_message(now());
        assert!(spans(&m.request).all(|s| s.status.as_ref().is_none_or(|st| st.code != 2)));

        let mut all = Generator::new(spec(2, 500, 1.0));
        let m = all.next_message(now());
        for s in spans(&m.request) {
            assert_eq!(
                s.status.as_ref().map(|st| st.code),
                Some(StatusCode::Error as i32)
            );
            assert!(s.events.iter().any(|e| e.name == "exception"));
        }

        let mut some = Generator::new(spec(2, 5000, 0.2));
        let m = some.next_message(now());
        let errors = spans(&m.request)
            .filter(|s| s.status.as_ref().is_some_and(|st| st.code == 2))
            .count();
        // A call's CLIENT span fails with its callee rather than on its own draw,
        // so the share stays at the ratio.
        assert!((850..1150).contains(&errors), "{errors}");
    }

    #[test]
    fn links_and_events_appear() {
        let mut g = Generator::new(spec(4, 2000, 0.05));
        let m = g.next_message(now());
        assert!(spans(&m.request).any(|s| !s.links.is_empty()));
        assert!(spans(&m.request).any(|s| s.events.iter().any(|e| e.name == "cache.miss")));
    }

    #[test]
    fn spec_validation_names_the_flag() {
        let mut bad = spec(1, 0, 0.0);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--spans-per-message"));
        bad = spec(1, 1, f64::NAN);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--error-ratio"));
        // An unvalidated spec still generates.
        let mut g = Generator::new(bad);
        assert_eq!(g.next_message(now()).span_count, 1);
    }
}
