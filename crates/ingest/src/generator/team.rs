//! Project teams: members with their roles, experience and rates, churn (leaves and
//! replacements) and promotions, replayed as user events.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::common::{Window, event, normal, pick, round};
use super::projects::{ProjectIds, ProjectPlan};
use super::{Event, USER_EVENTS};

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
pub(super) struct Member {
    pub(super) id: String,
    role: Role,
    pub(super) experience: f64,
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

    pub(super) fn active_at(&self, t: f64) -> bool {
        self.joined <= t && self.left.is_none_or(|l| t < l)
    }
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
pub(super) struct Team {
    pub(super) members: Vec<Member>,
    changes: Vec<UserChange>,
    /// When replacements joined, relative to the project start.
    pub(super) replacements: Vec<f64>,
}

impl Team {
    /// Initial members join shortly before the project starts; at each churn time a random
    /// active member leaves and 60% are replaced a little later; some members are promoted.
    pub(super) fn draw(rng: &mut ChaCha8Rng, plan: &ProjectPlan, n: usize) -> Team {
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

    pub(super) fn size_at(&self, at: f64) -> usize {
        self.members.iter().filter(|m| m.active_at(at)).count()
    }

    /// The user events, replaying role changes (a promotion raises the rate by 12%).
    pub(super) fn emit(&self, win: &Window, ids: &ProjectIds, out: &mut Vec<Event>) {
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
