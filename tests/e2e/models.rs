//! Models end to end: generated events → Kafka → the repository's pipelines → lake →
//! `ymera train models/*.yaml` → registry → `ymera serve` → predictions over HTTP (V1 and
//! Open Inference Protocol V2), with hot reload, tamper refusal, kill -9 of the server and
//! of the trainer, and model quality on a world with shifted distributions.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::support::*;

/// A lake (and warehouse) filled from one generated world.
struct World {
    _broker: DevBroker,
    work: tempfile::TempDir,
    env: Vec<(String, OsString)>,
}

impl World {
    /// `ymera gen --days 365 --projects N --seed SEED EXTRA` through the pipelines of
    /// `pipelines/project_events.yaml` and `task_events.yaml`.
    fn generate(seed: u64, projects: usize, extra: &[&str]) -> World {
        let broker = DevBroker::start(&[("project-events", 2), ("task-events", 2)]);
        let work = tempfile::tempdir().unwrap();
        let lake = work.path().join("lake");
        let pipelines = work.path().join("pipelines");
        std::fs::create_dir_all(&pipelines).unwrap();
        for p in ["project_events.yaml", "task_events.yaml"] {
            std::fs::copy(repo().join("pipelines").join(p), pipelines.join(p)).unwrap();
        }
        let env: Vec<(String, OsString)> = vec![
            ("YMERA_BROKERS".into(), broker.bootstrap.clone().into()),
            ("YMERA__LAKE__URL".into(), lake.clone().into()),
            (
                "YMERA__WAREHOUSE__URL".into(),
                format!("sqlite://{}/warehouse.db", work.path().display()).into(),
            ),
            (
                "YMERA__WAREHOUSE__MIGRATIONS".into(),
                repo().join("sql/migrations").into(),
            ),
            ("YMERA__WAREHOUSE__MIGRATE_ON_START".into(), "true".into()),
            ("YMERA__LOG__LEVEL".into(), "warn".into()),
            (
                "YMERA__AUTH__ADMIN_KEY_FILE".into(),
                work.path().join("admin.key").into(),
            ),
        ];
        let rt = runtime();
        let (seed, projects) = (seed.to_string(), projects.to_string());
        let mut args = vec![
            "--days",
            "365",
            "--projects",
            &projects,
            "--seed",
            &seed,
            "--services",
            "none",
        ];
        args.extend(extra);
        produce_generated(
            &rt,
            &broker.bootstrap,
            &work.path().join("events"),
            &args,
            &[("project-events", "project_id"), ("task-events", "task_id")],
        );
        let mut child = ymera()
            .args(["run", "--stop-when-idle", "4s"])
            .arg(&pipelines)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("YMERA__RUN__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_timeout(&mut child, Duration::from_secs(300)).expect("ymera run hung");
        assert!(status.success(), "ymera run failed");
        World {
            _broker: broker,
            work,
            env,
        }
    }

    fn ymera(&self, args: &[&str]) -> Output {
        ymera()
            .args(args)
            .current_dir(repo())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ymera(args);
        assert!(
            out.status.success(),
            "ymera {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn registry(&self) -> PathBuf {
        self.work.path().join("lake/_models")
    }

    /// `ymera serve` on a free port; stderr goes to `serve.log`.
    fn serve(&self) -> (Child, u16) {
        let port = free_port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join("serve.log"))
            .unwrap();
        let child = ymera()
            .arg("serve")
            .current_dir(repo())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("YMERA__SERVE__LISTEN", format!("127.0.0.1:{port}"))
            .env("YMERA__SERVE__RELOAD_INTERVAL", "300ms")
            .env("YMERA__LOG__LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(
            wait_for(Duration::from_secs(60), || {
                http_get(port, "/health/ready").is_some_and(|(s, _)| s == 200)
            }),
            "ymera serve did not become ready: {}",
            std::fs::read_to_string(self.work.path().join("serve.log")).unwrap_or_default()
        );
        (child, port)
    }

    fn serve_log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("serve.log")).unwrap_or_default()
    }
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn post(port: u16, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let (s, b) = http(port, "POST", path, Some(token), Some(&body.to_string())).expect("request");
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

fn get(port: u16, path: &str, token: &str) -> (u16, Value) {
    let (s, b) = http(port, "GET", path, Some(token), None).expect("request");
    (s, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

/// Status and `model_version` of a risk prediction by the default version.
fn served_risk_version(port: u16, token: &str) -> (u16, Option<String>) {
    let (s, body) = post(
        port,
        "/v1/models/risk:predict",
        token,
        &json!({"instances": [risk_instance(1)]}),
    );
    (s, body["model_version"].as_str().map(String::from))
}

fn risk_instance(churn: i64) -> Value {
    json!({"burn_rate": 1.05, "schedule_slip": 0.03, "scope_changes": 2, "churn": churn, "team_size": 8})
}

/// Flips one byte in the middle of a file.
fn flip_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

#[test]
fn train_register_serve_predict_with_reload_tamper_and_kill_9() {
    let w = World::generate(11, 600, &[]);

    // --- train the three models; risk and effort pass their gates
    let out = w.ok(&["train", "models/risk.yaml"]);
    assert!(out.contains("registered risk/1"), "{out}");
    assert!(out.contains("gate: passed"), "{out}");
    let out = w.ok(&["train", "models/effort.yaml"]);
    assert!(
        out.contains("registered effort/1") && out.contains("gate: passed"),
        "{out}"
    );
    let out = w.ok(&["train", "models/segments.yaml"]);
    assert!(out.contains("registered segments/1"), "{out}");
    let manifest = json_of(&w.ok(&["models", "show", "risk/1"]));
    assert_eq!(manifest["verified"], true);
    let lineage = &manifest["lineage"];
    assert!(lineage["rows"].as_u64().unwrap() > 200, "{lineage}");
    assert_eq!(lineage["content_sha256"].as_str().unwrap().len(), 64);
    // the Delta version the query read, and that version's files
    assert!(
        lineage["tables"][0]["version"].as_u64().unwrap() >= 1,
        "{lineage}"
    );
    let files = lineage["tables"][0]["files"].as_array().unwrap();
    assert!(
        !files.is_empty()
            && files[0]["path"]
                .as_str()
                .unwrap()
                .starts_with("project_events/dt=")
    );
    assert_eq!(manifest["artifact"]["sha256"].as_str().unwrap().len(), 64);

    // --- champion through the gate
    w.ok(&["models", "promote", "risk", "1"]);
    w.ok(&["models", "promote", "effort", "1"]);

    // --- serve; the first start creates an admin key readable by the owner only
    let (mut server, port) = w.serve();
    let key_file = w.work.path().join("admin.key");
    let admin = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(
        !w.serve_log().contains(&admin),
        "the admin key must never be logged"
    );
    let agent = w
        .ok(&["keys", "create", "--role", "agent"])
        .trim()
        .to_string();

    // --- V1 predict, batch, with explanations
    let (s, body) = post(
        port,
        "/v1/models/risk:predict",
        &agent,
        &json!({"instances": [risk_instance(0), risk_instance(4)], "explain": true}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["model_version"], "1");
    let preds = body["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    let p0 = preds[0]["probability"].as_f64().unwrap();
    let p4 = preds[1]["probability"].as_f64().unwrap();
    // (the direction of churn's effect given the other drivers is the model's business;
    // what is checked is that the answer moves and is explained by churn alone)
    assert!(
        p0 > 0.0 && p0 < 1.0 && p4 > 0.0 && p4 < 1.0 && p0 != p4,
        "{p0} vs {p4}"
    );
    // local explanations: the two differ only in churn, so only churn's contribution differs,
    // and each prediction's contributions add up to its score
    let contrib = |p: &Value| -> std::collections::BTreeMap<String, f64> {
        p["top_features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_str().unwrap().to_string(), c[1].as_f64().unwrap()))
            .collect()
    };
    let (c0, c4) = (contrib(&preds[0]), contrib(&preds[1]));
    assert_eq!(c0.len(), 5);
    for (k, v) in &c0 {
        if k == "churn" {
            assert!((v - c4[k]).abs() > 1e-6, "churn's contribution must change");
        } else {
            assert!((v - c4[k]).abs() < 1e-9, "{k} changed: {v} vs {}", c4[k]);
        }
    }
    for p in preds {
        let sum: f64 = p["base_score"].as_f64().unwrap() + contrib(p).values().sum::<f64>();
        assert!((sum - p["score"].as_f64().unwrap()).abs() < 1e-9);
    }
    let (s, body) = post(
        port,
        "/v1/models/effort:predict",
        &agent,
        &json!({"instances": [{"task_type": "bug", "complexity": 3, "estimate_hours": 8.0, "assignee_experience_years": 2.0}]}),
    );
    assert_eq!(s, 200, "{body}");
    let e = &body["predictions"][0];
    let (v, lo, hi) = (
        e["value"].as_f64().unwrap(),
        e["lower"].as_f64().unwrap(),
        e["upper"].as_f64().unwrap(),
    );
    assert!(lo < v && v < hi && v > 4.0 && v < 30.0, "{e}");

    // --- bad input: 400 naming the problem; unknown model/version: 404 listing what exists
    for (instance, expect) in [
        (
            json!({"burn_rate": 1.0, "schedule_slip": 0.0, "scope_changes": 1, "churn": 0}),
            "missing feature `team_size`",
        ),
        (
            json!({"burn_rate": 1.0, "schedule_slip": 0.0, "scope_changes": 1, "churn": 0, "team_size": 5, "colour": 1}),
            "unknown feature `colour`",
        ),
        (
            json!({"burn_rate": "high", "schedule_slip": 0.0, "scope_changes": 1, "churn": 0, "team_size": 5}),
            "feature `burn_rate` must be a number",
        ),
        (
            json!({"burn_rate": "NaN", "schedule_slip": 0.0, "scope_changes": 1, "churn": 0, "team_size": 5}),
            "only finite numbers",
        ),
        (
            json!({"burn_rate": 1.0, "schedule_slip": 0.0, "scope_changes": 1.5, "churn": 0, "team_size": 5}),
            "feature `scope_changes` must be an integer",
        ),
    ] {
        let (s, body) = post(
            port,
            "/v1/models/risk:predict",
            &agent,
            &json!({"instances": [instance]}),
        );
        assert_eq!(s, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(expect),
            "{body} should say {expect}"
        );
    }
    let (s, b) = http(
        port,
        "POST",
        "/v1/models/risk:predict",
        Some(&agent),
        Some("{not json"),
    )
    .unwrap();
    assert!(s == 400 && b.contains("not valid JSON"), "{s} {b}");
    let (s, body) = post(
        port,
        "/v1/models/nope:predict",
        &agent,
        &json!({"instances": [{}]}),
    );
    assert_eq!(s, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("available: effort, risk, segments"),
        "{body}"
    );
    let (s, body) = get(port, "/v2/models/risk/versions/9", &agent);
    assert_eq!(s, 404);
    assert!(
        body["error"].as_str().unwrap().contains("available: 1"),
        "{body}"
    );

    // --- analyst SQL over HTTP (its own runtime), read-only, audited; metrics; request ids
    let analyst = w
        .ok(&["keys", "create", "--role", "analyst"])
        .trim()
        .to_string();
    let (s, body) = post(
        port,
        "/v1/sql",
        &analyst,
        &json!({"sql": "SELECT count(DISTINCT project_id) AS projects FROM project_events"}),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["rows"][0]["projects"], 600, "{body}");
    let (s, body) = post(
        port,
        "/v1/sql",
        &analyst,
        &json!({"sql": "DROP TABLE projects"}),
    );
    assert_eq!(s, 403, "{body}");
    assert_eq!(
        post(port, "/v1/sql", &agent, &json!({"sql": "SELECT 1"})).0,
        403,
        "agents may not run SQL"
    );
    let (s, text) = http(port, "GET", "/metrics", Some(&admin), None).unwrap();
    assert_eq!(s, 200);
    assert!(
        text.lines().any(
            |l| l.starts_with("ymera_model_request_duration_seconds_bucket{")
                && l.contains("model=\"risk\"")
                && l.contains("endpoint=\"v1_predict\"")
                && l.contains("code=\"200\"")
        ),
        "{text}"
    );
    assert!(
        w.serve_log().contains("request_id"),
        "log lines carry request ids"
    );
    let audit = w.ok(&["audit", "verify"]);
    assert!(audit.contains("intact"), "{audit}");

    // --- OIP V2: metadata, per-feature tensors, one [N, F] tensor, alias as version
    let (s, meta) = get(port, "/v2/models/risk", &agent);
    assert_eq!(s, 200, "{meta}");
    let inputs: Vec<(String, String)> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().into(),
                i["datatype"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(inputs[0], ("burn_rate".to_string(), "FP64".to_string()));
    assert!(inputs.contains(&("churn".to_string(), "INT64".to_string())));
    let tensors: Vec<Value> = inputs
        .iter()
        .map(|(n, d)| {
            let v = risk_instance(4)[n].clone();
            json!({"name": n, "shape": [1], "datatype": d, "data": [v]})
        })
        .collect();
    let (s, inf) = post(
        port,
        "/v2/models/risk/versions/champion/infer",
        &agent,
        &json!({"id": "r1", "inputs": tensors}),
    );
    assert_eq!(s, 200, "{inf}");
    assert_eq!(inf["model_name"], "risk");
    assert_eq!(inf["model_version"], "1");
    assert_eq!(inf["id"], "r1");
    assert_eq!(inf["outputs"][0]["name"], "probability");
    assert!((inf["outputs"][0]["data"][0].as_f64().unwrap() - p4).abs() < 1e-12);
    let row: Vec<Value> = inputs
        .iter()
        .map(|(n, _)| json!(risk_instance(4)[n].as_f64().unwrap()))
        .collect();
    let (s, inf) = post(
        port,
        "/v2/models/risk/infer",
        &agent,
        &json!({"inputs": [{"name": "input", "shape": [1, inputs.len()], "datatype": "FP64", "data": [row]}]}),
    );
    assert_eq!(s, 200, "{inf}");
    assert!((inf["outputs"][0]["data"][0].as_f64().unwrap() - p4).abs() < 1e-12);

    // --- a new version, promoted over HTTP by compare-and-swap, is served without restart
    let out = w.ok(&["train", "models/risk.yaml"]);
    assert!(out.contains("registered risk/2"), "{out}");
    let put = |version: &str, expected: &str, token: &str| {
        let (s, b) = http(
            port,
            "PUT",
            "/v1/models/risk/aliases/champion",
            Some(token),
            Some(&json!({"version": version, "expected_version": expected}).to_string()),
        )
        .unwrap();
        (s, b)
    };
    assert_eq!(put("2", "1", &agent).0, 403, "agents may not promote");
    assert_eq!(put("2", "1", &admin).0, 200);
    let (s, b) = put("1", "1", &admin);
    assert_eq!(s, 409, "a stale expected_version must conflict: {b}");
    let (_, body) = post(
        port,
        "/v1/models/risk:predict",
        &agent,
        &json!({"instances": [risk_instance(1)]}),
    );
    assert_eq!(body["model_version"], "2", "{body}");
    let (s, hist) = get(port, "/v1/models/risk/aliases/champion/history", &agent);
    assert_eq!(s, 200);
    let versions: Vec<&str> = hist["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["1", "2"]);

    // --- tamper: a flipped artifact byte and a swapped manifest are refused
    let out = w.ok(&["train", "models/risk.yaml"]);
    assert!(out.contains("registered risk/3"), "{out}");
    flip_byte(&w.registry().join("risk/3/artifact.json"));
    let out = w.ymera(&["models", "show", "risk/3"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sha256") && err.contains("does not match"),
        "{err}"
    );
    let out = w.ymera(&["models", "promote", "risk", "3"]);
    assert!(
        !out.status.success(),
        "a tampered version must not be promotable"
    );
    let original = std::fs::read(w.registry().join("risk/2/manifest.json")).unwrap();
    std::fs::copy(
        w.registry().join("risk/1/manifest.json"),
        w.registry().join("risk/2/manifest.json"),
    )
    .unwrap();
    let out = w.ymera(&["models", "show", "risk/2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("describes risk/1, not risk/2"), "{err}");
    // an alias record pointing at the corrupt version (as a bad writer would leave it): the
    // server refuses the move, logs it, and keeps serving the previous target
    let record = json!({
        "alias": "champion", "seq": 3, "version": "3", "previous": "2",
        "manifest_sha256": "0".repeat(64), "at": "2026-11-26T00:00:00Z",
        "actor": "intruder", "action": "promote"
    });
    std::fs::write(
        w.registry().join("risk/_aliases/champion/0000000003.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    assert!(wait_for(Duration::from_secs(10), || w
        .serve_log()
        .contains("refusing the alias's new target")));
    assert_eq!(served_risk_version(port, &agent), (200, Some("2".into())));

    // (the running server keeps version 2, which it verified before the manifest swap)

    // --- kill -9 the server; after the registry is repaired a restart serves the same
    // champions (state lives in the registry, not in the process)
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_file(w.registry().join("risk/_aliases/champion/0000000003.json")).unwrap();
    std::fs::write(w.registry().join("risk/2/manifest.json"), original).unwrap();
    let (mut server, port) = w.serve();
    assert_eq!(served_risk_version(port, &agent), (200, Some("2".into())));
    let (s, body) = post(
        port,
        "/v1/models/effort:predict",
        &agent,
        &json!({"instances": [{"task_type": "bug", "complexity": 3, "estimate_hours": 8.0, "assignee_experience_years": 2.0}]}),
    );
    assert_eq!(
        (s, body["model_version"].as_str()),
        (200, Some("1")),
        "{body}"
    );
    let (s, _) = post(
        port,
        "/v1/models/risk:predict?version=3",
        &agent,
        &json!({"instances": [risk_instance(1)]}),
    );
    assert_eq!(s, 500, "version 3's artifact was tampered with");
    server.kill().unwrap();
    server.wait().unwrap();

    // --- kill -9 the trainer at random moments: afterwards every version directory is either
    // complete and verifies, or has no manifest and is not a version; training still works
    let mut rng = rand::rng();
    for _ in 0..4 {
        let mut child = ymera()
            .args(["train", "models/effort.yaml"])
            .current_dir(repo())
            .envs(w.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(200..2500)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = w.ok(&["train", "models/effort.yaml"]);
    assert!(out.contains("registered effort/"), "{out}");
    for entry in std::fs::read_dir(w.registry().join("effort")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.parse::<u64>().is_err() {
            continue;
        }
        if entry.path().join("manifest.json").exists() {
            w.ok(&["models", "show", &format!("effort/{name}")]);
        } else {
            assert!(!entry.path().join("manifest.json").exists());
        }
    }
    let list = w.ok(&["models", "list"]);
    assert!(
        list.contains("effort:") && list.contains("champion→1"),
        "{list}"
    );

    // --- rollback and history: which version was live when
    let before_rollback = utc_now();
    let out = w.ok(&["models", "rollback", "risk"]);
    assert!(out.contains("rolled back to 1 (from 2)"), "{out}");
    let hist = w.ok(&["models", "history", "risk"]);
    assert_eq!(hist.lines().count(), 3, "{hist}");
    assert!(
        hist.lines().last().unwrap().contains("rollback 2 → 1"),
        "{hist}"
    );
    let at = w.ok(&["models", "history", "risk", "--at", &before_rollback]);
    assert!(at.contains("version 2"), "{at}");
    let out = w.ymera(&["models", "promote", "risk", "2", "--expected", "2"]);
    assert!(!out.status.success(), "a stale --expected must be refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the expected 2"));

    // --- the lake moves on (another tool appends 40 projects' events); `train --as-of
    // risk/1` reads the table versions its manifest recorded and reproduces its rows
    let m1 = json_of(&w.ok(&["models", "show", "risk/1"]));
    let rows1 = m1["lineage"]["rows"].as_u64().unwrap();
    let v1 = m1["lineage"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "project_events")
        .and_then(|t| t["version"].as_u64())
        .unwrap();
    let script = r#"
import pyarrow as pa, pyarrow.compute as pc
p = sys.argv[1]
t = deltalake.DeltaTable(p).to_pyarrow_table()
ids = pc.unique(t.column("project_id"))[:40]
sub = t.filter(pc.is_in(t.column("project_id"), value_set=ids))
col = sub.column("project_id")
new = pc.add(col, 10_000_000) if pa.types.is_integer(col.type) else pa.array(["x" + v for v in col.to_pylist()])
sub = sub.set_column(sub.schema.get_field_index("project_id"), "project_id", new)
deltalake.write_deltalake(p, sub, mode="append")
print(sub.num_rows)
"#;
    let table = w.work.path().join("lake/project_events");
    let appended: u64 = crate::interop::python(script, &[&table]).parse().unwrap();
    assert!(appended > 0);
    let count = |q: &str| -> u64 {
        let out = w.ok(&["sql", "--format", "csv", q]);
        out.lines().nth(1).unwrap().parse().unwrap()
    };
    let now = count("SELECT count(*) FROM project_events");
    let then = count(&format!(
        "SELECT count(*) FROM project_events VERSION AS OF {v1}"
    ));
    assert_eq!(
        now - then,
        appended,
        "time travel reads the older version's rows"
    );
    let out = w.ok(&["train", "models/risk.yaml"]);
    let latest = out
        .split("registered risk/")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let m = json_of(&w.ok(&["models", "show", &format!("risk/{latest}")]));
    assert!(m["lineage"]["rows"].as_u64().unwrap() > rows1, "{m}");
    let out = w.ok(&["train", "models/risk.yaml", "--as-of", "risk/1"]);
    assert!(
        out.contains(&format!("project_events@v{v1}"))
            && out.contains(&format!(
                "{rows1} rows ({rows1} in its manifest), content hash matches"
            )),
        "{out}"
    );
}

/// Now as RFC 3339, from the system clock (the tests package has no chrono).
fn utc_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Risk and effort models trained on one world, scored on another generated from a
/// different seed with larger teams and twice the churn.
#[test]
fn model_quality_holds_on_a_shifted_world() {
    let train_world = World::generate(21, 500, &[]);
    let out = train_world.ok(&["train", "models/risk.yaml"]);
    assert!(out.contains("registered risk/1"), "{out}");
    let out = train_world.ok(&["train", "models/effort.yaml"]);
    assert!(out.contains("registered effort/1"), "{out}");
    let shifted = World::generate(22, 500, &["--team-sizes", "8-16", "--churn-scale", "2"]);
    let registry = train_world.registry();
    let evaluate = |spec: &str, model: &str| -> Value {
        let out = ymera()
            .args(["models", "evaluate", spec, "--model", model])
            .current_dir(repo())
            .envs(shifted.env.iter().map(|(k, v)| (k, v)))
            .env("YMERA__REGISTRY__URL", &registry)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&String::from_utf8_lossy(&out.stdout))
    };
    let risk = evaluate("models/risk.yaml", "risk/1");
    let effort = evaluate("models/effort.yaml", "effort/1");
    eprintln!(
        "shifted-world quality: risk {} effort {}",
        risk["metrics"], effort["metrics"]
    );
    let m = &risk["metrics"];
    assert!(m["auc"].as_f64().unwrap() >= 0.80, "risk AUC {m}");
    assert!(m["brier"].as_f64().unwrap() <= 0.18, "risk Brier {m}");
    assert!(m["ece"].as_f64().unwrap() <= 0.12, "risk ECE {m}");
    let m = &effort["metrics"];
    assert!(
        m["coverage"].as_f64().unwrap() >= 0.8,
        "effort interval coverage {m}"
    );
    assert!(m["r2"].as_f64().unwrap() >= 0.5, "effort R² {m}");
    assert!(m["mae"].as_f64().unwrap() <= 6.0, "effort MAE (hours) {m}");
}
