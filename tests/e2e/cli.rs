//! The CLI's contract: exit codes and messages of validate and test.

use crate::support::*;

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

#[test]
fn the_demo_runs_in_an_empty_directory_and_writes_out_its_examples() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = ymera()
        .args(["demo", "--days", "1"])
        .current_dir(dir.path())
        .env("YMERA__LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "figure: ymera demo --days 1 in an empty directory: {:?}",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("built into ymera"), "{stdout}");
    assert!(stdout.contains("metric_events"), "{stdout}");
    assert!(
        stdout.contains("| api"),
        "the closing query's table: {stdout}"
    );
    assert!(dir.path().join("lake/metric_events").is_dir());
    assert!(dir.path().join("warehouse.db").is_file());

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
