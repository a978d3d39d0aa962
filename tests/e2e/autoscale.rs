//! The autoscaler's forecast endpoint on real metric events: `ymera gen --live` → broker →
//! the repository's metric_events pipeline → lake → `ymera serve` →
//! `GET /v1/autoscale/{service}/forecast`, on fresh, stale and poor data, with the role
//! check and the forecaster's registry version.

use std::ffi::OsString;
use std::process::{Child, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::support::*;

/// One metric event as pipelines/metric_events.yaml declares it.
fn metric_event(service: &str, ts: i64, rps: f64) -> (Vec<u8>, Vec<u8>) {
    let t = DateTime::<Utc>::from_timestamp(ts, 0).unwrap();
    let v = json!({
        "event_id": format!("met-{service}-{ts}"),
        "ts": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "service": service,
        "requests_per_s": rps,
        "latency_p50_ms": 40.0,
        "latency_p95_ms": 70.0,
        "cpu": 0.5,
        "queue_depth": 1,
        "error_rate": 0.001,
    });
    (service.as_bytes().to_vec(), v.to_string().into_bytes())
}

/// Three days to now of a clean daily cycle whose last 12 hours are replaced by a
/// different regime (the level drops by half and the cycle inverts): the forecasts of
/// the last day's backtest origins miss by far more than the history's day-to-day
/// change, so the recent MASE is well above 1.
fn regime_change(service: &str, now: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let end = now - now.rem_euclid(60);
    let start = end - 3 * 86_400;
    (0..(3 * 86_400 / 60))
        .map(|i| {
            let ts = start + i * 60;
            let phase = (ts.rem_euclid(86_400)) as f64 / 86_400.0 * std::f64::consts::TAU;
            let wiggle = ((i * 7919) % 11) as f64 * 0.2;
            let rps = if ts < end - 12 * 3600 {
                200.0 + 80.0 * phase.sin() + wiggle
            } else {
                100.0 - 80.0 * phase.sin() + wiggle
            };
            metric_event(service, ts, rps)
        })
        .collect()
}

fn get(port: u16, path: &str, token: Option<&str>) -> (u16, Value) {
    let (s, body) = http(port, "GET", path, token, None).expect("request");
    (
        s,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

#[test]
fn forecast_endpoint_serves_fresh_forecasts_and_falls_back_on_stale_and_poor_data() {
    let broker = DevBroker::start(&[("metric-events", 2)]);
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let pipelines = work.path().join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::copy(
        repo().join("pipelines/metric_events.yaml"),
        pipelines.join("metric_events.yaml"),
    )
    .unwrap();
    let env: Vec<(String, OsString)> = vec![
        ("YMERA_BROKERS".into(), broker.bootstrap.clone().into()),
        ("YMERA__LAKE__URL".into(), lake.clone().into()),
        (
            "YMERA__WAREHOUSE__URL".into(),
            format!("sqlite://{}/warehouse.db", work.path().display()).into(),
        ),
        ("YMERA__LOG__LEVEL".into(), "warn".into()),
        (
            "YMERA__AUTH__ADMIN_KEY_FILE".into(),
            work.path().join("admin.key").into(),
        ),
        (
            "YMERA__AUTOSCALE__SERVICES__API__CAPACITY_PER_REPLICA".into(),
            "70".into(),
        ),
        (
            "YMERA__AUTOSCALE__SERVICES__API__MIN_REPLICAS".into(),
            "2".into(),
        ),
        (
            "YMERA__AUTOSCALE__SERVICES__API__MAX_REPLICAS".into(),
            "20".into(),
        ),
        ("YMERA__AUTOSCALE__WINDOW".into(), "30d".into()),
    ];
    let rt = runtime();
    let now = Utc::now().timestamp();
    // fresh: the generator's `api` service, three days up to the present minute
    produce_generated(
        &rt,
        &broker.bootstrap,
        &work.path().join("live"),
        &[
            "--live",
            "--days",
            "8",
            "--projects",
            "1",
            "--seed",
            "5",
            "--services",
            "api",
        ],
        &[("metric-events", "service")],
    );
    // stale: `billing`, three days that ended three days ago
    let old_start = (Utc::now() - chrono::Duration::days(6))
        .format("%Y-%m-%d")
        .to_string();
    produce_generated(
        &rt,
        &broker.bootstrap,
        &work.path().join("old"),
        &[
            "--start",
            &old_start,
            "--days",
            "3",
            "--projects",
            "1",
            "--services",
            "billing",
        ],
        &[("metric-events", "service")],
    );
    // poor: a regime change in the last 12 hours
    produce_to(
        &rt,
        &broker.bootstrap,
        "metric-events",
        &regime_change("flaky", now),
    );

    let mut run = ymera()
        .args(["run", "--stop-when-idle", "4s"])
        .arg(&pipelines)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("YMERA__RUN__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut run, Duration::from_secs(300)).expect("ymera run hung");
    assert!(status.success(), "ymera run failed");

    let autoscaler = create_key(&env, "autoscaler");
    let agent = create_key(&env, "agent");

    let port = free_port();
    let log = work.path().join("serve.log");
    let mut serve: Child = ymera()
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("YMERA__SERVE__LISTEN", format!("127.0.0.1:{port}"))
        .env("YMERA__LOG__LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || {
            http_get(port, "/health/ready").is_some_and(|(s, _)| s == 200)
        }),
        "ymera serve did not become ready: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let path = "/v1/autoscale/api/forecast?metric=rps&horizon=PT30M&step=PT1M&lead=PT5M&q=0.9";

    // --- roles: autoscaler only (admin too, by policy); agent 403, none 401
    assert_eq!(get(port, path, None).0, 401);
    assert_eq!(get(port, path, Some(&agent)).0, 403);

    // --- fresh data: a forecast, not the fallback
    let (s, body) = get(port, path, Some(&autoscaler));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["fallback"]["active"], false, "{body:#}");
    // MSTL + AutoETS, or seasonal naive when that did better in the backtest
    let algorithm = body["model"]["algorithm"].as_str().unwrap().to_string();
    assert!(
        ["mstl+autoets", "seasonal_naive"].contains(&algorithm.as_str()),
        "{body:#}"
    );
    let points = body["points"].as_array().unwrap();
    assert!((30..=31).contains(&points.len()), "{} points", points.len());
    let generated = DateTime::parse_from_rfc3339(body["generated_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    // keda.value by hand: the highest hi80 (q = 0.9) among the points in [now, now + 5m]
    let mut by_hand = f64::NEG_INFINITY;
    for p in points {
        let ts = DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap())
            .unwrap()
            .timestamp();
        assert!(ts >= generated && ts <= generated + 1800, "{p}");
        let (lo95, lo80, p50, hi80, hi95) = (
            p["lo95"].as_f64().unwrap(),
            p["lo80"].as_f64().unwrap(),
            p["p50"].as_f64().unwrap(),
            p["hi80"].as_f64().unwrap(),
            p["hi95"].as_f64().unwrap(),
        );
        assert!(
            lo95 <= lo80 && lo80 <= p50 && p50 <= hi80 && hi80 <= hi95,
            "{p}"
        );
        if ts <= generated + 300 {
            by_hand = by_hand.max(hi80);
        }
    }
    let value = body["keda"]["value"].as_f64().unwrap();
    assert!(
        (value - by_hand).abs() < 1e-9,
        "keda.value {value} ≠ {by_hand}"
    );
    // recommended_replicas = clamp(ceil(value / 70), 2, 20)
    let replicas = ((by_hand / 70.0).ceil() as u64).clamp(2, 20);
    assert_eq!(body["recommended_replicas"], replicas, "{body:#}");
    let q = &body["quality"];
    let mase = q["mase"].as_f64().unwrap();
    assert!(mase < 1.0, "{q}");
    assert!(mase <= q["model_mase"].as_f64().unwrap() + 1e-12, "{q}");
    assert!(q["coverage80"].as_f64().unwrap() > 0.0, "{q}");
    eprintln!(
        "api: keda.value {value:.1} → {replicas} replicas; serving {algorithm}, backtest MASE {mase:.3} (MSTL {}, seasonal naive {}), 80% coverage {}",
        q["model_mase"], q["baseline_mase"], q["coverage80"]
    );
    // q = 0.5 reads p50
    let (_, b50) = get(port, &path.replace("q=0.9", "q=0.5"), Some(&autoscaler));
    let p50_max = b50["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            DateTime::parse_from_rfc3339(p["ts"].as_str().unwrap())
                .unwrap()
                .timestamp()
                <= DateTime::parse_from_rfc3339(b50["generated_at"].as_str().unwrap())
                    .unwrap()
                    .timestamp()
                    + 300
        })
        .map(|p| p["p50"].as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        (b50["keda"]["value"].as_f64().unwrap() - p50_max).abs() < 1e-9,
        "{b50:#}"
    );
    // a bad parameter is a 400 naming it
    let (s, body) = get(port, &path.replace("q=0.9", "q=0.7"), Some(&autoscaler));
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().contains("q=0.7"), "{body}");

    // the backtest was registered as a version of the forecaster: its recipe and figures
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(lake.join("_models/load-api-rps/1/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["task"], "forecast");
    assert!((manifest["metrics"]["served_mase"].as_f64().unwrap() - mase).abs() < 1e-12);
    assert_eq!(manifest["algorithm"], algorithm.as_str());
    let artifact: Value = serde_json::from_str(
        &std::fs::read_to_string(lake.join("_models/load-api-rps/1/artifact.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        artifact["estimator"]["recipe"]["step_seconds"], 300,
        "{artifact:#}"
    );
    assert_eq!(
        artifact["estimator"]["recipe"]["content_sha256"],
        manifest["lineage"]["content_sha256"]
    );

    // --- stale data: the observed load, with the reason
    let (s, body) = get(port, &path.replace("/api/", "/billing/"), Some(&autoscaler));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["fallback"]["active"], true, "{body:#}");
    let reason = body["fallback"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("stale"), "{reason}");
    assert_eq!(body["keda"]["value"], body["observed"]["value"], "{body:#}");
    assert!(
        body["recommended_replicas"].is_null(),
        "billing has no capacity setting"
    );

    // --- poor data: recent MASE ≥ 1
    let (s, body) = get(port, &path.replace("/api/", "/flaky/"), Some(&autoscaler));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["fallback"]["active"], true, "{body:#}");
    let reason = body["fallback"]["reason"].as_str().unwrap();
    assert!(reason.contains("MASE"), "{reason}");
    assert_eq!(body["keda"]["value"], body["observed"]["value"], "{body:#}");

    // --- a service with no metric events: still an answer, never an error
    let (s, body) = get(port, &path.replace("/api/", "/nobody/"), Some(&autoscaler));
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["fallback"]["active"], true, "{body:#}");
    assert!(
        body["fallback"]["reason"]
            .as_str()
            .unwrap()
            .contains("no `requests_per_s` samples"),
        "{body:#}"
    );

    let _ = serve.kill();
    let _ = serve.wait();
}

/// `ymera run` records its own input, and the autoscaler turns it into a replica count
/// for `ymera run` that divides the partitions. Broker: `ymera broker` (librdkafka's
/// mock cluster), one topic of 4 partitions, ~450 records/s for ~2.5 minutes.
#[test]
fn ymera_run_records_its_input_rate_and_the_autoscaler_answers_even_replica_counts() {
    let broker = DevBroker::start(&[("rate-in", 4)]);
    let work = tempfile::tempdir().unwrap();
    let lake = work.path().join("lake");
    let dir = pipeline_dir(&pipeline_yaml(
        "rate",
        "rate-in",
        "rate-group",
        "{ path: _dlq/rate }",
        "",
    ));
    // 500 records every 1.1 s until the run has written its first minutes
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let (bootstrap, stop) = (broker.bootstrap.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let t0 = std::time::Instant::now();
            let mut seq = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && seq < 500_000 {
                let batch: Vec<_> = (seq..seq + 500).map(seq_record).collect();
                produce_to(&rt, &bootstrap, "rate-in", &batch);
                seq += 500;
                let due = t0 + Duration::from_millis(1100 * (seq / 500) as u64);
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            }
        })
    };
    let mut run = spawn_run_env(
        &broker.bootstrap,
        dir.path(),
        &lake,
        &[],
        &[("YMERA__RUN__INPUT_RATE_FLUSH", "1m".into())],
    );
    let table = lake.join("ymera_run_input");
    // the first rows: at most three minute boundaries after the start (the first reading
    // may come before the assignment)
    let recorded = wait_for(Duration::from_secs(240), || {
        !parquet_files(&table).is_empty()
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    producer.join().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    let status =
        wait_timeout(&mut run, Duration::from_secs(60)).expect("ymera run stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(recorded, "no file in {}", table.display());

    // one row per owned partition per minute; a full minute of ~454 records/s
    let out = ymera()
        .args(["sql", "--format", "csv"])
        .arg(
            "SELECT ts, count(*) AS rows, max(partitions) AS partitions, sum(records) AS records, \
             sum(records / seconds) AS per_s, min(pipeline) AS pipeline, max(member) AS member \
             FROM ymera_run_input GROUP BY ts ORDER BY ts",
        )
        .env("YMERA__LAKE__URL", &lake)
        .env(
            "YMERA__WAREHOUSE__URL",
            format!("sqlite://{}/wh.db", work.path().display()),
        )
        .output()
        .unwrap();
    let csv = succeeded(out);
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert!(!rows.is_empty(), "{csv}");
    for r in &rows {
        assert_eq!(r[1], "4", "every partition has its row: {csv}");
        assert_eq!(r[2], "4", "{csv}");
        assert_eq!(r[5], "rate", "{csv}");
    }
    // every recorded minute is inside the production: 500 / 1.1 s ≈ 455 records/s, give
    // or take the statistics' 5 s
    let per_s: f64 = rows[0][4].parse().unwrap();
    assert!((300.0..600.0).contains(&per_s), "{per_s} records/s: {csv}");

    // the autoscaler: capacity 200 records/s per replica → ceil(455 / 200) = 3 replicas,
    // which does not divide 4 partitions: it answers 4, as 4 × 200 for KEDA
    let env: Vec<(String, OsString)> = vec![
        ("YMERA__LAKE__URL".into(), lake.clone().into()),
        (
            "YMERA__WAREHOUSE__URL".into(),
            format!("sqlite://{}/wh.db", work.path().display()).into(),
        ),
        ("YMERA__LOG__LEVEL".into(), "warn".into()),
        (
            "YMERA__AUTH__ADMIN_KEY_FILE".into(),
            work.path().join("admin.key").into(),
        ),
        (
            "YMERA__AUTOSCALE__SERVICES__YMERA-RUN__CAPACITY_PER_REPLICA".into(),
            "200".into(),
        ),
        (
            "YMERA__AUTOSCALE__SERVICES__YMERA-RUN__MAX_REPLICAS".into(),
            "12".into(),
        ),
        // the rows are from before now: not stale for this check
        ("YMERA__AUTOSCALE__STALE_AFTER".into(), "1h".into()),
    ];
    let autoscaler = create_key(&env, "autoscaler");
    let port = free_port();
    let mut serve: Child = ymera()
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("YMERA__SERVE__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(60), || {
        http_get(port, "/health/ready").is_some_and(|(s, _)| s == 200)
    }));
    let path = "/v1/autoscale/ymera-run/forecast?metric=records_per_s&horizon=PT30M&step=PT1M&lead=PT5M&q=0.9";
    let (s, body) = get(port, path, Some(&autoscaler));
    // one pipeline's input, and a metric ymera-run does not have
    let (s_one, one) = get(port, &format!("{path}&pipeline=rate"), Some(&autoscaler));
    let (s_bad, bad) = get(
        port,
        "/v1/autoscale/ymera-run/forecast?metric=rps",
        Some(&autoscaler),
    );
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(s, 200, "{body:#}");
    assert_eq!(s_one, 200, "{one:#}");
    assert_eq!(one["backlog"]["pipelines"], json!(["rate"]), "{one:#}");
    assert_eq!(s_bad, 404, "{bad:#}");
    assert_eq!(body["service"], "ymera-run", "{body:#}");
    assert_eq!(body["backlog"]["partitions"], 4, "{body:#}");
    assert_eq!(body["backlog"]["pipelines"], json!(["rate"]), "{body:#}");
    let load = body["keda"]["load"].as_f64().unwrap();
    assert!((200.0..800.0).contains(&load), "{body:#}");
    let replicas = body["recommended_replicas"].as_u64().unwrap();
    let wanted = (load / 200.0).ceil() as u64;
    let even = (wanted..=4).find(|d| 4 % d == 0).unwrap();
    assert_eq!(replicas, even, "{body:#}");
    assert_eq!(
        body["keda"]["value"].as_f64().unwrap(),
        replicas as f64 * 200.0,
        "{body:#}"
    );
}
