//! Request ids and the access log: every request gets an id (the caller's `x-request-id`
//! when it sends a sane one, else a new random one), echoed in the response header and
//! carried by every log line written while the request is handled.
//!
//! Traces: the request's span is the root of one trace, or a child of the caller's W3C
//! `traceparent` when it sends one; its own `traceparent` goes back in the response, so a
//! caller can find the request in its tracing backend. Exported only when
//! `log.otlp_endpoint` is set (cli `init_logging`); otherwise no context is made.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use rand::Rng;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const HEADER: &str = "x-request-id";

fn new_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// The middleware (outermost layer of `ymera serve`).
pub async fn access_log(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(new_id);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(req.headers()))
    });
    let _ = span.set_parent(parent);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HEADER, v);
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(
            &context,
            &mut opentelemetry_http::HeaderInjector(resp.headers_mut()),
        )
    });
    let status = resp.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if path.starts_with("/health") {
            tracing::debug!(status, ms, "request");
        } else {
            tracing::info!(status, ms, "request");
        }
    });
    resp
}
