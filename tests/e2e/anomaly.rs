//! An anomaly stage end to end: metric samples with an injected spike through `ymera run`
//! into a lake table with `anomaly_score`/`is_anomaly`, one alert in the alerts table and
//! one webhook call; the run split in two (state restored from an older checkpoint, the
//! records after it replayed through the detector only) scores exactly like one
//! uninterrupted run, and running again adds no alert and calls no webhook again.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, BooleanArray, Float64Array, StringArray, TimestampMicrosecondArray};

use crate::support::*;

const START_US: i64 = 1_793_491_200_000_000; // 2026-11-01T00:00:00Z
const SPIKE: std::ops::Range<i64> = 330..336;

/// Sample `i` of service `api`: one a minute, a steady rate with a little deterministic
/// noise, ten times higher during [`SPIKE`].
fn sample(i: i64) -> (Vec<u8>, Vec<u8>) {
    let base = 100.0 + ((i * 7919) % 13) as f64 * 0.5;
    let v = if SPIKE.contains(&i) {
        base * 10.0
    } else {
        base
    };
    let value = format!(
        r#"{{"event_id":"met-api-{i:07}","ts":{},"service":"api","requests_per_s":{v}}}"#,
        START_US + i * 60_000_000
    );
    (b"api".to_vec(), value.into_bytes())
}

fn yaml(topic: &str, group: &str, webhook: &str) -> String {
    format!(
        r#"name: anomalies
source:
  kafka:
    brokers: "${{YMERA_TEST_BROKERS}}"
    topics: [{topic}]
    group_id: {group}
    start: earliest
  schema:
    event_id: utf8
    ts: timestamp_us
    service: utf8
    requests_per_s: float64
  event_time: ts
  on_bad_record: drop
batch: {{ max_records: 50 }}
transforms:
  - name: enriched
    sql: SELECT event_id, ts, service, requests_per_s FROM input
  - name: scored
    anomaly:
      key: [service]
      time: ts
      value: requests_per_s
      detector: {{ detectors: [robust_z], threshold: 0.9, warmup_points: 100 }}
      alerts:
        table: anomaly_alerts
        min_duration: 1m
        cooldown: 30m
        webhook: {{ url: "{webhook}", timeout: 5s }}
  - name: flagged
    sql: SELECT event_id, anomaly_score, is_anomaly FROM scored
sinks:
  - lake: {{ table: metric_scores, input: scored, partition_by: [dt],
            rolling: {{ max_rows: 50, max_interval: 1s }} }}
"#
    )
}

/// A webhook receiver: records every body posted, answers 200.
fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        seen.lock().unwrap().push(body.to_string());
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (url, got)
}

/// (event_id -> (score, is_anomaly)) of the scores table.
fn scores(lake: &Path) -> BTreeMap<String, (f64, bool)> {
    let mut out = BTreeMap::new();
    for f in parquet_files(&lake.join("metric_scores")) {
        for b in read_parquet(&f) {
            let col = |n: &str| {
                b.column_by_name(n)
                    .unwrap_or_else(|| panic!("column {n}"))
                    .clone()
            };
            let ids = col("event_id");
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let s = col("anomaly_score");
            let s = s.as_any().downcast_ref::<Float64Array>().unwrap();
            let a = col("is_anomaly");
            let a = a.as_any().downcast_ref::<BooleanArray>().unwrap();
            for i in 0..b.num_rows() {
                let prev = out.insert(ids.value(i).to_string(), (s.value(i), a.value(i)));
                assert!(prev.is_none(), "{} is twice in the lake", ids.value(i));
            }
        }
    }
    out
}

/// (alert_id, event, opened_at µs) rows of the alerts table.
fn alerts(lake: &Path) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for f in parquet_files(&lake.join("anomaly_alerts")) {
        for b in read_parquet(&f) {
            let ids = b.column_by_name("alert_id").unwrap();
            let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
            let ev = b.column_by_name("event").unwrap();
            let ev = ev.as_any().downcast_ref::<StringArray>().unwrap();
            let at = b.column_by_name("opened_at").unwrap();
            let at = at
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            for i in 0..b.num_rows() {
                out.push((
                    ids.value(i).to_string(),
                    ev.value(i).to_string(),
                    at.value(i),
                ));
            }
        }
    }
    out.sort();
    out
}

fn checkpoints(lake: &Path) -> usize {
    std::fs::read_dir(lake.join("_state/anomalies"))
        .map(|d| d.flatten().count())
        .unwrap_or(0)
}

#[test]
fn a_spike_is_scored_alerted_once_and_a_restart_resumes_the_same_scores() {
    let rt = runtime();
    let topic = unique("metrics");
    let broker = DevBroker::start(&[(&topic, 1)]);
    let (url, posted) = webhook();
    let work = tempfile::tempdir().unwrap();

    // the first 300 samples, then the rest (with the spike) in a second run
    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(0..300).map(sample).collect::<Vec<_>>(),
    );
    let split = work.path().join("split");
    let dir = pipeline_dir(&yaml(&topic, &unique("g"), &url));
    run_until_idle_on(&broker.bootstrap, dir.path(), &split);
    assert!(
        checkpoints(&split) >= 1,
        "no anomaly-state checkpoint was written"
    );
    assert!(alerts(&split).is_empty(), "{:?}", alerts(&split));
    // lose the newest checkpoint (as if the process died between the commit and writing
    // it): the next run restores an older one and feeds the records from there to the
    // sinks' position through the detector without writing them
    let mut states: Vec<_> = std::fs::read_dir(split.join("_state/anomalies"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    states.sort();
    assert!(states.len() >= 2, "{states:?}");
    std::fs::remove_file(states.last().unwrap()).unwrap();
    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(300..400).map(sample).collect::<Vec<_>>(),
    );
    run_until_idle_on(&broker.bootstrap, dir.path(), &split);

    let split_scores = scores(&split);
    assert_eq!(split_scores.len(), 400);
    let flagged: Vec<i64> = split_scores
        .iter()
        .filter(|(_, (_, a))| *a)
        .map(|(id, _)| id.trim_start_matches("met-api-").parse().unwrap())
        .collect();
    assert!(
        flagged.contains(&SPIKE.start),
        "the spike's first sample is flagged: flagged {flagged:?}"
    );
    assert!(
        flagged
            .iter()
            .all(|i| (SPIKE.start..SPIKE.end + 5).contains(i)),
        "only the spike is flagged: {flagged:?}"
    );
    let once = alerts(&split);
    let opened: Vec<_> = once.iter().filter(|a| a.1 == "opened").collect();
    assert_eq!(opened.len(), 1, "exactly one alert: {once:?}");
    assert_eq!(
        opened[0].2,
        START_US + (SPIKE.start + 1) * 60_000_000,
        "it opens once the spike has held a minute"
    );
    assert!(
        once.iter().all(|a| a.0 == opened[0].0),
        "open and close rows of the one alert: {once:?}"
    );
    let bodies = posted.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "one webhook call: {bodies:?}");
    assert!(bodies[0].contains(&opened[0].0), "{bodies:?}");

    // running again reads nothing new: no alert, no webhook call twice
    run_until_idle_on(&broker.bootstrap, dir.path(), &split);
    assert_eq!(alerts(&split), once);
    assert_eq!(scores(&split), split_scores);
    assert_eq!(posted.lock().unwrap().len(), 1);

    // one uninterrupted run (another group, another lake) gives the same scores: the state
    // restored from the checkpoint continued exactly
    let whole = work.path().join("whole");
    let (url2, _) = webhook();
    let dir2 = pipeline_dir(&yaml(&topic, &unique("g"), &url2));
    run_until_idle_on(&broker.bootstrap, dir2.path(), &whole);
    assert_eq!(scores(&whole), split_scores);
    assert_eq!(alerts(&whole), once);
}

/// The detector's alert through the alerts API of `ymera serve` (this lake, a SQLite
/// warehouse; broker: `ymera broker`'s mock cluster): listed open, acknowledged, resolved,
/// each change audited and kept in the warehouse; refusals name the problem.
#[test]
fn the_alerts_api_lists_acknowledges_and_resolves_the_detectors_alert() {
    let rt = runtime();
    let topic = unique("metrics");
    let broker = DevBroker::start(&[(&topic, 1)]);
    let (url, _posted) = webhook();
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(0..400).map(sample).collect::<Vec<_>>(),
    );
    let dir = pipeline_dir(&yaml(&topic, &unique("g"), &url));
    run_until_idle_on(&broker.bootstrap, dir.path(), &lake);
    let id = alerts(&lake)[0].0.clone();
    let server = Server::start_in(work, &[]);
    let call = |method: &str, path: &str, token: &str| -> (u16, serde_json::Value) {
        let body = (method == "POST").then_some(r#"{"note": "paged the on-call"}"#);
        let (s, b) = http(server.port, method, path, Some(token), body).expect("request");
        (
            s,
            serde_json::from_str(&b).unwrap_or(serde_json::Value::String(b)),
        )
    };
    let agent = server.agent.clone();
    let listed = |state: &str| {
        let (s, body) = call("GET", &format!("/v1/alerts?state={state}"), &agent);
        assert_eq!(s, 200, "{body}");
        body["alerts"].as_array().unwrap().clone()
    };

    let (s, body) = call("GET", "/v1/alerts", &agent);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["count"], 1, "{body}");
    let a = &body["alerts"][0];
    assert_eq!(a["alert_id"], id.as_str());
    assert_eq!(
        (&a["state"], &a["key"], &a["stage"], &a["table"]),
        (
            &"open".into(),
            &"api".into(),
            &"scored".into(),
            &"anomaly_alerts".into()
        )
    );
    // the spike starts at minute 330 and has held a minute at 331 (05:31)
    assert_eq!(a["opened_at"], "2026-11-01T05:31:00Z", "{a}");
    assert!(a["closed_at"].is_string(), "the spike ended: {a}");
    assert!(a["peak_score"].as_f64().unwrap() >= 0.9, "{a}");
    assert_eq!(listed("acknowledged").len(), 0);

    let ack = format!("/v1/alerts/{id}/acknowledge");
    let resolve = format!("/v1/alerts/{id}/resolve");
    let (s, body) = call("POST", &ack, &server.analyst);
    assert_eq!(s, 403, "analysts read alerts, agents act on them: {body}");
    let (s, body) = call("POST", &ack, &agent);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["alert"]["state"], "acknowledged");
    assert_eq!(body["alert"]["note"], "paged the on-call");
    let by = body["alert"]["acknowledged_by"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        agent.contains(&by),
        "acknowledged by the agent's key id: {by}"
    );
    let (s, body) = call("POST", &ack, &agent);
    assert_eq!(
        (s, &body["changed"]),
        (200, &false.into()),
        "a retry changes nothing"
    );
    assert_eq!(listed("open").len(), 0);
    assert_eq!(listed("acknowledged").len(), 1);
    let (s, body) = call("POST", &resolve, &agent);
    assert_eq!(
        (s, &body["alert"]["state"]),
        (200, &"resolved".into()),
        "{body}"
    );
    assert_eq!(
        body["alert"]["acknowledged_by"],
        by.as_str(),
        "kept: {body}"
    );
    let (s, body) = call("POST", &ack, &agent);
    assert_eq!(s, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is resolved"),
        "{body}"
    );
    assert_eq!(listed("resolved").len(), 1);
    // an analyst lists them too
    let (s, body) = server.get("/v1/alerts?state=resolved&limit=5");
    assert_eq!(s, 200, "{body}");

    for (method, path, status, says) in [
        (
            "POST",
            "/v1/alerts/ffffffffffffffff/resolve",
            404,
            "no alert `ffffffffffffffff`",
        ),
        ("POST", "/v1/alerts/../resolve", 404, ""),
        (
            "POST",
            "/v1/alerts/1%27%20OR%201=1/resolve",
            404,
            "16 hex digits",
        ),
        (
            "GET",
            "/v1/alerts?state=closed",
            400,
            "expected open, acknowledged or resolved",
        ),
        ("GET", "/v1/alerts?limit=0", 400, "limit 0"),
        (
            "GET",
            "/v1/alerts?colour=red",
            400,
            "query parameters are `state` and `limit`",
        ),
    ] {
        let (s, body) = call(method, path, &agent);
        assert_eq!(s, status, "{method} {path}: {body}");
        assert!(body.to_string().contains(says), "{method} {path}: {body}");
    }

    // the states are the warehouse's (analysts can read them), each change audited
    let out = succeeded(
        ymera()
            .args(["sql", "--format", "csv"])
            .arg("SELECT alert_id, state, acknowledged_by, resolved_by FROM _ymera_alert_states")
            .current_dir(server.work.path())
            .envs(env_of(server.work.path()))
            .output()
            .unwrap(),
    );
    assert!(out.contains(&format!("{id},resolved,{by},{by}")), "{out}");
    let audit = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print('\\n'.join(f'{a} {t} {o}' for a,t,o in c.execute(\"SELECT action,target,outcome FROM _ymera_audit WHERE action LIKE 'alerts.%' ORDER BY seq\")))",
        )
        .arg(server.work.path().join("warehouse.db"))
        .output()
        .unwrap();
    let audit = succeeded(audit);
    assert_eq!(
        audit.lines().collect::<Vec<_>>(),
        [
            format!("alerts.acknowledge {id} 200"),
            format!("alerts.acknowledge {id} 200"),
            format!("alerts.resolve {id} 200"),
            format!("alerts.acknowledge {id} 409"),
        ],
        "{audit}"
    );

    // the API document, public, names these routes
    let (s, doc) = http(server.port, "GET", "/openapi.json", None, None).unwrap();
    assert_eq!(s, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/alerts/{id}/acknowledge"]["post"].is_object());
}
