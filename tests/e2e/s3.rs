//! The lake on an S3-compatible object store (moto's S3 server, started by scripts/test,
//! endpoint in `YMERA_TEST_S3_ENDPOINT`): create-only publication, a pipeline run with
//! resume from the Delta logs kept in the bucket, and two writers racing one log version.

use std::time::Duration;

use bytes::Bytes;
use ymera_common::Secret;
use ymera_lake::{Lake, Published};

use crate::support::*;

fn endpoint() -> String {
    std::env::var("YMERA_TEST_S3_ENDPOINT")
        .expect("YMERA_TEST_S3_ENDPOINT is not set: run the suite with scripts/test, which starts an S3 server (moto)")
}

const CREDS: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_ALLOW_HTTP", "true"),
];

/// Creates a bucket with a plain HTTP PUT (moto accepts unsigned requests).
fn create_bucket(name: &str) {
    use std::io::{Read, Write};
    let ep = endpoint();
    let hostport = ep.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "PUT /{name} HTTP/1.0\r\nHost: {hostport}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
}

fn s3_settings() -> Vec<(String, Secret)> {
    let mut v: Vec<(String, Secret)> = CREDS
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), Secret::new(*v)))
        .collect();
    v.push(("aws_endpoint".into(), Secret::new(endpoint())));
    v
}

#[test]
fn s3_publication_is_create_only() {
    let bucket = unique("pub").to_ascii_lowercase();
    create_bucket(&bucket);
    let rt = runtime();
    let lake = Lake::open_with(&format!("s3://{bucket}/lake"), &s3_settings()).unwrap();
    let first = rt
        .block_on(lake.publish("t/dt=2026-01-01/a.parquet", Bytes::from_static(b"one")))
        .unwrap();
    assert_eq!(first, Published::Created);
    let again = rt
        .block_on(lake.publish("t/dt=2026-01-01/a.parquet", Bytes::from_static(b"two")))
        .unwrap();
    assert_eq!(
        again,
        Published::AlreadyExisted,
        "the store replaced an existing object"
    );
    assert_eq!(
        rt.block_on(lake.get("t/dt=2026-01-01/a.parquet"))
            .unwrap()
            .as_ref(),
        b"one"
    );
}

#[test]
fn pipeline_runs_into_an_s3_lake_and_resumes_from_it() {
    let bucket = unique("lake").to_ascii_lowercase();
    create_bucket(&bucket);
    let rt = runtime();
    let topic = unique("s3");
    create_topic(&rt, &topic, 2);
    produce(&rt, &topic, &(0..800).map(seq_record).collect::<Vec<_>>());
    let url = format!("s3://{bucket}/lake");
    let run = |group: &str| {
        let dir = pipeline_dir(&pipeline_yaml(
            "s3seq",
            &topic,
            group,
            "{ path: _dlq/s3seq }",
            "",
        ));
        let mut cmd = run_command(
            &brokers(),
            dir.path(),
            &url,
            "127.0.0.1:0",
            &["--stop-when-idle", "3s"],
        );
        cmd.env("AWS_ENDPOINT", endpoint());
        for (k, v) in CREDS {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let status =
            wait_timeout(&mut child, Duration::from_secs(120)).expect("ymera run did not finish");
        assert!(status.success(), "{status}");
    };
    let count = || {
        let mut cmd = ymera();
        cmd.args([
            "sql",
            "--format",
            "csv",
            "SELECT count(*) AS n, count(DISTINCT seq) AS d FROM s3seq",
        ])
        .env("YMERA__LAKE__URL", &url)
        .env("AWS_ENDPOINT", endpoint());
        for (k, v) in CREDS {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&unique("g"));
    assert_eq!(count(), "n,d\n800,800");
    // a new consumer group (no group offsets at all) resumes from the tables' Delta logs
    run(&unique("g"));
    assert_eq!(count(), "n,d\n800,800");
}

/// Two writers commit to one Delta table on S3 at the same moment (conditional PUT of the
/// same log version): for the same partition's offsets exactly one commit wins and the other
/// finds them held; for different partitions both land, one after a retry.
#[test]
fn two_writers_racing_one_version_on_s3_never_duplicate() {
    use ymera_lake::delta::{Committed, TableCommit, Tables};

    let bucket = unique("race").to_ascii_lowercase();
    create_bucket(&bucket);
    let rt = runtime();
    let lake = Lake::open_with(&format!("s3://{bucket}/lake"), &s3_settings()).unwrap();
    let spec = seq_spec("race");
    let segment =
        |partition: i32, first: i64, last: i64| seq_commit(&spec, "p", partition, first, last);
    // the table exists before the race (both writers then load the same version)
    rt.block_on(Tables::new(lake.clone()).commit(&segment(0, 0, 9)))
        .unwrap();
    let race = |a: TableCommit, b: TableCommit| {
        let (mut wa, mut wb) = (Tables::new(lake.clone()), Tables::new(lake.clone()));
        rt.block_on(async {
            // both load the table first, so both build on the same snapshot
            let warm = segment(0, 0, 9);
            wa.commit(&warm).await.unwrap();
            wb.commit(&warm).await.unwrap();
            let (ra, rb) = tokio::join!(wa.commit(&a), wb.commit(&b));
            (ra.unwrap(), rb.unwrap())
        })
    };
    let (ra, rb) = race(segment(0, 10, 19), segment(0, 10, 19));
    let won = [ra, rb]
        .iter()
        .filter(|r| matches!(r, Committed::Version(_)))
        .count();
    assert_eq!(won, 1, "{ra:?} {rb:?}");
    assert!([ra, rb].contains(&Committed::AlreadyHeld), "{ra:?} {rb:?}");
    let (ra, rb) = race(segment(0, 20, 29), segment(1, 0, 9));
    assert!(
        matches!((ra, rb), (Committed::Version(_), Committed::Version(_))),
        "{ra:?} {rb:?}"
    );
    let files = rt
        .block_on(ymera_lake::delta::live_files(&lake, "race"))
        .unwrap();
    assert_eq!(files.len(), 4, "{files:?}");
}
