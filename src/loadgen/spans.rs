//! What each kind of span says: HTTP server and client, database call and
//! internal work, with their semantic-convention attributes, and what every
//! span shares. Apart from `trace`, which decides where a span sits.

use rand::seq::IndexedRandom;
use rand::Rng;

use crate::otlp::common::v1::{any_value::Value, AnyValue, KeyValue, KeyValueList};
use crate::otlp::trace::v1::span::{Event, Link, SpanKind};
use crate::otlp::trace::v1::status::StatusCode;
use crate::otlp::trace::v1::{Span, Status};

use super::attrs::{array, b, d, i, kv, s};
use super::shop::{EXCEPTIONS, INTERNAL_OPERATIONS, SERVICES, USER_AGENTS};
use super::trace::{HttpRequest, TraceCtx};
use super::Generator;

/// W3C trace flags: sampled, plus "parent is local" known (bit 8).
const FLAGS_LOCAL: u32 = 0x101;
/// W3C trace flags: sampled, with a remote parent (bits 8 and 9).
const FLAGS_REMOTE: u32 = 0x301;

impl Generator {
    pub(super) fn server_span(
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
    pub(super) fn http_call(
        &mut self,
        trace: &TraceCtx,
        parent: &Node,
        callee: usize,
    ) -> [Node; 2] {
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

    pub(super) fn db_call(&mut self, trace: &TraceCtx, parent: &Node) -> Node {
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

    pub(super) fn internal_span(&mut self, trace: &TraceCtx, parent: &Node) -> Node {
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
pub(super) struct Node {
    pub(super) service: usize,
    span_id: [u8; 8],
    pub(super) kind: SpanKind,
    window: (u64, u64),
    pub(super) span: Span,
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
