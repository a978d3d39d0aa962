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

use std::f64::consts::PI;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

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
        project_world(cfg.seed, p, &win, &mut out);
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
    out.sort_by(|a, b| {
        (a.ts_micros, a.topic, a.key.as_str()).cmp(&(b.ts_micros, b.topic, b.key.as_str()))
    });
    out
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

// ---------------------------------------------------------------------------------------
// Shared helpers

/// The event-time window in seconds relative to its start.
#[derive(Debug, Clone, Copy)]
struct Window {
    start_micros: i64,
    secs: i64,
    step: i64,
}

impl Window {
    fn new(cfg: &GenConfig) -> Window {
        let room = (DateTime::<Utc>::MAX_UTC - cfg.start).num_days() - 1;
        let days = i64::from(cfg.days.min(MAX_DAYS)).clamp(0, room.max(0));
        let step = if cfg.metric_step_secs == 0 {
            60
        } else {
            i64::from(cfg.metric_step_secs)
        };
        Window {
            start_micros: cfg.start.timestamp_micros(),
            secs: days * 86_400,
            step,
        }
    }

    fn days(&self) -> f64 {
        self.secs as f64 / DAY
    }

    fn end_micros(&self) -> i64 {
        self.micros(self.secs)
    }

    /// Absolute microseconds of a window offset in seconds.
    fn micros(&self, secs: i64) -> i64 {
        self.start_micros
            .saturating_add(secs.saturating_mul(MICROS))
    }

    fn ts(&self, secs: i64) -> String {
        rfc3339(self.micros(secs))
    }

    fn date(&self, secs: i64) -> String {
        DateTime::from_timestamp_micros(self.micros(secs))
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }
}

/// RFC 3339 UTC with a `Z`, with sub-second digits only when they are not zero.
fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// Poisson draw (Knuth for small means, a rounded normal for large ones).
fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        return (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u32;
    }
    let limit = (-mean).exp();
    let mut product = 1.0;
    let mut k = 0;
    loop {
        product *= rng.random::<f64>();
        if product <= limit {
            return k;
        }
        k += 1;
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, weighted: &[(T, f64)]) -> T {
    let total: f64 = weighted.iter().map(|w| w.1).sum();
    let mut x = rng.random::<f64>() * total;
    for &(item, w) in weighted {
        if x < w {
            return item;
        }
        x -= w;
    }
    weighted[weighted.len() - 1].0
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

fn align_down(x: i64, step: i64) -> i64 {
    x - x.rem_euclid(step)
}

fn align_up(x: i64, step: i64) -> i64 {
    align_down(x + step - 1, step).max(step)
}

fn event<T: Serialize>(topic: &'static str, key: &str, ts_micros: i64, record: &T) -> Event {
    // A flat struct of strings, numbers, bools and options cannot fail to serialize.
    let value = serde_json::to_vec(record).expect("flat event records always serialize");
    Event {
        topic,
        key: key.to_owned(),
        value,
        ts_micros,
    }
}

// ---------------------------------------------------------------------------------------
// Projects, their teams (users) and their tasks

#[derive(Serialize)]
struct ProjectRecord<'a> {
    event_id: String,
    ts: String,
    project_id: &'a str,
    event_type: &'static str,
    status: &'static str,
    project_name: &'a str,
    team_id: &'a str,
    team_size: i64,
    start_date: &'a str,
    deadline: &'a str,
    budget: f64,
    spent: f64,
    planned_progress: f64,
    actual_progress: f64,
    scope_changes: i64,
    churn: i64,
    missed_deadline: Option<bool>,
    over_budget: Option<bool>,
    delay_days: Option<f64>,
}

#[derive(Serialize)]
struct TaskRecord<'a> {
    event_id: String,
    ts: String,
    task_id: &'a str,
    project_id: &'a str,
    status: &'static str,
    prev_status: Option<&'static str>,
    task_type: &'static str,
    complexity: i64,
    estimate_hours: f64,
    hours: Option<f64>,
    assignee_id: Option<&'a str>,
    assignee_experience_years: Option<f64>,
}

#[derive(Serialize)]
struct UserRecord<'a> {
    event_id: String,
    ts: String,
    user_id: &'a str,
    event_type: &'static str,
    team_id: &'a str,
    role: &'static str,
    prev_role: Option<&'static str>,
    experience_years: f64,
    hourly_rate: f64,
    reason: Option<&'static str>,
}

/// The hidden drivers and the resulting outcome of one project (times in window seconds).
#[derive(Debug, Clone)]
struct ProjectPlan {
    start: f64,
    planned: f64,
    team_size: u32,
    budget: f64,
    burn: f64,
    /// Multiplier of the planned duration the work really needs.
    schedule_factor: f64,
    /// When the project ends (completion or cancellation), relative to `start`.
    end: f64,
    cancelled: bool,
    /// Scope change times relative to `start` (only those before `end`).
    scope_times: Vec<f64>,
    /// Churn times relative to `start` (only those before `end`).
    churn_times: Vec<f64>,
}

impl ProjectPlan {
    fn draw(rng: &mut ChaCha8Rng, win: &Window) -> ProjectPlan {
        let w = win.secs as f64;
        let planned = (w * rng.random_range(0.25..0.40))
            .min(DAY * rng.random_range(20.0..120.0))
            .max(HOUR);
        let latest_start = (w - 1.8 * planned - HOUR).max(0.0);
        let start = rng.random_range(0.0..=latest_start).floor();
        let team_size = rng.random_range(3..=12u32);
        let budget = round(
            20_000.0 * f64::from(team_size) * (0.35 * normal(rng)).exp(),
            -3,
        )
        .max(10_000.0);
        // Drivers of risk (documented in docs/data-generator.md).
        let volatility = rng.random::<f64>() * rng.random::<f64>();
        let scope_count = poisson(rng, 0.3 + 6.0 * volatility);
        let scope_sizes: Vec<f64> = (0..scope_count)
            .map(|_| rng.random_range(0.04..0.10))
            .collect();
        let leave_p = 0.02 + 0.3 * rng.random::<f64>().powi(3);
        let churn_count = (0..team_size).filter(|_| rng.random_bool(leave_p)).count();
        let velocity = (1.22 + 0.12 * normal(rng)).clamp(0.8, 1.6);
        let burn = (0.93 + 0.08 * normal(rng)).clamp(0.7, 1.3);
        let scope_work: f64 = scope_sizes.iter().map(|s| 1.0 + s).product();
        let churn_ratio = churn_count as f64 / f64::from(team_size);
        let coordination = 1.0 + 0.015 * (f64::from(team_size) - 7.0);
        let schedule_factor = (scope_work * (1.0 + 0.8 * churn_ratio) * coordination / velocity
            * (0.05 * normal(rng)).exp())
        .clamp(0.55, 1.75);
        let actual = planned * schedule_factor;
        let cancelled = schedule_factor > 1.45 && rng.random_bool(0.5);
        let end = if cancelled {
            planned * rng.random_range(0.5..0.9)
        } else {
            actual
        };
        let mut scope_times: Vec<f64> = (0..scope_count)
            .map(|_| actual * rng.random_range(0.05..0.85))
            .collect();
        let mut churn_times: Vec<f64> = (0..churn_count)
            .map(|_| actual * rng.random_range(0.05..0.9))
            .collect();
        scope_times.retain(|&t| t < end);
        churn_times.retain(|&t| t < end);
        scope_times.sort_by(f64::total_cmp);
        churn_times.sort_by(f64::total_cmp);
        ProjectPlan {
            start,
            planned,
            team_size,
            budget,
            burn,
            schedule_factor,
            end,
            cancelled,
            scope_times,
            churn_times,
        }
    }

    fn actual(&self) -> f64 {
        self.planned * self.schedule_factor
    }

    fn churn_before(&self, rel: f64) -> usize {
        self.churn_times.iter().filter(|&&t| t <= rel).count()
    }

    fn scope_before(&self, rel: f64) -> usize {
        self.scope_times.iter().filter(|&&t| t <= rel).count()
    }

    /// Money spent by `rel` seconds into the project: the planned burn scaled by the
    /// project's burn factor, plus 1.5% of the budget per person who left (hiring, onboarding).
    fn spent(&self, rel: f64) -> f64 {
        self.budget * self.burn * (rel / self.planned)
            + 0.015 * self.budget * self.churn_before(rel) as f64
    }

    fn missed_deadline(&self) -> bool {
        self.cancelled || self.schedule_factor > 1.0
    }

    fn over_budget(&self) -> bool {
        self.spent(self.end) > self.budget
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Junior,
    Engineer,
    Senior,
    Staff,
    Qa,
    Designer,
}

impl Role {
    const WEIGHTS: [(Role, f64); 6] = [
        (Role::Junior, 0.2),
        (Role::Engineer, 0.35),
        (Role::Senior, 0.25),
        (Role::Staff, 0.05),
        (Role::Qa, 0.1),
        (Role::Designer, 0.05),
    ];

    fn as_str(self) -> &'static str {
        match self {
            Role::Junior => "junior_engineer",
            Role::Engineer => "engineer",
            Role::Senior => "senior_engineer",
            Role::Staff => "staff_engineer",
            Role::Qa => "qa_engineer",
            Role::Designer => "designer",
        }
    }

    /// Experience range in years and base hourly rate.
    fn profile(self) -> ((f64, f64), f64) {
        match self {
            Role::Junior => ((0.0, 2.0), 45.0),
            Role::Engineer => ((1.5, 6.0), 65.0),
            Role::Senior => ((5.0, 12.0), 85.0),
            Role::Staff => ((9.0, 20.0), 110.0),
            Role::Qa => ((0.5, 10.0), 55.0),
            Role::Designer => ((1.0, 12.0), 60.0),
        }
    }

    fn promotion(self) -> Option<Role> {
        match self {
            Role::Junior => Some(Role::Engineer),
            Role::Engineer => Some(Role::Senior),
            Role::Senior => Some(Role::Staff),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    id: String,
    role: Role,
    experience: f64,
    rate: f64,
    joined: f64,
    left: Option<f64>,
}

impl Member {
    fn draw(rng: &mut ChaCha8Rng, id: String, joined: f64) -> Member {
        let role = pick(rng, &Role::WEIGHTS);
        let ((lo, hi), base) = role.profile();
        let experience = round(rng.random_range(lo..hi), 1);
        let rate = round(
            base * (1.0 + 0.03 * experience) * (0.1 * normal(rng)).exp(),
            2,
        );
        Member {
            id,
            role,
            experience,
            rate,
            joined,
            left: None,
        }
    }

    fn active_at(&self, t: f64) -> bool {
        self.joined <= t && self.left.is_none_or(|l| t < l)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProjectEventKind {
    Created,
    BudgetUpdate,
    ScopeChange,
    TeamChange,
    Milestone,
    StatusChange,
    Completed,
    Cancelled,
}

impl ProjectEventKind {
    fn as_str(self) -> &'static str {
        match self {
            ProjectEventKind::Created => "created",
            ProjectEventKind::BudgetUpdate => "budget_update",
            ProjectEventKind::ScopeChange => "scope_change",
            ProjectEventKind::TeamChange => "team_change",
            ProjectEventKind::Milestone => "milestone",
            ProjectEventKind::StatusChange => "status_change",
            ProjectEventKind::Completed => "completed",
            ProjectEventKind::Cancelled => "cancelled",
        }
    }
}

/// Generates one project with its team (user events), its lifecycle (project events) and
/// its tasks (task events), all from the project's own random stream.
fn project_world(seed: u64, index: usize, win: &Window, out: &mut Vec<Event>) {
    let mut rng = stream(seed, STREAM_PROJECT + index as u64);
    let plan = ProjectPlan::draw(&mut rng, win);
    let n = index + 1;
    let names = [
        "Atlas", "Beacon", "Cobalt", "Delta", "Ember", "Falcon", "Granite", "Harbor",
    ];
    let ids = ProjectIds {
        n,
        project_id: format!("prj-{n:04}"),
        team_id: format!("team-{n:04}"),
        project_name: format!("{} {n}", names[rng.random_range(0..names.len())]),
    };
    let team = Team::draw(&mut rng, &plan, n);
    team.emit(win, &ids, out);
    project_lifecycle(&mut rng, win, &plan, &ids, &team, out);
    let tasks = plan.team_size * rng.random_range(3..=5u32);
    for ti in 0..tasks {
        let task_id = format!("tsk-{n:04}-{:03}", ti + 1);
        project_task(
            &mut rng,
            win,
            &plan,
            &ids.project_id,
            &task_id,
            &team.members,
            out,
        );
    }
}

struct ProjectIds {
    n: usize,
    project_id: String,
    team_id: String,
    project_name: String,
}

/// A change of a team member, in time order once sorted.
#[derive(Debug, Clone, Copy)]
struct UserChange {
    /// Window seconds.
    at: f64,
    member: usize,
    kind: &'static str,
    promotion: Option<Role>,
    reason: Option<&'static str>,
}

/// A project's team over its life.
#[derive(Debug, Clone)]
struct Team {
    members: Vec<Member>,
    changes: Vec<UserChange>,
    /// When replacements joined, relative to the project start.
    replacements: Vec<f64>,
}

impl Team {
    /// Initial members join shortly before the project starts; at each churn time a random
    /// active member leaves and 60% are replaced a little later; some members are promoted.
    fn draw(rng: &mut ChaCha8Rng, plan: &ProjectPlan, n: usize) -> Team {
        let mut members: Vec<Member> = (0..plan.team_size)
            .map(|m| {
                let joined = (plan.start - rng.random_range(60.0..7_200.0))
                    .max(0.0)
                    .floor();
                Member::draw(rng, format!("usr-{n:04}-{:02}", m + 1), joined)
            })
            .collect();
        let change = |at: f64, member: usize, kind: &'static str| UserChange {
            at,
            member,
            kind,
            promotion: None,
            reason: None,
        };
        let mut changes: Vec<UserChange> = members
            .iter()
            .enumerate()
            .map(|(i, m)| change(m.joined, i, "join"))
            .collect();
        let mut replacements = Vec::new();
        for &t in &plan.churn_times {
            let at = (plan.start + t).floor();
            let active: Vec<usize> = (0..members.len())
                .filter(|&i| members[i].active_at(at))
                .collect();
            if let Some(&who) = active.get(rng.random_range(0..active.len().max(1))) {
                members[who].left = Some(at);
                let reason = if rng.random_bool(0.6) {
                    "resigned"
                } else {
                    "reassigned"
                };
                changes.push(UserChange {
                    reason: Some(reason),
                    ..change(at, who, "leave")
                });
            }
            if rng.random_bool(0.6) {
                let back = t + plan.planned * rng.random_range(0.03..0.10);
                if back < plan.end {
                    replacements.push(back);
                    let id = format!("usr-{n:04}-{:02}", members.len() + 1);
                    let joined = (plan.start + back).floor();
                    members.push(Member::draw(rng, id, joined));
                    changes.push(change(joined, members.len() - 1, "join"));
                }
            }
        }
        for (i, member) in members.iter().enumerate().take(plan.team_size as usize) {
            if rng.random_bool(0.05)
                && let Some(next) = member.role.promotion()
            {
                let at = (plan.start + plan.end * rng.random_range(0.1..0.9)).floor();
                if member.active_at(at) {
                    changes.push(UserChange {
                        promotion: Some(next),
                        ..change(at, i, "role_change")
                    });
                }
            }
        }
        changes.sort_by(|a, b| a.at.total_cmp(&b.at));
        Team {
            members,
            changes,
            replacements,
        }
    }

    fn size_at(&self, at: f64) -> usize {
        self.members.iter().filter(|m| m.active_at(at)).count()
    }

    /// The user events, replaying role changes (a promotion raises the rate by 12%).
    fn emit(&self, win: &Window, ids: &ProjectIds, out: &mut Vec<Event>) {
        let mut roles: Vec<Role> = self.members.iter().map(|m| m.role).collect();
        let mut rates: Vec<f64> = self.members.iter().map(|m| m.rate).collect();
        for (seq, c) in self.changes.iter().enumerate() {
            let member = &self.members[c.member];
            let prev = roles[c.member];
            if let Some(next) = c.promotion {
                roles[c.member] = next;
                rates[c.member] = round(rates[c.member] * 1.12, 2);
            }
            let t = c.at as i64;
            let rec = UserRecord {
                event_id: format!("usr-{:04}-e{:04}", ids.n, seq + 1),
                ts: win.ts(t),
                user_id: &member.id,
                event_type: c.kind,
                team_id: &ids.team_id,
                role: roles[c.member].as_str(),
                prev_role: c.promotion.map(|_| prev.as_str()),
                experience_years: member.experience,
                hourly_rate: rates[c.member],
                reason: c.reason,
            };
            out.push(event(USER_EVENTS, &member.id, win.micros(t), &rec));
        }
    }
}

/// The project events: a snapshot of the project's state at each point of its timeline.
fn project_lifecycle(
    rng: &mut ChaCha8Rng,
    win: &Window,
    plan: &ProjectPlan,
    ids: &ProjectIds,
    team: &Team,
    out: &mut Vec<Event>,
) {
    use ProjectEventKind as K;
    let mut timeline: Vec<(f64, K)> = vec![(0.0, K::Created)];
    let mut k = 1.0;
    while k * plan.planned / 8.0 < plan.end - 60.0 {
        timeline.push((k * plan.planned / 8.0, K::BudgetUpdate));
        k += 1.0;
    }
    timeline.extend(plan.scope_times.iter().map(|&t| (t, K::ScopeChange)));
    timeline.extend(plan.churn_times.iter().map(|&t| (t, K::TeamChange)));
    timeline.extend(team.replacements.iter().map(|&t| (t, K::TeamChange)));
    for m in [0.25, 0.5, 0.75] {
        if plan.actual() * m < plan.end - 60.0 {
            timeline.push((plan.actual() * m, K::Milestone));
        }
    }
    timeline.push((
        plan.end,
        if plan.cancelled {
            K::Cancelled
        } else {
            K::Completed
        },
    ));
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));

    let abs = |rel: f64| (plan.start + rel).floor() as i64;
    let start_date = win.date(abs(0.0));
    let deadline = win.ts(abs(plan.planned));
    let mut status = "active";
    let mut seq = 0;
    for &(rel, kind) in &timeline {
        let final_event = matches!(kind, K::Completed | K::Cancelled);
        let planned_progress = (rel / plan.planned).min(1.0);
        let noise = if final_event || kind == K::Created {
            0.0
        } else {
            0.02 * normal(rng)
        };
        let actual_progress = if final_event && !plan.cancelled {
            1.0
        } else {
            round(((rel / plan.actual()).min(1.0) + noise).clamp(0.0, 1.0), 3)
        };
        let spent = plan.spent(rel);
        let mut kinds = vec![kind];
        if kind == K::BudgetUpdate && status == "active" {
            let slip = planned_progress - actual_progress;
            let burn_rate = spent / plan.budget / planned_progress.max(f64::EPSILON);
            if slip > 0.08 || burn_rate > 1.1 {
                kinds.push(K::StatusChange);
            }
        }
        for (j, kind) in kinds.into_iter().enumerate() {
            let t = abs(rel) + 60 * j as i64;
            status = match kind {
                K::StatusChange => "at_risk",
                K::Completed => "completed",
                K::Cancelled => "cancelled",
                _ => status,
            };
            seq += 1;
            let rec = ProjectRecord {
                event_id: format!("prj-{:04}-e{seq:04}", ids.n),
                ts: win.ts(t),
                project_id: &ids.project_id,
                event_type: kind.as_str(),
                status,
                project_name: &ids.project_name,
                team_id: &ids.team_id,
                team_size: team.size_at(t as f64) as i64,
                start_date: &start_date,
                deadline: &deadline,
                budget: plan.budget,
                spent: round(spent, 2),
                planned_progress: round(planned_progress, 3),
                actual_progress,
                scope_changes: plan.scope_before(rel) as i64,
                churn: plan.churn_before(rel) as i64,
                missed_deadline: final_event.then(|| plan.missed_deadline()),
                over_budget: final_event.then(|| plan.over_budget()),
                delay_days: (final_event && !plan.cancelled)
                    .then(|| round((plan.end - plan.planned) / DAY, 3)),
            };
            out.push(event(PROJECT_EVENTS, &ids.project_id, win.micros(t), &rec));
        }
    }
}

const TASK_TYPES: [(&str, f64); 5] = [
    ("feature", 0.40),
    ("bug", 0.25),
    ("chore", 0.15),
    ("research", 0.08),
    ("infra", 0.12),
];

/// How much more (or less) effort a task type really takes than estimated.
fn type_factor(task_type: &str) -> f64 {
    match task_type {
        "feature" => 1.15,
        "bug" => 1.30,
        "chore" => 0.90,
        "research" => 1.40,
        _ => 1.20,
    }
}

/// Effort multiplier of an assignee with this much experience: 1.3 for a beginner down to
/// 0.7 at ten years or more.
fn experience_factor(years: f64) -> f64 {
    1.3 - 0.06 * years.min(10.0)
}

/// The real effort of a task (hours): estimate × type factor × complexity bias ×
/// experience factor × lognormal noise (σ = 0.2).
fn effort_hours(estimate: f64, task_type: &str, complexity: u32, experience: f64, z: f64) -> f64 {
    let complexity_bias = 1.0 + 0.1 * (f64::from(complexity) - 3.0);
    estimate
        * type_factor(task_type)
        * complexity_bias
        * experience_factor(experience)
        * (0.2 * z).exp()
}

fn project_task(
    rng: &mut ChaCha8Rng,
    win: &Window,
    plan: &ProjectPlan,
    project_id: &str,
    task_id: &str,
    members: &[Member],
    out: &mut Vec<Event>,
) {
    let task_type = pick(rng, &TASK_TYPES);
    let complexity = pick(
        rng,
        &[(1u32, 0.15), (2, 0.25), (3, 0.30), (4, 0.20), (5, 0.10)],
    );
    let base = [2.0, 4.0, 8.0, 14.0, 24.0][complexity as usize - 1];
    let estimate = (round(base * (0.3 * normal(rng)).exp() * 2.0, 0) / 2.0).max(0.5);
    let span = plan.actual();
    let created = span * rng.random_range(0.0..0.6);
    let deleted_early = rng.random_bool(0.05);
    let start = created + span * rng.random_range(0.01..0.08);
    let z = normal(rng);
    let active: Vec<&Member> = members
        .iter()
        .filter(|m| m.active_at(plan.start + start))
        .collect();
    let pool: Vec<&Member> = if active.is_empty() {
        members.iter().collect()
    } else {
        active
    };
    let assignee = pool.get(rng.random_range(0..pool.len().max(1))).copied();
    let experience = assignee.map_or(3.0, |m| m.experience);
    let actual = round(
        effort_hours(estimate, task_type, complexity, experience, z),
        2,
    )
    .max(0.25);
    let work = span * rng.random_range(0.04..0.2);
    let blocked = rng
        .random_bool(0.1)
        .then(|| span * rng.random_range(0.03..0.08));
    let bounce = rng.random_bool(0.12);

    // (time relative to project start, status, hours logged so far as a fraction of actual)
    let mut steps: Vec<(f64, &'static str, Option<f64>)> = vec![(created, "todo", None)];
    if deleted_early {
        steps.push((start, "deleted", None));
    } else {
        steps.push((start, "in_progress", Some(0.0)));
        let mut shift = 0.0;
        if let Some(pause) = blocked {
            steps.push((start + 0.4 * work, "blocked", Some(0.4)));
            shift = pause;
            steps.push((start + 0.4 * work + shift, "in_progress", Some(0.4)));
        }
        steps.push((start + 0.85 * work + shift, "review", Some(0.85)));
        if bounce {
            steps.push((start + 0.9 * work + shift, "in_progress", Some(0.85)));
            steps.push((start + 0.95 * work + shift, "review", Some(0.95)));
            shift += 0.15 * work;
        }
        steps.push((start + work + shift, "done", Some(1.0)));
    }
    // A completed project finishes all its tasks: squeeze late tasks into its life.
    let limit = plan.end - 120.0;
    let last = steps[steps.len() - 1].0;
    if !plan.cancelled && last > limit && limit > created {
        let scale = (limit - created) / (last - created);
        for s in steps.iter_mut() {
            s.0 = created + (s.0 - created) * scale;
        }
    }
    if created >= plan.end - 60.0 {
        return;
    }
    // A cancelled project deletes its unfinished tasks when it is cancelled.
    if plan.cancelled && steps.iter().any(|s| s.0 >= plan.end) {
        steps.retain(|s| s.0 < plan.end);
        let logged = steps.last().and_then(|s| s.2);
        steps.push((plan.end, "deleted", logged));
    }
    let mut prev_status: Option<&'static str> = None;
    let mut prev_t = i64::MIN;
    for (i, &(rel, status, fraction)) in steps.iter().enumerate() {
        let t = ((plan.start + rel).floor() as i64).max(prev_t.saturating_add(1));
        prev_t = t;
        let worked = status != "todo" && !(status == "deleted" && fraction.is_none());
        let hours = fraction.map(|f| round(actual * f, 2));
        let rec = TaskRecord {
            event_id: format!("{task_id}-e{:02}", i + 1),
            ts: win.ts(t),
            task_id,
            project_id,
            status,
            prev_status,
            task_type,
            complexity: i64::from(complexity),
            estimate_hours: estimate,
            hours,
            assignee_id: if worked {
                assignee.map(|m| m.id.as_str())
            } else {
                None
            },
            assignee_experience_years: if worked {
                assignee.map(|m| m.experience)
            } else {
                None
            },
        };
        out.push(event(TASK_EVENTS, task_id, win.micros(t), &rec));
        prev_status = Some(status);
    }
}

// ---------------------------------------------------------------------------------------
// Service metrics

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
struct MetricRow {
    service: String,
    step: i64,
    secs: i64,
    requests_per_s: f64,
    latency_p50_ms: f64,
    latency_p95_ms: f64,
    cpu: f64,
    queue_depth: i64,
    error_rate: f64,
}

impl MetricRow {
    fn into_event(self, win: &Window) -> Event {
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
fn metric_rows(
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use serde_json::{Map, Value};

    use super::*;

    fn parse(e: &Event) -> Map<String, Value> {
        match serde_json::from_slice::<Value>(&e.value) {
            Ok(Value::Object(m)) => m,
            other => panic!("{} event is not a JSON object: {other:?}", e.topic),
        }
    }

    fn of_topic(events: &[Event], topic: &str) -> Vec<Map<String, Value>> {
        events
            .iter()
            .filter(|e| e.topic == topic)
            .map(parse)
            .collect()
    }

    fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
        m[k].as_str()
            .unwrap_or_else(|| panic!("{k} is not a string in {m:?}"))
    }

    fn f64_of(m: &Map<String, Value>, k: &str) -> f64 {
        m[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number in {m:?}"))
    }

    fn i64_of(m: &Map<String, Value>, k: &str) -> i64 {
        m[k].as_i64()
            .unwrap_or_else(|| panic!("{k} is not an integer in {m:?}"))
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    fn correlation(xs: &[f64], ys: &[f64]) -> f64 {
        let (mx, my) = (mean(xs), mean(ys));
        let cov: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
        let vx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let vy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
        cov / (vx * vy).sqrt()
    }

    /// A world with many projects and no metrics, for the statistical tests.
    fn big_world() -> Vec<Event> {
        generate(&GenConfig {
            seed: 7,
            days: 120,
            projects: 600,
            services: vec![],
            ..GenConfig::default()
        })
    }

    #[test]
    fn same_config_gives_identical_events() {
        let cfg = GenConfig::default();
        let (a, b) = (generate(&cfg), generate(&cfg));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.topic, &x.key, &x.value, x.ts_micros),
                (y.topic, &y.key, &y.value, y.ts_micros)
            );
        }
        assert_eq!(incidents(&cfg), incidents(&cfg));
        let other = generate(&GenConfig { seed: 43, ..cfg });
        assert!(
            a.iter().zip(&other).any(|(x, y)| x.value != y.value),
            "the seed must matter"
        );
    }

    #[test]
    fn adding_a_project_leaves_the_others_unchanged() {
        let cfg = GenConfig {
            services: vec![],
            projects: 5,
            ..GenConfig::default()
        };
        let five: Vec<Vec<u8>> = generate(&cfg).into_iter().map(|e| e.value).collect();
        let six: HashSet<Vec<u8>> = generate(&GenConfig { projects: 6, ..cfg })
            .into_iter()
            .map(|e| e.value)
            .collect();
        assert!(five.iter().all(|v| six.contains(v)));
    }

    #[test]
    fn default_volume_is_sane_and_sorted() {
        let events = generate(&GenConfig::default());
        assert!(events.len() < 100_000, "{} events", events.len());
        let counts: BTreeMap<&str, usize> = events.iter().fold(BTreeMap::new(), |mut m, e| {
            *m.entry(e.topic).or_default() += 1;
            m
        });
        for topic in TOPICS {
            assert!(
                counts.get(topic).copied().unwrap_or(0) > 0,
                "no {topic} events: {counts:?}"
            );
        }
        assert_eq!(counts[METRIC_EVENTS], 4 * 7 * 1440);
        assert!(events.windows(2).all(|w| {
            (w[0].ts_micros, w[0].topic, &w[0].key) <= (w[1].ts_micros, w[1].topic, &w[1].key)
        }));
        let cfg = GenConfig::default();
        let (lo, hi) = (
            cfg.start.timestamp_micros(),
            cfg.start.timestamp_micros() + 7 * 86_400 * MICROS,
        );
        assert!(events.iter().all(|e| (lo..hi).contains(&e.ts_micros)));
    }

    #[test]
    fn every_event_is_flat_json_matching_its_topic_schema() {
        let events = generate(&GenConfig::default());
        let mut ids = HashSet::new();
        for e in &events {
            let m = parse(e);
            let schema = topic_schema(e.topic).expect("known topic");
            let declared: HashSet<&str> = schema.iter().map(|f| f.0).collect();
            let present: HashSet<&str> = m.keys().map(String::as_str).collect();
            assert_eq!(declared, present, "fields of {e:?}");
            for &(field, ty) in schema {
                let (ty, nullable) = match ty.strip_suffix('?') {
                    Some(t) => (t, true),
                    None => (ty, false),
                };
                let v = &m[field];
                let ok = match (ty, v) {
                    (_, Value::Null) => nullable,
                    ("utf8", Value::String(_)) => true,
                    ("int64", Value::Number(n)) => n.is_i64(),
                    ("float64", Value::Number(n)) => {
                        n.is_f64() && n.as_f64().is_some_and(f64::is_finite)
                    }
                    ("bool", Value::Bool(_)) => true,
                    ("timestamp_us", Value::String(s)) => {
                        s.ends_with('Z') && DateTime::parse_from_rfc3339(s).is_ok()
                    }
                    ("date32", Value::String(s)) => {
                        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() && s.len() == 10
                    }
                    _ => false,
                };
                assert!(
                    ok,
                    "{}.{field}: {v} is not a {ty}{}",
                    e.topic,
                    if nullable { "?" } else { "" }
                );
            }
            let ts = DateTime::parse_from_rfc3339(str_of(&m, "ts")).expect("rfc3339");
            assert_eq!(ts.timestamp_micros(), e.ts_micros);
            let key_field = match e.topic {
                PROJECT_EVENTS => "project_id",
                TASK_EVENTS => "task_id",
                METRIC_EVENTS => "service",
                _ => "user_id",
            };
            assert_eq!(str_of(&m, key_field), e.key);
            assert!(
                ids.insert(str_of(&m, "event_id").to_owned()),
                "duplicate event_id in {m:?}"
            );
        }
    }

    /// The pipelines in `pipelines/` declare exactly the fields and types the generator emits.
    #[test]
    fn pipeline_schemas_match_the_generator() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        for (topic, file) in [
            (PROJECT_EVENTS, "project_events.yaml"),
            (TASK_EVENTS, "task_events.yaml"),
            (METRIC_EVENTS, "metric_events.yaml"),
            (USER_EVENTS, "user_events.yaml"),
        ] {
            let text = std::fs::read_to_string(dir.join(file)).expect(file);
            let doc: serde_norway::Value = serde_norway::from_str(&text).expect(file);
            let topics = &doc["source"]["kafka"]["topics"];
            assert_eq!(topics[0].as_str(), Some(topic), "{file} reads {topics:?}");
            let schema = doc["source"]["schema"].as_mapping().expect("source.schema");
            let declared: Vec<(String, String)> = schema
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap_or("").to_owned(),
                        v.as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let emitted: Vec<(String, String)> = topic_schema(topic)
                .expect("known topic")
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(declared, emitted, "{file}");
        }
    }

    #[test]
    fn metrics_have_daily_and_weekly_seasonality() {
        let cfg = GenConfig::default();
        let events = generate(&cfg);
        let (mut at14, mut at03, mut weekday, mut weekend) = (vec![], vec![], vec![], vec![]);
        for m in of_topic(&events, METRIC_EVENTS)
            .iter()
            .filter(|m| str_of(m, "service") == "api")
        {
            let ts = DateTime::parse_from_rfc3339(str_of(m, "ts")).expect("ts");
            let rps = f64_of(m, "requests_per_s");
            let is_weekend = matches!(
                chrono::Datelike::weekday(&ts),
                chrono::Weekday::Sat | chrono::Weekday::Sun
            );
            match (is_weekend, chrono::Timelike::hour(&ts)) {
                (false, 14) => at14.push(rps),
                (false, 3) => at03.push(rps),
                _ => {}
            }
            if is_weekend {
                weekend.push(rps)
            } else {
                weekday.push(rps)
            }
        }
        assert!(
            mean(&at14) > 2.0 * mean(&at03),
            "14:00 {} vs 03:00 {}",
            mean(&at14),
            mean(&at03)
        );
        assert!(
            mean(&weekday) > 1.3 * mean(&weekend),
            "weekday {} vs weekend {}",
            mean(&weekday),
            mean(&weekend)
        );
        // Normal latency keeps p95 under twice p50 outside incidents.
        let incidents = incidents(&cfg);
        let skewed = events
            .iter()
            .filter(|e| e.topic == METRIC_EVENTS)
            .filter(|e| {
                !incidents
                    .iter()
                    .any(|i| i.service == e.key && i.contains(e.ts_micros))
            })
            .map(parse)
            .filter(|m| f64_of(m, "latency_p95_ms") > 2.0 * f64_of(m, "latency_p50_ms"))
            .count();
        assert_eq!(skewed, 0);
    }

    #[test]
    fn incidents_are_recorded_and_visible_in_the_data() {
        let cfg = GenConfig::default();
        let win = Window::new(&cfg);
        let all = incidents(&cfg);
        assert!(all.len() >= cfg.services.len(), "{all:?}");
        let events = generate(&cfg);
        let metrics: HashMap<(String, i64), Map<String, Value>> = events
            .iter()
            .filter(|e| e.topic == METRIC_EVENTS)
            .map(|e| ((e.key.clone(), e.ts_micros), parse(e)))
            .collect();
        for (si, service) in cfg.services.iter().enumerate() {
            let mine: Vec<Incident> = all
                .iter()
                .filter(|i| &i.service == service)
                .cloned()
                .collect();
            assert!(!mine.is_empty(), "no incident for {service}");
            let clean = metric_rows(&cfg, &win, si, &[]);
            let dirty = metric_rows(&cfg, &win, si, &mine);
            for (c, d) in clean.iter().zip(&dirty) {
                let ts = win.micros(c.secs);
                // The events carry the injected series.
                assert_eq!(
                    f64_of(&metrics[&(service.clone(), ts)], "requests_per_s"),
                    d.requests_per_s
                );
                let Some(inc) = mine.iter().find(|i| i.contains(ts)) else {
                    assert_eq!(c.requests_per_s, d.requests_per_s);
                    assert_eq!(c.latency_p95_ms, d.latency_p95_ms);
                    assert_eq!(c.error_rate, d.error_rate);
                    continue;
                };
                let visible = match inc.kind {
                    IncidentKind::Spike => d.requests_per_s > 2.0 * c.requests_per_s,
                    IncidentKind::LevelShift => {
                        let r = d.requests_per_s / c.requests_per_s;
                        !(0.7..=1.3).contains(&r)
                    }
                    IncidentKind::LatencyDegradation => {
                        d.latency_p95_ms > 2.5 * c.latency_p95_ms
                            && d.latency_p95_ms > 2.0 * d.latency_p50_ms
                    }
                    IncidentKind::ErrorBurst => d.error_rate > c.error_rate + 0.04,
                };
                assert!(visible, "{inc:?} not visible at {ts}: clean {c:?} vs {d:?}");
            }
        }
    }

    #[test]
    fn risk_outcome_follows_its_drivers() {
        let events = big_world();
        let outcomes: Vec<Map<String, Value>> = of_topic(&events, PROJECT_EVENTS)
            .into_iter()
            .filter(|m| matches!(str_of(m, "event_type"), "completed" | "cancelled"))
            .collect();
        assert_eq!(outcomes.len(), 600, "every project ends inside the window");
        let missed = |group: &[&Map<String, Value>]| {
            group
                .iter()
                .filter(|m| m["missed_deadline"] == Value::Bool(true))
                .count() as f64
                / group.len() as f64
        };
        let all: Vec<&Map<String, Value>> = outcomes.iter().collect();
        let base = missed(&all);
        assert!(
            (0.2..0.7).contains(&base),
            "base rate of missed deadlines {base}"
        );
        let pressure = |m: &Map<String, Value>| i64_of(m, "churn") + i64_of(m, "scope_changes");
        let high: Vec<_> = outcomes.iter().filter(|m| pressure(m) >= 4).collect();
        let low: Vec<_> = outcomes.iter().filter(|m| pressure(m) <= 1).collect();
        assert!(
            high.len() >= 30 && low.len() >= 30,
            "{} high, {} low",
            high.len(),
            low.len()
        );
        let (h, l) = (missed(&high), missed(&low));
        assert!(
            h > l + 0.3,
            "missed deadline: high churn+scope {h}, low {l}"
        );
        // Over budget follows the burn rate seen half-way through.
        let mut half: HashMap<String, f64> = HashMap::new();
        for m in of_topic(&events, PROJECT_EVENTS) {
            let pp = f64_of(&m, "planned_progress");
            if str_of(&m, "event_type") == "budget_update" && (0.45..0.55).contains(&pp) {
                half.insert(
                    str_of(&m, "project_id").to_owned(),
                    f64_of(&m, "spent") / f64_of(&m, "budget") / pp,
                );
            }
        }
        let (burn, over): (Vec<f64>, Vec<f64>) = outcomes
            .iter()
            .filter_map(|m| {
                let b = half.get(str_of(m, "project_id"))?;
                Some((
                    *b,
                    if m["over_budget"] == Value::Bool(true) {
                        1.0
                    } else {
                        0.0
                    },
                ))
            })
            .unzip();
        assert!(
            correlation(&burn, &over) > 0.3,
            "burn/over-budget correlation {}",
            correlation(&burn, &over)
        );
        // Outcomes agree with the timestamps.
        for m in outcomes
            .iter()
            .filter(|m| str_of(m, "event_type") == "completed")
        {
            let late = str_of(m, "ts") > str_of(m, "deadline");
            assert_eq!(m["missed_deadline"], Value::Bool(late), "{m:?}");
            assert_eq!(
                m["over_budget"],
                Value::Bool(f64_of(m, "spent") > f64_of(m, "budget")),
                "{m:?}"
            );
        }
    }

    #[test]
    fn effort_follows_estimate_and_experience() {
        let events = big_world();
        let done: Vec<Map<String, Value>> = of_topic(&events, TASK_EVENTS)
            .into_iter()
            .filter(|m| str_of(m, "status") == "done")
            .collect();
        assert!(done.len() > 1000);
        let est: Vec<f64> = done
            .iter()
            .map(|m| f64_of(m, "estimate_hours").ln())
            .collect();
        let act: Vec<f64> = done.iter().map(|m| f64_of(m, "hours").ln()).collect();
        let r = correlation(&est, &act);
        assert!(r > 0.8, "log estimate vs log actual correlation {r}");
        let ratio = |lo: f64, hi: f64| {
            let xs: Vec<f64> = done
                .iter()
                .filter(|m| (lo..hi).contains(&f64_of(m, "assignee_experience_years")))
                .map(|m| f64_of(m, "hours") / f64_of(m, "estimate_hours"))
                .collect();
            mean(&xs)
        };
        let (novice, veteran) = (ratio(0.0, 2.0), ratio(8.0, 30.0));
        assert!(
            novice > veteran + 0.2,
            "overrun novice {novice} vs veteran {veteran}"
        );
    }

    #[test]
    fn task_lifecycles_are_consistent() {
        let events = generate(&GenConfig::default());
        let mut by_task: BTreeMap<String, Vec<Map<String, Value>>> = BTreeMap::new();
        for m in of_topic(&events, TASK_EVENTS) {
            by_task
                .entry(str_of(&m, "task_id").to_owned())
                .or_default()
                .push(m);
        }
        let allowed: HashSet<(&str, &str)> = [
            ("todo", "in_progress"),
            ("todo", "deleted"),
            ("in_progress", "blocked"),
            ("blocked", "in_progress"),
            ("in_progress", "review"),
            ("review", "in_progress"),
            ("review", "done"),
            ("in_progress", "deleted"),
            ("blocked", "deleted"),
            ("review", "deleted"),
        ]
        .into_iter()
        .collect();
        let mut statuses = HashSet::new();
        for (task, evs) in &by_task {
            assert_eq!(str_of(&evs[0], "status"), "todo", "{task}");
            assert!(evs[0]["hours"].is_null() && evs[0]["prev_status"].is_null());
            for w in evs.windows(2) {
                let (a, b) = (str_of(&w[0], "status"), str_of(&w[1], "status"));
                assert!(allowed.contains(&(a, b)), "{task}: {a} -> {b}");
                assert_eq!(w[1]["prev_status"].as_str(), Some(a));
                if let (Some(x), Some(y)) = (w[0]["hours"].as_f64(), w[1]["hours"].as_f64()) {
                    assert!(x <= y, "{task}: hours go down");
                }
            }
            statuses.extend(evs.iter().map(|m| str_of(m, "status").to_owned()));
        }
        for s in [
            "todo",
            "in_progress",
            "review",
            "done",
            "blocked",
            "deleted",
        ] {
            assert!(statuses.contains(s), "no task ever {s}");
        }
    }

    #[test]
    fn odd_configs_do_not_panic() {
        for cfg in [
            GenConfig {
                days: 0,
                ..GenConfig::default()
            },
            GenConfig {
                days: 1,
                projects: 3,
                metric_step_secs: 0,
                ..GenConfig::default()
            },
            GenConfig {
                projects: 0,
                services: vec!["checkout".into()],
                ..GenConfig::default()
            },
        ] {
            let events = generate(&cfg);
            if cfg.days == 0 {
                assert!(events.is_empty());
            }
        }
    }
}
