//! Prometheus metrics, served at `GET /metrics` on TYK_PLUGIN_METRICS_LISTEN in Prometheus's
//! text format. Every label value comes from a fixed set written here (never a hook name, an API
//! id or anything else a client sends), so no client can make the number of series grow.
//!
//! Recording is atomic counters behind read locks; the endpoint runs on its own thread and only
//! reads them, so a scrape never holds up a call.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::proto::HookType;

pub struct Metrics {
    registry: Registry,
    calls: IntCounterVec,
    handling: HistogramVec,
    in_flight: IntGauge,
    received_bytes: Histogram,
    decisions: IntCounterVec,
    keys: IntGauge,
    reloads: IntCounterVec,
    events: IntCounterVec,
}

/// The process's metrics, made on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::new().expect("the metrics' names, labels and buckets are valid"))
}

impl Metrics {
    fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
            let counters = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(counters.clone()))?;
            Ok(counters)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let calls = counters(
            "tyk_plugin_calls_total",
            "Calls answered, by gRPC method, hook type and gRPC status code.",
            &["method", "hook", "code"],
        )?;
        // 10 µs to 10 s, doubling.
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "tyk_plugin_handling_seconds",
                "Time from a Dispatch call's arrival to its reply, waiting for a worker included, by hook type.",
            )
            .buckets(exponential_buckets(0.000_01, 2.0, 21)?),
            &["hook"],
        )?;
        registry.register(Box::new(handling.clone()))?;
        let in_flight = gauge("tyk_plugin_calls_in_flight", "Dispatch calls received and not yet answered.")?;
        // 256 bytes to 64 MiB, by fours.
        let received_bytes = Histogram::with_opts(
            HistogramOpts::new("tyk_plugin_received_message_bytes", "Size of each Dispatch call's message.")
                .buckets(exponential_buckets(256.0, 4.0, 10)?),
        )?;
        registry.register(Box::new(received_bytes.clone()))?;
        let decisions = counters(
            "tyk_plugin_auth_decisions_total",
            "CustomKeyCheck decisions, by outcome and reason class.",
            &["outcome", "reason"],
        )?;
        let keys = gauge("tyk_plugin_keys_loaded", "Keys the HMAC check accepts.")?;
        let reloads = counters("tyk_plugin_key_reloads_total", "Keys file reloads (SIGHUP), by result.", &["result"])?;
        let events = counters(
            "tyk_plugin_events_total",
            "DispatchEvent calls by event type (other: a type not listed).",
            &["event"],
        )?;
        // A gauge at 1 with the version as its label, Prometheus's usual form of build information.
        let build = IntGaugeVec::new(Opts::new("tyk_plugin_build_info", "The plugin's version."), &["version"])?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build))?;
        // Resident memory, CPU, open descriptors, start time: process_* as Prometheus names them.
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        Ok(Metrics { registry, calls, handling, in_flight, received_bytes, decisions, keys, reloads, events })
    }

    /// A Dispatch call has arrived: `bytes` long.
    pub fn received(&self, bytes: usize) {
        self.in_flight.inc();
        self.received_bytes.observe(bytes as f64);
    }

    /// A Dispatch call is answered, `took` after it arrived.
    pub fn answered(&self, hook: Option<HookType>, code: grpcio::RpcStatusCode, took: Duration) {
        self.in_flight.dec();
        let hook = hook_label(hook);
        self.calls.with_label_values(&["Dispatch", hook, code_label(code)]).inc();
        self.handling.with_label_values(&[hook]).observe(took.as_secs_f64());
    }

    /// A DispatchEvent call is answered.
    pub fn event(&self, event_type: Option<&str>, code: grpcio::RpcStatusCode) {
        self.events.with_label_values(&[event_label(event_type)]).inc();
        self.calls.with_label_values(&["DispatchEvent", "none", code_label(code)]).inc();
    }

    /// A CustomKeyCheck decision: `status` 0 for accepted, else 400 or 401 with its reason class.
    pub fn decision(&self, status: i32, reason: &'static str) {
        let outcome = match status {
            0 => "accepted",
            400 => "refused_400",
            _ => "refused_401",
        };
        self.decisions.with_label_values(&[outcome, reason]).inc();
    }

    pub fn keys_loaded(&self, count: usize) {
        self.keys.set(count as i64);
    }

    pub fn key_reload(&self, succeeded: bool) {
        self.reloads.with_label_values(&[if succeeded { "ok" } else { "failed" }]).inc();
    }

    /// Every metric, in Prometheus's text format.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = Vec::new();
        // Writing to a Vec cannot fail, and the metrics here are well-formed.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        text
    }
}

fn hook_label(hook: Option<HookType>) -> &'static str {
    match hook {
        Some(HookType::Unknown) => "Unknown",
        Some(HookType::Pre) => "Pre",
        Some(HookType::Post) => "Post",
        Some(HookType::PostKeyAuth) => "PostKeyAuth",
        Some(HookType::CustomKeyCheck) => "CustomKeyCheck",
        Some(HookType::Response) => "Response",
        None => "other",
    }
}

fn code_label(code: grpcio::RpcStatusCode) -> &'static str {
    use grpcio::RpcStatusCode as Code;
    match code {
        Code::OK => "OK",
        Code::CANCELLED => "CANCELLED",
        Code::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        Code::DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
        Code::RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
        Code::INTERNAL => "INTERNAL",
        Code::UNAVAILABLE => "UNAVAILABLE",
        _ => "OTHER",
    }
}

/// Tyk's event types (the gateway's event names); anything else counts as `other`.
const EVENT_TYPES: [&str; 14] = [
    "AuthFailure",
    "KeyExpired",
    "QuotaExceeded",
    "RatelimitExceeded",
    "BreakerTriggered",
    "BreakerTripped",
    "BreakerReset",
    "HostDown",
    "HostUp",
    "KeyCreated",
    "KeyUpdated",
    "KeyDeleted",
    "TokenCreated",
    "VersionFailure",
];

fn event_label(event_type: Option<&str>) -> &'static str {
    event_type.and_then(|name| EVENT_TYPES.into_iter().find(|known| *known == name)).unwrap_or("other")
}

/// Serves `GET /metrics` on `address` from a thread of its own; anything else gets 404.
pub fn serve(address: &str) -> Result<(), String> {
    let server = tiny_http::Server::http(address)
        .map_err(|error| format!("TYK_PLUGIN_METRICS_LISTEN: cannot listen on {address}: {error}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or_default();
                let response = match (request.method(), path) {
                    (tiny_http::Method::Get, "/metrics") => {
                        let content_type =
                            tiny_http::Header::from_bytes("Content-Type", TextEncoder::new().format_type())
                                .expect("a valid header");
                        tiny_http::Response::from_data(metrics().encode()).with_header(content_type)
                    }
                    _ => tiny_http::Response::from_string("404 page not found\n").with_status_code(404),
                };
                let _ = request.respond(response);
            }
        })
        .map_err(|error| format!("cannot start the metrics thread: {error}"))?;
    Ok(())
}
