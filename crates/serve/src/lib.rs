//! ymera's HTTP routes. This part: the Kubernetes health probes and the Prometheus
//! `/metrics` route, mounted by both `ymera run` and `ymera serve`.

pub mod health;

pub use health::health_router;
