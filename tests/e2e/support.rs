//! Helpers shared by the end-to-end tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{Array, Int64Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ymera_ingest::produce::{self, OutRecord};

/// The broker under test; `scripts/test` starts it.
pub fn brokers() -> String {
    std::env::var("YMERA_TEST_BROKERS").expect(
        "YMERA_TEST_BROKERS is not set: run the suite with scripts/test, which starts a tansu broker",
    )
}

/// A topic name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Creates a topic with `partitions` partitions on the tansu broker.
pub fn create_topic(rt: &tokio::runtime::Runtime, topic: &str, partitions: i32) {
    rt.block_on(produce::create_topics(&brokers(), &[topic], partitions))
        .expect("create topic");
}

/// `ymera broker`: librdkafka's mock cluster in a process of its own, so consumers can be
/// killed without losing the broker. Killed on drop.
pub struct DevBroker {
    child: Child,
    pub bootstrap: String,
}

impl DevBroker {
    pub fn start(topics: &[(&str, i32)]) -> DevBroker {
        use std::io::BufRead;
        let mut cmd = ymera();
        cmd.arg("broker");
        for (t, p) in topics {
            cmd.arg("--topic").arg(format!("{t}:{p}"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ymera broker");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read bootstrap address");
        DevBroker {
            child,
            bootstrap: line.trim().to_string(),
        }
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Produces (key, value) records to `brokers`; returns when all are acknowledged.
pub fn produce_to(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    topic: &str,
    records: &[(Vec<u8>, Vec<u8>)],
) {
    let producer = produce::producer(brokers, &BTreeMap::new()).expect("producer");
    let out = records.iter().map(|(k, v)| OutRecord {
        topic,
        key: Some(k),
        value: v,
        timestamp_ms: None,
    });
    rt.block_on(producer.send_all(out)).expect("produce");
}

/// Produces (key, value) records to the tansu broker.
pub fn produce(rt: &tokio::runtime::Runtime, topic: &str, records: &[(Vec<u8>, Vec<u8>)]) {
    produce_to(rt, &brokers(), topic, records)
}

/// A valid sequence-numbered record.
pub fn seq_record(seq: i64) -> (Vec<u8>, Vec<u8>) {
    let ts = 1_764_064_800_000_000i64 + seq * 1_000_000; // one event per second from 2025-11-25
    let value = format!(
        r#"{{"seq":{seq},"ts":{ts},"service":"svc-{:02}","latency_ms":{}.5}}"#,
        seq % 7,
        seq % 300
    );
    (format!("k{seq}").into_bytes(), value.into_bytes())
}

/// The pipeline used by these tests: seq records -> `SELECT *` -> lake table `seq`.
pub fn pipeline_yaml(name: &str, topic: &str, group: &str, dlq: &str, extra: &str) -> String {
    pipeline_yaml_with_sinks(
        name,
        topic,
        group,
        &format!(
            "  - lake: {{ table: {name}, partition_by: [dt], rolling: {{ max_rows: 700, max_interval: 1s }} }}"
        ),
        dlq,
        extra,
    )
}

/// The seq pipeline of [`pipeline_yaml`] with other sinks: `sinks` is the YAML list of
/// the `sinks:` key, one `  - ...` item per line. Its output is `seq` (int64), `ts`
/// (timestamp), `service` (utf8), `latency_ms` (float64) and `slow` (boolean).
pub fn pipeline_yaml_with_sinks(
    name: &str,
    topic: &str,
    group: &str,
    sinks: &str,
    dlq: &str,
    extra: &str,
) -> String {
    format!(
        r#"name: {name}
source:
  kafka:
    brokers: "${{YMERA_TEST_BROKERS}}"
    topics: [{topic}]
    group_id: {group}
    start: earliest
  schema:
    seq: int64
    ts: timestamp_us
    service: utf8
    latency_ms: float64
  event_time: ts
  on_bad_record: dlq
transforms:
  - name: out
    sql: "SELECT seq, ts, service, latency_ms, latency_ms > 250 AS slow FROM input"
sinks:
{sinks}
dlq: {dlq}
{extra}"#
    )
}

/// A directory with one pipeline file in it.
pub fn pipeline_dir(yaml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("pipeline.yaml"), yaml).expect("write pipeline");
    dir
}

/// The `ymera` binary cargo built for this test from the checkout under test
/// (`CARGO_BIN_EXE_ymera`), refused when it was built from other sources (see
/// [`check_binary`]). Nothing overrides it: the suite tests the commit it is run from.
pub fn ymera() -> Command {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let bin = Path::new(env!("CARGO_BIN_EXE_ymera"));
    if let Err(e) = CHECKED.get_or_init(|| check_binary(bin, &repo())) {
        panic!("{e}");
    }
    Command::new(bin)
}

/// Whether `bin` was built from the sources under `root`: the source hash it embeds (shown
/// by `--version`) against the hash of the files there now. Content, not modification
/// times: a clone gives every file the same time, so a shared build cache can look fresh
/// for a binary of another commit.
pub fn check_binary(bin: &Path, root: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: cannot run --version: {e}", bin.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    let built = version
        .split("(source ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| {
            format!(
                "{}: --version printed {:?}, with no source hash: not a binary of this tree",
                bin.display(),
                version.trim()
            )
        })?;
    let tree = crate::source_hash::source_hash(root)
        .map_err(|e| format!("hashing the sources under {}: {e}", root.display()))?;
    let tree = crate::source_hash::short(&tree);
    if built != tree {
        return Err(format!(
            "{} is stale: built from sources {built}, but the tree at {} hashes to {tree}; \
             a build cache kept it from another checkout or commit. Rebuild it with \
             `cargo test -p ymera-cli --test e2e` (scripts/test does)",
            bin.display(),
            root.display()
        ));
    }
    Ok(())
}

/// `ymera run ARGS DIR` against `brokers`, writing into `lake` (a path or URL), health on
/// `listen`, warnings-only logs on inherited stderr.
pub fn run_command(
    brokers: &str,
    dir: &Path,
    lake: impl AsRef<std::ffi::OsStr>,
    listen: &str,
    args: &[&str],
) -> Command {
    let mut cmd = ymera();
    cmd.arg("run")
        .args(args)
        .arg(dir)
        .env("YMERA_TEST_BROKERS", brokers)
        .env("YMERA__LAKE__URL", lake)
        .env("YMERA__RUN__LISTEN", listen)
        .env("YMERA__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// Starts `ymera run` on `dir` writing into `lake`, against `brokers`.
pub fn spawn_run_on(brokers: &str, dir: &Path, lake: &Path, extra: &[&str]) -> Child {
    spawn_run_env(brokers, dir, lake, extra, &[])
}

/// Like [`spawn_run_on`] with more environment variables (settings such as
/// [`SqliteWarehouse::env`]).
pub fn spawn_run_env(
    brokers: &str,
    dir: &Path,
    lake: &Path,
    extra: &[&str],
    env: &[(&str, OsString)],
) -> Child {
    run_command(brokers, dir, lake, "127.0.0.1:0", extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .expect("spawn ymera run")
}

/// The offsets group `group` committed for `topic` on the tansu broker.
pub fn committed(group: &str, topic: &str) -> Vec<(i32, Option<i64>)> {
    ymera_ingest::consume::committed_offsets(
        &brokers(),
        &BTreeMap::new(),
        group,
        topic,
        Duration::from_secs(10),
    )
    .expect("read committed offsets")
}

/// A lake written by pipeline `name` (table `name`) from `n` seq records produced to a new
/// tansu topic with `partitions` partitions.
pub struct SeqLake {
    pub lake: tempfile::TempDir,
    pub topic: String,
    pub group: String,
}

pub fn seq_lake(name: &str, n: i64, partitions: i32) -> SeqLake {
    let rt = runtime();
    let topic = unique(name);
    create_topic(&rt, &topic, partitions);
    produce(&rt, &topic, &(0..n).map(seq_record).collect::<Vec<_>>());
    let group = unique("g");
    let dir = pipeline_dir(&pipeline_yaml(
        name,
        &topic,
        &group,
        &format!("{{ path: _dlq/{name} }}"),
        "",
    ));
    let lake = tempfile::tempdir().expect("tempdir");
    run_until_idle(dir.path(), lake.path());
    SeqLake { lake, topic, group }
}

/// Runs `ymera run --stop-when-idle` to completion and asserts it exits 0.
pub fn run_until_idle(dir: &Path, lake: &Path) {
    run_until_idle_on(&brokers(), dir, lake)
}

/// Like [`run_until_idle`] against `brokers`.
pub fn run_until_idle_on(brokers: &str, dir: &Path, lake: &Path) {
    run_until_idle_env(brokers, dir, lake, &[])
}

/// Like [`run_until_idle_on`] with more environment variables.
pub fn run_until_idle_env(brokers: &str, dir: &Path, lake: &Path, env: &[(&str, OsString)]) {
    let mut child = spawn_run_env(brokers, dir, lake, &["--stop-when-idle", "4s"], env);
    let status = wait_timeout(&mut child, Duration::from_secs(180))
        .expect("ymera run did not finish in 180s");
    assert!(status.success(), "ymera run exited with {status}");
}

pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

/// `<topic>+<partition>+<first>-<last>.parquet` parsed by the test itself (a name taken by
/// an orphan gets a `.<16 hex>` suffix before `.parquet`).
pub fn parse_name(name: &str) -> Option<(String, i32, i64, i64)> {
    let mut stem = name.strip_suffix(".parquet")?;
    if let Some((head, tail)) = stem.rsplit_once('.')
        && tail.len() == 16
        && tail.chars().all(|c| c.is_ascii_hexdigit())
    {
        stem = head;
    }
    let (rest, range) = stem.rsplit_once('+')?;
    let (topic, partition) = rest.rsplit_once('+')?;
    let (a, b) = range.split_once('-')?;
    Some((
        topic.to_string(),
        partition.parse().ok()?,
        a.parse().ok()?,
        b.parse().ok()?,
    ))
}

/// The Parquet files of the Delta table at `dir` that its latest snapshot references (a
/// listing would also find files of commits that never happened), sorted; none when
/// there is no table yet.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    if !dir.join("_delta_log").is_dir() {
        return Vec::new();
    }
    let parent = dir.parent().expect("table dir has a parent");
    let table = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("table name");
    let lake = ymera_lake::Lake::open(parent.to_str().expect("utf-8 path")).expect("open lake");
    let files = runtime()
        .block_on(ymera_lake::delta::live_files(&lake, table))
        .expect("read the Delta log");
    files.into_iter().map(|f| dir.join(f)).collect()
}

/// Reads every batch of a Parquet file with the parquet crate.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).expect("open parquet");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet footer")
        .build()
        .expect("reader");
    reader.collect::<Result<Vec<_>, _>>().expect("read parquet")
}

/// The `seq` values of a table, per (partition) from file names.
pub fn seqs_by_partition(table_dir: &Path) -> HashMap<i32, Vec<i64>> {
    let mut out: HashMap<i32, Vec<i64>> = HashMap::new();
    for f in parquet_files(table_dir) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (_, partition, _, _) =
            parse_name(name).unwrap_or_else(|| panic!("unexpected file {}", f.display()));
        for b in read_parquet(&f) {
            let col = b.column_by_name("seq").expect("seq column");
            let seq = col
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("int64 seq");
            out.entry(partition)
                .or_default()
                .extend((0..seq.len()).map(|i| seq.value(i)));
        }
    }
    out
}

/// Checks the lake table against the produced sequence: every seq once, ranges contiguous.
pub fn assert_exactly_once(table_dir: &Path, expected: i64) {
    let by_partition = seqs_by_partition(table_dir);
    let mut seen = HashSet::new();
    let mut dups = 0;
    for seqs in by_partition.values() {
        for s in seqs {
            if !seen.insert(*s) {
                dups += 1;
            }
        }
    }
    let missing = (0..expected).filter(|s| !seen.contains(s)).count();
    assert_eq!(dups, 0, "duplicated records in the lake");
    assert_eq!(missing, 0, "missing records in the lake");
    assert_eq!(seen.len() as i64, expected);
    for (p, seqs) in &by_partition {
        assert!(
            seqs.len() >= 1000,
            "partition {p} processed only {} records",
            seqs.len()
        );
    }
    let ends = assert_contiguous(table_dir);
    let total: i64 = ends.values().map(|last| last + 1).sum();
    assert_eq!(
        total, expected,
        "offset ranges do not cover every record exactly once"
    );
}

/// Asserts that each partition's files cover contiguous, non-overlapping offset ranges
/// starting at 0 (files of one segment in several `dt=` directories share a name).
pub fn assert_contiguous(table_dir: &Path) -> HashMap<i32, i64> {
    let mut ranges: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for f in parquet_files(table_dir) {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let (_, p, a, b) = parse_name(name).expect("file name");
        ranges.entry(p).or_default().push((a, b));
    }
    let mut ends = HashMap::new();
    for (p, mut r) in ranges {
        r.sort();
        r.dedup();
        assert_eq!(r[0].0, 0, "partition {p} does not start at offset 0: {r:?}");
        for w in r.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].1 + 1,
                "partition {p}: ranges {:?} and {:?} are not contiguous",
                w[0],
                w[1]
            );
        }
        ends.insert(p, r[r.len() - 1].1);
    }
    ends
}

/// Where each seq record landed in `topic`: seq (from the key `k<seq>`) -> (partition,
/// offset), read back from `brokers`.
pub fn seq_positions(brokers: &str, topic: &str) -> HashMap<i64, (i32, i64)> {
    let records = ymera_ingest::consume::read_topic(
        brokers,
        &BTreeMap::new(),
        topic,
        Duration::from_secs(60),
    )
    .expect("read the topic back");
    records
        .into_iter()
        .map(|(p, r)| {
            let key = String::from_utf8(r.key.expect("record key")).expect("utf8 key");
            let seq = key
                .strip_prefix('k')
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("unexpected key {key}"));
            (seq, (p, r.offset))
        })
        .collect()
}

/// A SQLite warehouse file in a temp dir with its migrations; [`SqliteWarehouse::env`]
/// points `ymera run` at it (migrating on start). Read back with `python3`'s sqlite3
/// module, not through ymera's own code.
pub struct SqliteWarehouse {
    _dir: tempfile::TempDir,
    pub db: PathBuf,
    migrations: PathBuf,
}

impl SqliteWarehouse {
    /// A warehouse whose one migration, `0001_<name>.sql`, is `sql`.
    pub fn new(name: &str, sql: &str) -> SqliteWarehouse {
        let dir = tempfile::tempdir().expect("tempdir");
        let migrations = dir.path().join("migrations");
        std::fs::create_dir(&migrations).expect("migrations dir");
        std::fs::write(migrations.join(format!("0001_{name}.sql")), sql).expect("migration");
        SqliteWarehouse {
            db: dir.path().join("warehouse.db"),
            migrations,
            _dir: dir,
        }
    }

    /// The settings of `ymera run` for this warehouse.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let mut url = OsString::from("sqlite://");
        url.push(&self.db);
        vec![
            ("YMERA__WAREHOUSE__URL", url),
            (
                "YMERA__WAREHOUSE__MIGRATIONS",
                self.migrations.clone().into(),
            ),
            ("YMERA__WAREHOUSE__MIGRATE_ON_START", "true".into()),
        ]
    }

    /// The rows of a query, as JSON values (WAL mode: a reader sees the last committed
    /// transaction, so this may run beside `ymera run`).
    pub fn query(&self, sql: &str) -> Vec<Vec<serde_json::Value>> {
        const SCRIPT: &str = "import json, sqlite3, sys\n\
            c = sqlite3.connect(sys.argv[1])\n\
            print(json.dumps(c.execute(sys.argv[2]).fetchall()))\n\
            c.close()\n";
        let out = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.db)
            .arg(sql)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python3 sqlite3 `{sql}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON rows")
    }

    /// Whether the database file and `table` exist yet.
    pub fn has_table(&self, table: &str) -> bool {
        self.db.exists()
            && !self
                .query(&format!(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
                ))
                .is_empty()
    }
}

/// The pipeline YAML with a 3 s consumer session timeout: a restarted consumer joins only
/// once the group has dropped the killed one (10 s by default), so kill loops stay short.
pub fn with_short_session(yaml: &str) -> String {
    let start = "    start: earliest\n";
    assert!(yaml.contains(start), "not a seq pipeline: {yaml}");
    yaml.replace(
        start,
        &format!("{start}    client: {{ session.timeout.ms: \"3000\" }}\n"),
    )
}

/// Produces seq records `0..n` to `topic` on a thread, 500 every 1.1 s: a steady stream
/// over a kill loop (each restart waits for the group).
pub fn steady_producer(bootstrap: &str, topic: &str, n: i64) -> std::thread::JoinHandle<()> {
    let (bootstrap, topic) = (bootstrap.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let rt = runtime();
        let t0 = std::time::Instant::now();
        for (i, start) in (0..n).step_by(500).enumerate() {
            let batch: Vec<_> = (start..(start + 500).min(n)).map(seq_record).collect();
            produce_to(&rt, &bootstrap, &topic, &batch);
            let due = t0 + Duration::from_millis(1100 * (i as u64 + 1));
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
        }
    })
}

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over plain HTTP/1.0: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, None, None)
}

/// Polls `f` every 200 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/cli sits two levels below the repository root")
        .to_path_buf()
}

/// Writes `ymera gen ARGS` events as files under `dir` and produces each topic's events to
/// `bootstrap`, keyed by their entity id as gen does (the mock cluster has no admin API for
/// gen's own topic creation).
pub fn produce_generated(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    dir: &Path,
    gen_args: &[&str],
    topics: &[(&str, &str)],
) {
    let status = ymera()
        .args(["gen", "--output"])
        .arg(dir)
        .args(gen_args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ymera gen failed");
    for (topic, key) in topics {
        let text = std::fs::read_to_string(dir.join(format!("{topic}.jsonl"))).unwrap();
        let records: Vec<(Vec<u8>, Vec<u8>)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v[*key].as_str().unwrap().as_bytes().to_vec(),
                    l.as_bytes().to_vec(),
                )
            })
            .collect();
        produce_to(rt, bootstrap, topic, &records);
    }
}

/// An HTTP/1.0 request with an optional bearer token and JSON body: (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method != "GET" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The stdout of a command that must have succeeded (its stderr in the panic otherwise).
pub fn succeeded(out: std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ymera keys create --role ROLE` with `env`: the key printed.
pub fn create_key<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    env: &[(K, V)],
    role: &str,
) -> String {
    let mut c = ymera();
    c.args(["keys", "create", "--role", role]);
    c.envs(env.iter().map(|(k, v)| (k, v)));
    succeeded(c.output().unwrap()).trim().to_string()
}

/// `ymera serve` (SQLite warehouse, the lake under `work/lake`) with an analyst and an
/// agent key.
pub struct Server {
    pub work: tempfile::TempDir,
    pub child: Child,
    pub port: u16,
    pub analyst: String,
    pub agent: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn env_of(work: &Path) -> Vec<(String, String)> {
    vec![
        (
            "YMERA__LAKE__URL".into(),
            work.join("lake").display().to_string(),
        ),
        (
            "YMERA__WAREHOUSE__URL".into(),
            format!("sqlite://{}/warehouse.db", work.display()),
        ),
        (
            "YMERA__AUTH__ADMIN_KEY_FILE".into(),
            work.join("admin.key").display().to_string(),
        ),
        ("YMERA__LOG__LEVEL".into(), "warn".into()),
    ]
}

impl Server {
    /// `ymera serve` on an empty lake with the settings given (`YMERA__…` pairs) on top
    /// of the defaults.
    pub fn start(settings: &[(&str, &str)]) -> Server {
        let work = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(work.path().join("lake")).unwrap();
        Server::start_in(work, settings)
    }

    /// `ymera serve` on `work/lake` as it is.
    pub fn start_in(work: tempfile::TempDir, settings: &[(&str, &str)]) -> Server {
        let env = env_of(work.path());
        let (analyst, agent) = (create_key(&env, "analyst"), create_key(&env, "agent"));
        let port = free_port();
        let log = std::fs::File::create(work.path().join("serve.log")).unwrap();
        let child = ymera()
            .arg("serve")
            .current_dir(work.path())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("YMERA__SERVE__LISTEN", format!("127.0.0.1:{port}"))
            .envs(settings.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Server {
            work,
            child,
            port,
            analyst,
            agent,
        };
        assert!(
            wait_for(Duration::from_secs(60), || {
                http_get(port, "/health/ready").is_some_and(|(s, _)| s == 200)
            }),
            "ymera serve did not become ready: {}",
            server.log()
        );
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("serve.log")).unwrap_or_default()
    }

    /// `GET path` with the analyst key.
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.port, "GET", path, Some(&self.analyst), None).expect("request")
    }

    /// `POST path` with `token` and a JSON `body`.
    pub fn post(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        http(self.port, "POST", path, Some(token), Some(body)).expect("request")
    }
}

/// A lake table of one `seq` column, written directly through `ymera_lake` (no pipeline).
pub fn seq_spec(table: &str) -> ymera_lake::TableSpec {
    ymera_lake::TableSpec {
        table: table.into(),
        partition_by: Vec::new(),
        event_time: None,
        zstd_level: 3,
        schema: std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("seq", arrow::datatypes::DataType::Int64, false),
        ])),
    }
}

/// The commit of `seq` values `first..=last` to `spec`'s table as offsets of topic `t`'s
/// `partition`, with that partition's txn for `pipeline`.
pub fn seq_commit(
    spec: &ymera_lake::TableSpec,
    pipeline: &str,
    partition: i32,
    first: i64,
    last: i64,
) -> ymera_lake::delta::TableCommit {
    let batch = RecordBatch::try_new(
        spec.schema.clone(),
        vec![std::sync::Arc::new(Int64Array::from_iter_values(
            first..=last,
        ))],
    )
    .unwrap();
    let mut w = ymera_lake::TableWriter::new(spec.clone(), Vec::new()).unwrap();
    w.write(&batch).unwrap();
    let name = ymera_lake::SegmentId {
        topic: "t".into(),
        partition,
        first,
        last,
    }
    .file_name();
    let id = ymera_lake::delta::app_id(pipeline, "t", partition);
    ymera_lake::delta::TableCommit::new(spec, w.finish(&name).unwrap(), vec![(id, first, last)])
}
