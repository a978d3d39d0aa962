//! Tasks: the effort model (estimate, task type, complexity and assignee experience) and
//! each task's status transitions as task events.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::common::{Window, event, normal, pick, round};
use super::projects::ProjectPlan;
use super::team::Member;
use super::{Event, TASK_EVENTS};

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

pub(super) fn project_task(
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
