//! Operating `ymera run`: health probes and Prometheus metrics on `run.listen`, and an
//! unwritable lake that pauses consumption without committing, then recovers.

use std::io::Read;
use std::time::Duration;

use crate::support::*;

#[test]
fn unwritable_lake_pauses_without_committing_then_recovers_with_probes_and_metrics() {
    let rt = runtime();
    let topic = unique("ops");
    create_topic(&rt, &topic, 2);
    produce(&rt, &topic, &(0..1000).map(seq_record).collect::<Vec<_>>());
    let group = unique("g");
    let name = "ops_seq";
    let dir = pipeline_dir(&pipeline_yaml(
        name,
        &topic,
        &group,
        "{ path: _dlq/ops_seq }",
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    // a regular file where the table directory must go: every publication fails
    std::fs::write(lake.path().join(name), b"in the way").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = run_command(
        &brokers(),
        dir.path(),
        lake.path(),
        &listen,
        &["--stop-when-idle", "3s"],
    )
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    assert!(wait_for(Duration::from_secs(30), || http_get(
        port, "/health"
    )
    .is_some_and(|(s, _)| s == 200)));
    // not ready, and the body says why
    let said = wait_for(Duration::from_secs(30), || {
        http_get(port, "/health/ready")
            .is_some_and(|(s, b)| s == 503 && b.contains("lake unwritable"))
    });
    assert!(
        said,
        "readiness did not report the unwritable lake: {:?}",
        http_get(port, "/health/ready")
    );
    assert_eq!(http_get(port, "/health/startup").map(|r| r.0), Some(200));
    let (status, metrics) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "ymera_component_received_events_total",
        "ymera_component_errors_total",
    ] {
        assert!(metrics.contains(name), "metric {name} missing:\n{metrics}");
    }
    // nothing committed while the lake refuses writes
    let offsets = committed(&group, &topic);
    assert!(
        offsets.iter().all(|(_, o)| o.is_none()),
        "offsets committed before the lake had the data: {offsets:?}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "ymera run crashed instead of retrying"
    );

    // the operator fixes the lake: publication resumes, everything lands once, exit 0
    std::fs::remove_file(lake.path().join(name)).unwrap();
    assert!(wait_for(Duration::from_secs(60), || http_get(
        port,
        "/health/ready"
    )
    .is_some_and(|(s, _)| s == 200)));
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for name in [
        "ymera_component_sent_events_total",
        "ymera_lake_files_written_total",
        "ymera_batch_commit_seconds",
    ] {
        assert!(metrics.contains(name), "metric {name} missing:\n{metrics}");
    }
    let status = wait_timeout(&mut child, Duration::from_secs(90))
        .expect("ymera run did not stop when idle");
    assert!(status.success());
    let seqs: Vec<i64> = seqs_by_partition(&lake.path().join(name))
        .into_values()
        .flatten()
        .collect();
    assert_eq!(seqs.len(), 1000);
    let offsets = committed(&group, &topic);
    assert!(offsets.iter().all(|(_, o)| o.is_some()), "{offsets:?}");
}

#[test]
fn unreachable_broker_is_retried_reported_and_never_crash_loops() {
    let dir = pipeline_dir(&pipeline_yaml(
        "nobroker",
        "t",
        &unique("g"),
        "{ path: _dlq/nobroker }",
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // nothing listens on 127.0.0.1:1; info logs, so the retry message shows
    let mut child = run_command("127.0.0.1:1", dir.path(), lake.path(), &listen, &[])
        .env("YMERA__LOG__LEVEL", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let said = wait_for(Duration::from_secs(30), || {
        http_get(port, "/health/ready")
            .is_some_and(|(s, b)| s == 503 && b.contains("broker reachable"))
    });
    assert!(
        said,
        "readiness did not say the broker is unreachable: {:?}",
        http_get(port, "/health/ready")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "ymera run exited instead of retrying"
    );
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status =
        wait_timeout(&mut child, Duration::from_secs(30)).expect("SIGTERM did not stop ymera run");
    assert!(status.success(), "exit status {status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("retries with backoff"),
        "the log does not say the broker is retried:\n{log}"
    );
}
