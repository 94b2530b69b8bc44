//! The shape of a trace: which services it crosses, which span calls which,
//! and when each runs. Apart from `spans`, which says what each span holds, so
//! that the call tree reads on its own.

use rand::seq::IndexedRandom;
use rand::Rng;

use crate::otlp::trace::v1::span::SpanKind;

use super::message::MessageBuilder;
use super::shop::{ENTRY_SERVICES, SERVICES};
use super::spans::Node;
use super::Generator;

pub(super) const TRACE_SPANS_MIN: usize = 3;
pub(super) const TRACE_SPANS_MAX: usize = 24;
/// Traces end up to this long before `now`.
const MAX_AGE_NS: u64 = 3_000_000_000;

impl Generator {
    /// Builds one trace of `size` spans into `out`.
    pub(super) fn build_trace(&mut self, size: usize, now_ns: u64, out: &mut MessageBuilder) {
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
    pub(super) fn request(&mut self, service: usize) -> HttpRequest {
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
    pub(super) fn child_window(&mut self, (start, end): (u64, u64)) -> (u64, u64) {
        let len = end.saturating_sub(start);
        let child_start = start + self.rng.random_range(0..=len / 2);
        let room = end.saturating_sub(child_start);
        let child_len = self.rng.random_range(room / 10..=room);
        (child_start, child_start + child_len)
    }
}

/// A trace being built.
pub(super) struct TraceCtx {
    pub(super) trace_id: [u8; 16],
    pub(super) trace_state: &'static str,
    /// The entry service first.
    services: Vec<usize>,
}

/// One HTTP request: the route template and the path it matched.
pub(super) struct HttpRequest {
    pub(super) method: &'static str,
    pub(super) route: &'static str,
    pub(super) path: String,
}
