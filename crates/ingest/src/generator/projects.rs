//! Projects: the hidden plan of each project (the risk model that decides its schedule,
//! budget and outcome), its lifecycle as project events, and the world of one project
//! (team, lifecycle and tasks) drawn from the project's own random stream.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::common::{Window, event, normal, poisson, round, stream};
use super::tasks::project_task;
use super::team::Team;
use super::{DAY, Event, HOUR, PROJECT_EVENTS, STREAM_PROJECT, Shift};

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

/// The hidden drivers and the resulting outcome of one project (times in window seconds).
#[derive(Debug, Clone)]
pub(super) struct ProjectPlan {
    pub(super) start: f64,
    pub(super) planned: f64,
    pub(super) team_size: u32,
    pub(super) budget: f64,
    pub(super) burn: f64,
    /// Multiplier of the planned duration the work really needs.
    pub(super) schedule_factor: f64,
    /// When the project ends (completion or cancellation), relative to `start`.
    pub(super) end: f64,
    pub(super) cancelled: bool,
    /// Scope change times relative to `start` (only those before `end`).
    pub(super) scope_times: Vec<f64>,
    /// Churn times relative to `start` (only those before `end`).
    pub(super) churn_times: Vec<f64>,
}

impl ProjectPlan {
    fn draw(rng: &mut ChaCha8Rng, win: &Window, shift: &Shift) -> ProjectPlan {
        let w = win.secs as f64;
        let planned = (w * rng.random_range(0.25..0.40))
            .min(DAY * rng.random_range(20.0..120.0))
            .max(HOUR);
        let latest_start = (w - 1.8 * planned - HOUR).max(0.0);
        let start = rng.random_range(0.0..=latest_start).floor();
        let (lo, hi) = shift.team_sizes;
        let team_size = rng.random_range(lo.max(1)..=hi.max(lo.max(1)));
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
        let leave_p =
            ((0.02 + 0.3 * rng.random::<f64>().powi(3)) * shift.churn_scale).clamp(0.0, 0.95);
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

    pub(super) fn actual(&self) -> f64 {
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
pub(super) fn project_world(
    seed: u64,
    index: usize,
    win: &Window,
    shift: &Shift,
    out: &mut Vec<Event>,
) {
    let mut rng = stream(seed, STREAM_PROJECT + index as u64);
    let plan = ProjectPlan::draw(&mut rng, win, shift);
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

pub(super) struct ProjectIds {
    pub(super) n: usize,
    pub(super) project_id: String,
    pub(super) team_id: String,
    pub(super) project_name: String,
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
