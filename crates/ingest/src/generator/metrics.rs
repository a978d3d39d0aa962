//! Service metrics: per-service traffic profiles, daily and weekly seasonality, and the
//! metric samples with the planned incidents injected.

use std::f64::consts::PI;

use rand::Rng;
use serde::Serialize;

use super::common::{Window, event, normal, round, stream};
use super::{
    DAY, Event, GenConfig, HOUR, Incident, IncidentKind, METRIC_EVENTS, MICROS, STREAM_METRIC,
    STREAM_PROFILE,
};

#[derive(Debug, Clone, Copy)]
struct ServiceProfile {
    base_rps: f64,
    base_p50_ms: f64,
    base_error_rate: f64,
    /// Linear growth of traffic per day.
    trend_per_day: f64,
}

impl ServiceProfile {
    fn for_service(seed: u64, index: usize, name: &str) -> ServiceProfile {
        let known = |base_rps, base_p50_ms, base_error_rate, trend_per_day| ServiceProfile {
            base_rps,
            base_p50_ms,
            base_error_rate,
            trend_per_day,
        };
        match name {
            "api" => known(400.0, 35.0, 0.002, 0.003),
            "auth" => known(150.0, 18.0, 0.001, 0.002),
            "billing" => known(40.0, 90.0, 0.003, 0.004),
            "search" => known(220.0, 60.0, 0.0015, 0.0025),
            _ => {
                let mut rng = stream(seed, STREAM_PROFILE + index as u64);
                ServiceProfile {
                    base_rps: round(100.0 * (0.8 * normal(&mut rng)).exp(), 1),
                    base_p50_ms: round(rng.random_range(15.0..100.0), 1),
                    base_error_rate: rng.random_range(0.001..0.004),
                    trend_per_day: rng.random_range(0.001..0.004),
                }
            }
        }
    }
}

/// Daily × weekly seasonality of traffic at an absolute UTC time (seconds since epoch).
fn seasonality(epoch_secs: i64) -> f64 {
    let hour = epoch_secs.rem_euclid(86_400) as f64 / HOUR;
    // 1970-01-01 was a Thursday: Monday-based weekday index 3.
    let weekday = (epoch_secs.div_euclid(86_400) + 3).rem_euclid(7);
    let (amplitude, level) = match weekday {
        5 => (0.35, 0.62), // Saturday
        6 => (0.35, 0.55), // Sunday
        _ => (0.6, 1.0),
    };
    let daily = 1.0
        + amplitude * (2.0 * PI * (hour - 14.0) / 24.0).cos()
        + 0.15 * amplitude * (4.0 * PI * (hour - 10.0) / 24.0).cos();
    level * daily
}

#[derive(Debug, Clone)]
pub(super) struct MetricRow {
    pub(super) service: String,
    pub(super) step: i64,
    pub(super) secs: i64,
    pub(super) requests_per_s: f64,
    pub(super) latency_p50_ms: f64,
    pub(super) latency_p95_ms: f64,
    pub(super) cpu: f64,
    pub(super) queue_depth: i64,
    pub(super) error_rate: f64,
}

impl MetricRow {
    pub(super) fn into_event(self, win: &Window) -> Event {
        #[derive(Serialize)]
        struct MetricRecord<'a> {
            event_id: String,
            ts: String,
            service: &'a str,
            requests_per_s: f64,
            latency_p50_ms: f64,
            latency_p95_ms: f64,
            cpu: f64,
            queue_depth: i64,
            error_rate: f64,
        }
        let rec = MetricRecord {
            event_id: format!("met-{}-{:07}", self.service, self.step),
            ts: win.ts(self.secs),
            service: &self.service,
            requests_per_s: self.requests_per_s,
            latency_p50_ms: self.latency_p50_ms,
            latency_p95_ms: self.latency_p95_ms,
            cpu: self.cpu,
            queue_depth: self.queue_depth,
            error_rate: self.error_rate,
        };
        event(METRIC_EVENTS, &self.service, win.micros(self.secs), &rec)
    }
}

/// The samples of service `index`, with `incidents` (of that service) injected. The random
/// draws do not depend on the incidents, so the series without them is the same elsewhere.
pub(super) fn metric_rows(
    cfg: &GenConfig,
    win: &Window,
    index: usize,
    incidents: &[Incident],
) -> Vec<MetricRow> {
    let Some(service) = cfg.services.get(index) else {
        return Vec::new();
    };
    let profile = ServiceProfile::for_service(cfg.seed, index, service);
    let mut rng = stream(cfg.seed, STREAM_METRIC + index as u64);
    let capacity = profile.base_rps * 2.4;
    let start_secs = win.start_micros.div_euclid(MICROS);
    let steps = win.secs / win.step;
    let mut ar = 0.0;
    let mut rows = Vec::with_capacity(steps.max(0) as usize);
    for step in 0..steps {
        let secs = step * win.step;
        let [z1, z2, z3, z4, z5] = [(); 5].map(|_| normal(&mut rng));
        ar = 0.9 * ar + 0.02 * z1;
        let trend = 1.0 + profile.trend_per_day * secs as f64 / DAY;
        let mut rps = profile.base_rps * seasonality(start_secs + secs) * trend * ar.exp();
        let (mut p50_factor, mut p95_factor, mut error_factor, mut error_add) =
            (1.0, 1.0, 1.0, 0.0);
        let ts = win.micros(secs);
        for inc in incidents.iter().filter(|i| i.contains(ts)) {
            match inc.kind {
                IncidentKind::Spike | IncidentKind::LevelShift => rps *= inc.magnitude,
                IncidentKind::LatencyDegradation => {
                    p95_factor *= inc.magnitude;
                    p50_factor *= 1.0 + 0.25 * (inc.magnitude - 1.0);
                    error_factor *= 3.0;
                }
                IncidentKind::ErrorBurst => error_add += inc.magnitude,
            }
        }
        let u = (rps / capacity).min(2.0);
        let p50 = profile.base_p50_ms * (1.0 + 0.8 * u.powi(3)) * p50_factor;
        let p95 = p50 * (1.55 + 0.3 * u + 0.05 * z2).max(1.2) * p95_factor / p50_factor;
        let cpu = (0.04 + 0.8 * u + 0.015 * z3).clamp(0.01, 1.0);
        let in_flight = rps * p50 / 1000.0;
        let lambda = in_flight * u * u;
        let queue = (lambda + lambda.sqrt() * z5).round().max(0.0);
        let error_rate = (profile.base_error_rate
            * (1.0 + 8.0 * (u - 0.85).max(0.0))
            * (0.3 * z4).exp()
            * error_factor
            + error_add)
            .clamp(0.0, 1.0);
        rows.push(MetricRow {
            service: service.clone(),
            step,
            secs,
            requests_per_s: round(rps, 2),
            latency_p50_ms: round(p50, 2),
            latency_p95_ms: round(p95, 2),
            cpu: round(cpu, 4),
            queue_depth: queue as i64,
            error_rate: round(error_rate, 5),
        });
    }
    rows
}
