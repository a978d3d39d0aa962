//! The warehouse (the real PostgreSQL, reached through a TCP proxy the test can cut) goes
//! away while a pipeline writes to it: consumption pauses, readiness says why, no offset
//! is committed past what the warehouse holds, and once it is back every record lands
//! exactly once.

use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// A TCP proxy to PostgreSQL that can be cut (every connection closed, new ones refused)
/// and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut held = conns2.lock().unwrap();
                for s in [&client, &server] {
                    held.push(s.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn psql_try(sql: &str) -> Result<String, String> {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-At",
            "-c",
            sql,
        ])
        .output()
        .expect("psql (PostgreSQL's client) is needed by this test");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn psql(sql: &str) -> String {
    psql_try(sql).unwrap()
}

#[test]
fn warehouse_outage_pauses_without_committing_then_recovers_exactly_once() {
    let schema = format!("ymera_outage_{}", std::process::id());
    psql(&format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
    ));
    let migrations = tempfile::tempdir().unwrap();
    std::fs::write(
        migrations.path().join("0001_seq.sql"),
        "CREATE TABLE outage (seq BIGINT NOT NULL, ts TIMESTAMPTZ NOT NULL, service TEXT NOT NULL, latency_ms DOUBLE PRECISION NOT NULL, slow BOOLEAN NOT NULL);",
    )
    .unwrap();
    let proxy = Proxy::start("127.0.0.1:5432");
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/test?options=-c%20search_path%3D{schema}",
        proxy.port
    );

    let rt = runtime();
    let topic = unique("outage");
    let broker = DevBroker::start(&[(&topic, 2)]);
    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(0..500).map(seq_record).collect::<Vec<_>>(),
    );
    let group = unique("g");
    let dir = pipeline_dir(&pipeline_yaml_with_sinks(
        "outage",
        &topic,
        &group,
        "  - warehouse: { table: outage, rolling: { max_rows: 100, max_interval: 500ms } }",
        "{ path: _dlq/outage }",
        "batch: { max_records: 100, max_wait: 100ms }",
    ));
    let lake = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = run_command(
        &broker.bootstrap,
        dir.path(),
        lake.path(),
        &format!("127.0.0.1:{port}"),
        &[],
    )
    .env("YMERA__WAREHOUSE__URL", &url)
    .env("YMERA__WAREHOUSE__MIGRATIONS", migrations.path())
    .env("YMERA__WAREHOUSE__MIGRATE_ON_START", "true")
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    // -1 until the migration created the table
    let count = || {
        psql_try(&format!("SELECT count(*) FROM {schema}.outage"))
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let committed = || {
        ymera_ingest::consume::committed_offsets(
            &broker.bootstrap,
            &Default::default(),
            &group,
            &topic,
            Duration::from_secs(10),
        )
        .unwrap()
        .into_iter()
        .map(|(_, o)| o.unwrap_or(0))
        .sum::<i64>()
    };
    assert!(
        wait_for(Duration::from_secs(60), || count() == 500),
        "first 500 rows never arrived: {}",
        count()
    );

    proxy.cut();
    produce_to(
        &rt,
        &broker.bootstrap,
        &topic,
        &(500..1000).map(seq_record).collect::<Vec<_>>(),
    );
    let said = wait_for(Duration::from_secs(60), || {
        http_get(port, "/health/ready").is_some_and(|(s, b)| s == 503 && b.contains("warehouse"))
    });
    assert!(
        said,
        "readiness did not name the warehouse: {:?}",
        http_get(port, "/health/ready")
    );
    let during = committed();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count(), 500, "rows arrived through a cut connection");
    assert_eq!(
        committed(),
        during,
        "offsets were committed while the warehouse was away"
    );
    assert!(
        during <= 500,
        "committed {during} offsets for 500 rows in the warehouse"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "ymera run exited instead of retrying"
    );

    proxy.restore();
    assert!(
        wait_for(Duration::from_secs(90), || count() == 1000),
        "rows after the outage: {}",
        count()
    );
    assert!(wait_for(Duration::from_secs(30), || http_get(
        port,
        "/health/ready"
    )
    .is_some_and(|(s, _)| s == 200)));
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status =
        wait_timeout(&mut child, Duration::from_secs(30)).expect("SIGTERM did not stop ymera run");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        psql(&format!("SELECT count(DISTINCT seq) FROM {schema}.outage")),
        "1000"
    );
    assert_eq!(
        psql(&format!(
            "SELECT sum(next_offset) FROM {schema}._ymera_offsets WHERE pipeline = 'outage'"
        )),
        "1000"
    );
    assert_eq!(committed(), 1000);
    psql(&format!("DROP SCHEMA {schema} CASCADE"));
}
