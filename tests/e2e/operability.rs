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
            // with a file where the table must be, the table cannot be read at assignment
            // (`lake unreadable`) or written at publication (`lake unwritable`)
            .is_some_and(|(s, b)| {
                s == 503 && (b.contains("lake unwritable") || b.contains("lake unreadable"))
            })
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
    // ready once the partitions are assigned; the first publication follows within
    // `rolling.max_interval`
    let names = [
        "ymera_component_sent_events_total",
        "ymera_lake_files_written_total",
        "ymera_batch_commit_seconds",
    ];
    wait_for(Duration::from_secs(30), || {
        http_get(port, "/metrics").is_some_and(|(_, m)| names.iter().all(|n| m.contains(n)))
    });
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    for name in names {
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

/// An OTLP/HTTP collector in the test: every body POSTed to `/v1/traces`.
fn collector(rt: &tokio::runtime::Runtime) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let got: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(body);
                ""
            }
        }),
    );
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, got)
}

/// Traces over OTLP: a request to `ymera serve` with a W3C `traceparent` is a span of
/// the caller's trace carrying the request id, and its own `traceparent` comes back; a
/// segment publication of `ymera run` is a trace of its own. Broker: `ymera broker`.
#[test]
fn requests_and_publications_are_exported_as_otlp_traces_with_w3c_context() {
    use std::io::Write;
    let rt = runtime();
    let (port, got) = collector(&rt);
    let endpoint = format!("http://127.0.0.1:{port}/v1/traces");
    let otel = [
        ("YMERA__LOG__OTLP_ENDPOINT", endpoint.as_str()),
        ("YMERA__LOG__LEVEL", "info"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];
    let server = Server::start(&otel);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    write!(
        conn,
        "GET /health HTTP/1.1\r\nHost: localhost\r\ntraceparent: 00-{trace_id}-00f067aa0ba902b7-01\r\n\
         x-request-id: otel-check-1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let back = answer
        .lines()
        .find_map(|l| l.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("no traceparent in the answer: {answer}"));
    assert!(back.starts_with(&format!("00-{trace_id}-")), "{back}");
    assert!(
        !back.contains("00f067aa0ba902b7"),
        "the server's own span: {back}"
    );
    let exported = |needles: &[&str]| {
        got.lock()
            .unwrap()
            .iter()
            .any(|body| needles.iter().all(|n| body.contains(n)))
    };
    assert!(
        wait_for(Duration::from_secs(30), || exported(&[
            trace_id,
            "otel-check-1",
            "\"request\""
        ])),
        "no span of trace {trace_id} with the request id reached the collector: {:?}\n{}",
        got.lock().unwrap(),
        server.log()
    );

    // ymera run: one trace per segment publication
    let broker = DevBroker::start(&[("otel-in", 2)]);
    produce_to(
        &rt,
        &broker.bootstrap,
        "otel-in",
        &(0..2000).map(seq_record).collect::<Vec<_>>(),
    );
    let dir = pipeline_dir(&pipeline_yaml(
        "otel_seq",
        "otel-in",
        "otel-g",
        "{ path: _dlq/otel_seq }",
        "",
    ));
    let lake = tempfile::tempdir().unwrap();
    let env: Vec<(&str, std::ffi::OsString)> = otel.iter().map(|(k, v)| (*k, v.into())).collect();
    run_until_idle_env(&broker.bootstrap, dir.path(), lake.path(), &env);
    assert!(
        wait_for(Duration::from_secs(30), || exported(&[
            "\"publish\"",
            "otel_seq"
        ])),
        "no publication span reached the collector"
    );
}
