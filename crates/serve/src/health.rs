//! `GET /health` (liveness), `GET /health/startup`, `GET /health/ready` (503 with a JSON body
//! naming what is not usable) and `GET /metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use ymera_common::health::Health;

#[derive(Clone)]
struct HealthState {
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
}

/// The health and metrics routes.
pub fn health_router(health: Arc<Health>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/health", get(live))
        .route("/health/startup", get(startup))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(HealthState { health, metrics })
}

async fn live() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

async fn startup(State(s): State<HealthState>) -> Response {
    if s.health.started() {
        (StatusCode::OK, axum::Json(json!({"status": "started"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "starting"})),
        )
            .into_response()
    }
}

async fn ready(State(s): State<HealthState>) -> Response {
    let components = s.health.components();
    let not_ready: serde_json::Map<String, serde_json::Value> = components
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|why| (k.clone(), json!(why))))
        .collect();
    if !s.health.started() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "starting", "not_ready": not_ready})),
        )
            .into_response();
    }
    if not_ready.is_empty() {
        (
            StatusCode::OK,
            axum::Json(
                json!({"status": "ready", "components": components.keys().collect::<Vec<_>>()}),
            ),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "not_ready": not_ready})),
        )
            .into_response()
    }
}

/// The process's own figures (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_threads`, ...), read from /proc when
/// `/metrics` is scraped.
fn collect_process_metrics() {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR
        .get_or_init(|| {
            let c = metrics_process::Collector::default();
            c.describe();
            c
        })
        .collect();
}

async fn render_metrics(State(s): State<HealthState>) -> Response {
    match &s.metrics {
        Some(h) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
            collect_process_metrics();
            h.render()
        })
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "metrics are not enabled"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn probes_follow_health_state() {
        let health = Arc::new(Health::default());
        let router = health_router(health.clone(), None);
        assert_eq!(get(&router, "/health").await.0, StatusCode::OK);
        assert_eq!(
            get(&router, "/health/startup").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_started();
        health.set(
            "pipeline:tasks",
            Some("waiting for a partition assignment".into()),
        );
        assert_eq!(get(&router, "/health/startup").await.0, StatusCode::OK);
        let (status, body) = get(&router, "/health/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body["not_ready"]["pipeline:tasks"],
            "waiting for a partition assignment"
        );
        health.set("pipeline:tasks", None);
        assert_eq!(get(&router, "/health/ready").await.0, StatusCode::OK);
    }

    #[test]
    fn metrics_carry_the_process_own_figures() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let text = metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let router = health_router(Arc::new(Health::default()), Some(handle));
                let resp = router
                    .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(body.to_vec()).unwrap()
            })
        });
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_threads",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(name) && !l.starts_with('#'))
                .unwrap_or_else(|| panic!("no {name}: {text}"));
            let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(value > 0.0 || name == "process_cpu_seconds_total", "{line}");
        }
    }
}
