//! ymera's HTTP routes: health probes and `/metrics` (mounted by `ymera run` and `ymera
//! serve`), and the API of `ymera serve` — predictions (V1 and the Open Inference
//! Protocol V2), the model registry, and analyst SQL — behind the credentials and policy
//! of [`auth`].

pub mod access;
pub mod alerts;
pub mod anomaly;
pub mod auth;
pub mod autoscale;
pub mod client;
pub mod health;
pub mod models;
pub mod openapi;
pub mod sql;
pub mod v2;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::PrometheusHandle;
use ymera_common::health::Health;

pub use health::health_router;

/// What the API's handlers share.
#[derive(Clone)]
pub struct AppState {
    pub models: Arc<models::ModelStore>,
    pub auth: Arc<auth::Auth>,
    pub sql: Option<sql::SqlService>,
    pub health: Arc<Health>,
    /// The autoscaler's forecasts (None: no lake to read metric events from).
    pub autoscale: Option<Arc<autoscale::Autoscaler>>,
    /// The alerts API (None: no lake or warehouse to read them from).
    pub alerts: Option<Arc<alerts::AlertService>>,
}

/// The whole API of `ymera serve`, unprotected: [`serve_router`] adds the credentials.
/// The route templates are those of [`auth::POLICY`].
pub fn api_router(state: AppState, metrics: Option<PrometheusHandle>) -> Router {
    let health = state.health.clone();
    Router::new()
        .route("/v2", get(v2::server_metadata))
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(v2::version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(v2::version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(v2::infer_version),
        )
        .route("/v1/models", get(models::list_models))
        .route(
            "/v1/models/{name}",
            get(models::show_model).post(models::predict),
        )
        .route("/v1/models/{name}/aliases/{alias}", put(models::put_alias))
        .route(
            "/v1/models/{name}/aliases/{alias}/history",
            get(models::alias_history),
        )
        .route("/v1/sql", post(sql::post_sql))
        .route(
            "/v1/autoscale/{service}/forecast",
            get(autoscale::get_forecast),
        )
        .route("/v1/anomaly/detect", post(anomaly::detect))
        .route("/openapi.json", get(openapi::get_openapi))
        .route("/v1/alerts", get(alerts::list_alerts))
        .route("/v1/alerts/{id}/acknowledge", post(alerts::acknowledge))
        .route("/v1/alerts/{id}/resolve", post(alerts::resolve))
        .with_state(state)
        .merge(health_router(health, metrics))
}

/// The API with credentials, the route × role policy, rate limits, request limits, and
/// request ids with an access log line per request.
pub fn serve_router(
    state: AppState,
    metrics: Option<PrometheusHandle>,
    limits: auth::ServeLimits,
) -> Router {
    let auth = state.auth.clone();
    let router = api_router(state, metrics);
    auth::harden(auth::protect(router, auth), limits)
        .layer(axum::middleware::from_fn(access::access_log))
}

#[cfg(test)]
mod tests;
