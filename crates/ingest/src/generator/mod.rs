//! Deterministic generator of the domain events (projects, tasks, metrics, users).
//!
//! One seed yields one world: the same [`GenConfig`] always produces byte-identical events.
//! Every random draw comes from a `ChaCha8Rng` stream derived from the seed and the entity
//! it belongs to (one stream per project, per service, per service's incident plan), so
//! adding a project or a service leaves every other entity's events unchanged.
//!
//! The generating processes (distributions, seasonality, incident injection, the risk and
//! effort models) are documented in `docs/data-generator.md`; the schemas each topic's
//! events follow are [`topic_schema`] and match `pipelines/*.yaml`.
//!
//! This module holds the public API; the processes live in submodules: `common` (time
//! window, random streams and draws, event encoding), `projects` (project plans, the risk
//! model and lifecycles), `team` (members and user events), `tasks` (task lifecycles and
//! the effort model) and `metrics` (service metrics with incidents injected).

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;

use self::common::{Window, align_down, align_up, poisson, round, stream};
use self::metrics::metric_rows;
use self::projects::project_world;

mod common;
mod metrics;
mod projects;
mod tasks;
mod team;
#[cfg(test)]
mod tests;

/// The topics the generator writes, in a fixed order.
pub const TOPICS: [&str; 4] = [
    "project-events",
    "task-events",
    "metric-events",
    "user-events",
];
/// Project lifecycle events (key: `project_id`).
pub const PROJECT_EVENTS: &str = TOPICS[0];
/// Task status transitions (key: `task_id`).
pub const TASK_EVENTS: &str = TOPICS[1];
/// Per-service metric samples (key: `service`).
pub const METRIC_EVENTS: &str = TOPICS[2];
/// User join/leave/role-change events (key: `user_id`).
pub const USER_EVENTS: &str = TOPICS[3];

/// Longest window the generator accepts; longer `days` are clamped (the volume would be
/// absurd long before this).
pub const MAX_DAYS: u32 = 36_500;

const MICROS: i64 = 1_000_000;
const DAY: f64 = 86_400.0;
const HOUR: f64 = 3_600.0;

// Stream ids: one ChaCha stream per entity so entities are independent of each other.
const STREAM_PROJECT: u64 = 1 << 32;
const STREAM_METRIC: u64 = 2 << 32;
const STREAM_INCIDENT: u64 = 3 << 32;
const STREAM_PROFILE: u64 = 4 << 32;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Start of the event-time window (inclusive).
    pub start: DateTime<Utc>,
    /// Length of the window in days (clamped to [`MAX_DAYS`]); no event falls outside it.
    pub days: u32,
    /// Number of projects (each with its own team, users and tasks).
    pub projects: usize,
    /// Services that report metrics; known names (`api`, `auth`, `billing`, `search`) have
    /// fixed profiles, other names get a profile drawn from the seed.
    pub services: Vec<String>,
    /// Seconds between two metric samples of a service (0 is treated as 60).
    pub metric_step_secs: u32,
    /// Distribution shift of the project world (for testing models on data unlike their
    /// training data); the default is no shift.
    pub shift: Shift,
}

/// Changes to the project world's distributions.
#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    /// Initial team sizes, drawn uniformly from this inclusive range (default 3..=12).
    pub team_sizes: (u32, u32),
    /// Multiplies each member's probability of leaving (default 1.0; capped at 0.95).
    pub churn_scale: f64,
}

impl Default for Shift {
    fn default() -> Self {
        Shift {
            team_sizes: (3, 12),
            churn_scale: 1.0,
        }
    }
}

impl Default for GenConfig {
    fn default() -> Self {
        // 2026-11-01T00:00:00Z, a Sunday.
        let start = DateTime::<Utc>::from_timestamp(1_793_491_200, 0).unwrap_or_default();
        GenConfig {
            seed: 42,
            start,
            days: 7,
            projects: 40,
            services: ["api", "auth", "billing", "search"]
                .map(String::from)
                .to_vec(),
            metric_step_secs: 60,
            shift: Shift::default(),
        }
    }
}

/// One generated record, ready to produce to Kafka.
#[derive(Debug, Clone)]
pub struct Event {
    /// One of [`TOPICS`].
    pub topic: &'static str,
    /// Kafka key: the entity id (project, task, service or user).
    pub key: String,
    /// A flat JSON object (UTF-8).
    pub value: Vec<u8>,
    /// Event time (the `ts` field) in microseconds since the Unix epoch, UTC.
    pub ts_micros: i64,
}

/// The kind of an injected metric incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Short burst of traffic: `requests_per_s` × 2.5–4 for 5–30 minutes.
    Spike,
    /// Sustained change of traffic level: `requests_per_s` × 1.4–1.8 or × 0.45–0.6 for 3–12 hours.
    LevelShift,
    /// Slow responses: `latency_p95_ms` × 3–5 (p50 × 1.5–2, errors × 3) for 20–120 minutes.
    LatencyDegradation,
    /// Failing requests: `error_rate` + 0.05–0.2 for 10–45 minutes.
    ErrorBurst,
}

impl IncidentKind {
    /// Every kind, in a fixed order.
    pub const ALL: [IncidentKind; 4] = [
        IncidentKind::Spike,
        IncidentKind::LevelShift,
        IncidentKind::LatencyDegradation,
        IncidentKind::ErrorBurst,
    ];

    /// The snake_case name (`spike`, `level_shift`, `latency_degradation`, `error_burst`).
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Spike => "spike",
            IncidentKind::LevelShift => "level_shift",
            IncidentKind::LatencyDegradation => "latency_degradation",
            IncidentKind::ErrorBurst => "error_burst",
        }
    }

    /// The metric field the incident is injected into.
    pub fn metric(self) -> &'static str {
        match self {
            IncidentKind::Spike | IncidentKind::LevelShift => "requests_per_s",
            IncidentKind::LatencyDegradation => "latency_p95_ms",
            IncidentKind::ErrorBurst => "error_rate",
        }
    }
}

/// Ground truth of one injected metric incident: every sample of `service` with
/// `start_micros <= ts < end_micros` is affected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub service: String,
    /// The metric field primarily affected (see [`IncidentKind::metric`]).
    pub metric: &'static str,
    pub kind: IncidentKind,
    pub start_micros: i64,
    /// Exclusive end.
    pub end_micros: i64,
    /// Multiplier (spike, level shift, latency degradation) or added error rate (error burst).
    pub magnitude: f64,
}

impl Incident {
    /// Whether a sample at `ts_micros` of this incident's service lies inside the incident.
    pub fn contains(&self, ts_micros: i64) -> bool {
        (self.start_micros..self.end_micros).contains(&ts_micros)
    }
}

/// The declared schema of a topic's events, as pipeline YAML writes it (`type?` = nullable).
/// Every event of the topic has exactly these fields, in this order.
pub fn topic_schema(topic: &str) -> Option<&'static [(&'static str, &'static str)]> {
    match topic {
        PROJECT_EVENTS => Some(PROJECT_SCHEMA),
        TASK_EVENTS => Some(TASK_SCHEMA),
        METRIC_EVENTS => Some(METRIC_SCHEMA),
        USER_EVENTS => Some(USER_SCHEMA),
        _ => None,
    }
}

const PROJECT_SCHEMA: &[(&str, &str)] = &[
    ("event_id", "utf8"),
    ("ts", "timestamp_us"),
    ("project_id", "utf8"),
    ("event_type", "utf8"),
    ("status", "utf8"),
    ("project_name", "utf8"),
    ("team_id", "utf8"),
    ("team_size", "int64"),
    ("start_date", "date32"),
    ("deadline", "timestamp_us"),
    ("budget", "float64"),
    ("spent", "float64"),
    ("planned_progress", "float64"),
    ("actual_progress", "float64"),
    ("scope_changes", "int64"),
    ("churn", "int64"),
    ("missed_deadline", "bool?"),
    ("over_budget", "bool?"),
    ("delay_days", "float64?"),
];

const TASK_SCHEMA: &[(&str, &str)] = &[
    ("event_id", "utf8"),
    ("ts", "timestamp_us"),
    ("task_id", "utf8"),
    ("project_id", "utf8"),
    ("status", "utf8"),
    ("prev_status", "utf8?"),
    ("task_type", "utf8"),
    ("complexity", "int64"),
    ("estimate_hours", "float64"),
    ("hours", "float64?"),
    ("assignee_id", "utf8?"),
    ("assignee_experience_years", "float64?"),
];

const METRIC_SCHEMA: &[(&str, &str)] = &[
    ("event_id", "utf8"),
    ("ts", "timestamp_us"),
    ("service", "utf8"),
    ("requests_per_s", "float64"),
    ("latency_p50_ms", "float64"),
    ("latency_p95_ms", "float64"),
    ("cpu", "float64"),
    ("queue_depth", "int64"),
    ("error_rate", "float64"),
];

const USER_SCHEMA: &[(&str, &str)] = &[
    ("event_id", "utf8"),
    ("ts", "timestamp_us"),
    ("user_id", "utf8"),
    ("event_type", "utf8"),
    ("team_id", "utf8"),
    ("role", "utf8"),
    ("prev_role", "utf8?"),
    ("experience_years", "float64"),
    ("hourly_rate", "float64"),
    ("reason", "utf8?"),
];

/// Generates every event of the configured world, sorted by `ts_micros`, then topic, then
/// key (ties keep generation order). Same config, byte-identical output.
pub fn generate(cfg: &GenConfig) -> Vec<Event> {
    let win = Window::new(cfg);
    let mut out = Vec::new();
    for p in 0..cfg.projects {
        project_world(cfg.seed, p, &win, &cfg.shift, &mut out);
    }
    let incidents = incidents(cfg);
    for (si, service) in cfg.services.iter().enumerate() {
        let mine: Vec<Incident> = incidents
            .iter()
            .filter(|i| &i.service == service)
            .cloned()
            .collect();
        for row in metric_rows(cfg, &win, si, &mine) {
            out.push(row.into_event(&win));
        }
    }
    out.retain(|e| e.ts_micros >= win.start_micros && e.ts_micros < win.end_micros());
    sort_events(&mut out);
    out
}

/// The order [`generate`] gives: by `ts_micros`, then topic, then key (stable), so the
/// events of several configs can be merged into one stream.
pub fn sort_events(events: &mut [Event]) {
    events.sort_by(|a, b| {
        (a.ts_micros, a.topic, a.key.as_str()).cmp(&(b.ts_micros, b.topic, b.key.as_str()))
    });
}

/// The metric incidents injected by [`generate`] for this config, sorted by start then
/// service. Computed without generating the events.
pub fn incidents(cfg: &GenConfig) -> Vec<Incident> {
    let win = Window::new(cfg);
    let mut all = Vec::new();
    for (si, service) in cfg.services.iter().enumerate() {
        let mut rng = stream(cfg.seed, STREAM_INCIDENT + si as u64);
        let count = poisson(&mut rng, 0.5 * win.days()).max(1);
        let mut placed: Vec<(i64, i64)> = Vec::new();
        for _ in 0..count {
            let kind = IncidentKind::ALL[rng.random_range(0..IncidentKind::ALL.len())];
            let (minutes, magnitude) = match kind {
                IncidentKind::Spike => (rng.random_range(5.0..30.0), rng.random_range(2.5..4.0)),
                IncidentKind::LevelShift => {
                    let up = rng.random_bool(0.7);
                    let m = if up {
                        rng.random_range(1.4..1.8)
                    } else {
                        rng.random_range(0.45..0.6)
                    };
                    (rng.random_range(180.0..720.0), m)
                }
                IncidentKind::LatencyDegradation => {
                    (rng.random_range(20.0..120.0), rng.random_range(3.0..5.0))
                }
                IncidentKind::ErrorBurst => {
                    (rng.random_range(10.0..45.0), rng.random_range(0.05..0.2))
                }
            };
            let len = align_up((minutes * 60.0) as i64, win.step);
            let lo = (0.15 * win.secs as f64) as i64;
            let hi = win.secs - len;
            if hi <= lo {
                continue;
            }
            for _attempt in 0..50 {
                let start = align_down(rng.random_range(lo..hi), win.step);
                let gap = 2 * 3_600;
                let free = placed
                    .iter()
                    .all(|&(s, e)| start + len + gap <= s || start >= e + gap);
                if free {
                    placed.push((start, start + len));
                    all.push(Incident {
                        service: service.clone(),
                        metric: kind.metric(),
                        kind,
                        start_micros: win.micros(start),
                        end_micros: win.micros(start + len),
                        magnitude: round(magnitude, 3),
                    });
                    break;
                }
            }
        }
    }
    all.sort_by(|a, b| (a.start_micros, &a.service).cmp(&(b.start_micros, &b.service)));
    all
}
