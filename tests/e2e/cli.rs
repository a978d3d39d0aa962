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
        .current_dir("..")
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
    let out = ymera().args(["test", "../pipelines"]).output().unwrap();
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
