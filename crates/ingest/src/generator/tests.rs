//! Unit tests of the generator: determinism, volume and ordering, schemas, seasonality,
//! incidents, the risk and effort models, and task lifecycles.

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
