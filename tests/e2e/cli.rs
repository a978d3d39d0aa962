//! The CLI's contract: exit codes and messages of validate and test.

use crate::support::*;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn validate_reports_every_problem_with_position_and_exits_78() {
    let yaml = "name: bad\nsource:\n  kafka: { brokers: localhost:1, topics: [t], group_id: g, colour: red }\n  schema: { a: float }\ntransforms:\n  - name: s\n    sql: SELECT nope FROM input\nsinks:\n  - lake: { table: t, input: missing }\n";
    let dir = pipeline_dir(yaml);
    let out = ymera()
        .args(["validate", "--no-environment"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline.yaml:3:") && err.contains("unknown field `colour`"),
        "{err}"
    );
    // from the repository root, as users run it: the warehouse sinks are checked against
    // sql/migrations (warehouse.migrations is relative to the working directory)
    let ok = ymera()
        .args(["validate", "--no-environment", "pipelines"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn ymera_test_passes_the_shipped_pipelines_and_prints_a_diff_on_failure() {
    let out = ymera()
        .arg("test")
        .arg(repo().join("pipelines"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    let yaml = pipeline_yaml(
        "t",
        "x",
        "g",
        "{ path: _dlq/t }",
        "tests:\n  - name: wrong expectation\n    input: [ {seq: 1, ts: \"2026-01-01T00:00:00Z\", service: a, latency_ms: 300.0} ]\n    expect: { out: [ {seq: 1, ts: \"2026-01-01T00:00:00Z\", service: a, latency_ms: 300.0, slow: false} ] }\n",
    );
    let dir = pipeline_dir(&yaml.replace("${YMERA_TEST_BROKERS}", "localhost:9092"));
    let out = ymera().arg("test").arg(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("\"slow\":true") && stdout.contains("missing"),
        "{stdout}"
    );
}

#[test]
fn deny_warnings_refuses_a_pipeline_without_tests() {
    let yaml = pipeline_yaml("untested", "t", "g", "{ path: _dlq/untested }", "")
        .replace("${YMERA_TEST_BROKERS}", "localhost:9092");
    let dir = pipeline_dir(&yaml);
    let lenient = ymera()
        .args(["validate", "--no-environment"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(lenient.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&lenient.stderr)
            .contains("warning: pipeline `untested` has no `tests:`")
    );
    let strict = ymera()
        .args(["validate", "--no-environment", "--deny-warnings"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        strict.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );
}

#[test]
fn a_binary_built_from_other_sources_is_refused() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_ymera"));
    check_binary(bin, &repo()).expect("the binary cargo built is the tree's");

    // A copy of the sources: new modification times, same content — still this binary's.
    let copy = tempfile::tempdir().unwrap();
    for file in crate::source_hash::source_files(&repo()).unwrap() {
        let to = copy.path().join(&file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join(&file), &to).unwrap();
    }
    check_binary(bin, copy.path()).expect("same content, same sources");

    // A test file is not a source of the binary.
    let test_file = copy.path().join("crates/cli/tests/extra.rs");
    std::fs::create_dir_all(test_file.parent().unwrap()).unwrap();
    std::fs::write(&test_file, "// a test\n").unwrap();
    check_binary(bin, copy.path()).expect("tests are not sources");

    // One changed line in a source file: the binary is another commit's and is refused.
    let main_rs = copy.path().join("crates/cli/src/main.rs");
    let mut text = std::fs::read_to_string(&main_rs).unwrap();
    text.push_str("// one more line\n");
    std::fs::write(&main_rs, text).unwrap();
    let err = check_binary(bin, copy.path()).unwrap_err();
    assert!(err.contains("is stale") && err.contains("Rebuild"), "{err}");

    // So is a change of a dependency version.
    std::fs::copy(repo().join("crates/cli/src/main.rs"), &main_rs).unwrap();
    check_binary(bin, copy.path()).expect("restored");
    let lock = copy.path().join("Cargo.lock");
    let text = std::fs::read_to_string(&lock)
        .unwrap()
        .replacen("version = ", "version  = ", 1);
    std::fs::write(&lock, text).unwrap();
    assert!(check_binary(bin, copy.path()).is_err());
}

/// The whole loop through the binary in an empty directory (broker: the demo's own
/// embedded librdkafka mock cluster): pipelines, three models trained and promoted, a
/// served prediction with `model_version`, a forecast with points and a plot, the
/// detector's alert on an injected incident, and `--keep-serving` answering afterwards.
#[test]
fn the_demo_runs_the_whole_loop_in_an_empty_directory_and_writes_out_its_examples() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let started = std::time::Instant::now();
    let mut child = ymera()
        .args(["demo", "--keep-serving"])
        .current_dir(dir.path())
        .env("YMERA__LOG__LEVEL", "warn")
        .env("YMERA__SERVE__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut printed = String::new();
    let deadline = started + Duration::from_secs(300);
    while !printed.contains("keeps serving") {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(wait) {
            Ok(line) => printed.push_str(&(line + "\n")),
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("{printed}{}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    eprintln!(
        "figure: ymera demo (whole loop) in an empty directory: {:?}",
        started.elapsed()
    );
    let has = |s: &str| assert!(printed.contains(s), "`{s}` missing from:\n{printed}");
    has("built into ymera");
    has("| api");
    for model in ["risk", "effort", "segments"] {
        has(&format!("{model}@champion → 1 (was unset"));
    }
    has("risk/1: probability");
    has("why: base");
    let alert = printed
        .lines()
        .find(|l| l.contains(" opened ") && l.contains("peak"))
        .unwrap_or_else(|| panic!("no alert listed:\n{printed}"));
    assert!(
        alert.contains("the injected"),
        "the alert is on an injected incident: {alert}"
    );
    let forecast = std::fs::read_to_string(dir.path().join("demo/forecast-api.csv")).unwrap();
    assert!(
        forecast.starts_with("timestamp,p50,lo80,hi80,lo95,hi95"),
        "{forecast}"
    );
    assert!(
        forecast.lines().count() >= 12,
        "an hour of 5-minute points: {forecast}"
    );
    let png = std::fs::read(dir.path().join("demo/forecast-api.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG plot");

    // still serving the demo's data, with the key it wrote
    let key = std::fs::read_to_string(dir.path().join("demo/agent.key")).unwrap();
    let (status, body) = http(port, "GET", "/v1/alerts", Some(key.trim()), None).unwrap();
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(body["count"].as_u64().unwrap() >= 1, "{body}");
    let (status, _) = http(port, "GET", "/v1/models", Some(key.trim()), None).unwrap();
    assert_eq!(status, 200);
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("stops on SIGTERM");
    assert!(status.success(), "{status:?}");

    // every table of the demo lake reads the same in DuckDB (`delta_scan`), Python
    // `deltalake` and `ymera sql`
    let lake = dir.path().join("lake");
    let script = r#"
lake = sys.argv[1]
for root, dirs, files in sorted(os.walk(lake)):
    if "_delta_log" in dirs:
        rel = os.path.relpath(root, lake)
        duck = con.sql(f"SELECT count(*) FROM delta_scan('{root}')").fetchall()[0][0]
        py = deltalake.DeltaTable(root).to_pyarrow_table().num_rows
        print(rel, duck, py)
"#;
    let seen = crate::interop::python(script, &[&lake]);
    let tables: Vec<(String, u64, u64)> = seen
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert!(tables.len() >= 4, "the demo lake's tables: {seen}");
    let sql_name = |dir: &str| match dir.strip_prefix("_dlq/") {
        Some(p) => format!("dlq_{p}"),
        None => dir.to_string(),
    };
    let union = tables
        .iter()
        .map(|(d, _, _)| format!("SELECT '{d}' AS t, count(*) AS n FROM {}", sql_name(d)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let out = ymera()
        .args([
            "sql",
            "--format",
            "csv",
            &format!("SELECT * FROM ({union}) ORDER BY t"),
        ])
        .current_dir(dir.path())
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let ours = succeeded(out);
    for (d, duck, py) in &tables {
        assert_eq!(duck, py, "{d}: DuckDB {duck} rows, deltalake {py}");
        assert!(
            ours.lines().any(|l| l == format!("{d},{duck}")),
            "{d}: DuckDB and deltalake read {duck} rows, ymera sql says:\n{ours}"
        );
    }

    // the same files as the repository's, and never over existing ones
    let examples = dir.path().join("examples");
    let write = || {
        ymera()
            .args(["demo", "--write-examples"])
            .arg(&examples)
            .output()
            .unwrap()
    };
    succeeded(write());
    for sub in ["pipelines", "models", "sql/migrations"] {
        for entry in std::fs::read_dir(repo().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let written = examples.join(sub).join(path.file_name().unwrap());
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(&written).unwrap_or_default(),
                "{} differs from the built-in example",
                path.display()
            );
        }
    }
    let out = write();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
}
