//! Engine settings: built-in defaults < `ymera.yaml` (or `--config FILE`) <
//! `YMERA__SECTION__KEY` environment variables. The only place that reads them.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Yaml};
use serde::Deserialize;

/// All engine settings (reference: docs/settings.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The Parquet lake.
    pub lake: LakeSettings,
    /// The SQL warehouse.
    pub warehouse: WarehouseSettings,
    /// `ymera serve`.
    pub serve: ListenSettings,
    /// Credentials of `ymera serve`: JWTs, the bootstrap admin key, rate limits.
    pub auth: AuthSettings,
    /// Health and metrics of `ymera run`.
    pub run: RunSettings,
    /// Model registry location.
    pub registry: RegistrySettings,
    /// Limits of analyst SQL (`ymera sql`).
    pub sql: SqlSettings,
    /// Logging.
    pub log: LogSettings,
    /// The audit log's key and what a failed audit write does.
    pub audit: AuditSettings,
    /// The autoscaler's forecasts (`GET /v1/autoscale/{service}/forecast`).
    pub autoscale: ymera_serve::autoscale::AutoscaleConfig,
}

/// `lake.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeSettings {
    /// A path, `file://` or `s3://bucket/prefix` URL (default `./lake`).
    pub url: String,
    /// Writers checkpoint a table every this many commits, then clean up the log's expired
    /// commits, unless the table sets `delta.checkpointInterval` (default 100).
    pub checkpoint_interval: u64,
    /// Background compaction by `ymera run`.
    pub optimize: OptimizeSettings,
}

impl Default for LakeSettings {
    fn default() -> Self {
        LakeSettings {
            url: "./lake".into(),
            checkpoint_interval: ymera_lake::store::DEFAULT_CHECKPOINT_INTERVAL,
            optimize: OptimizeSettings::default(),
        }
    }
}

/// `lake.optimize.*`: background compaction of each pipeline's tables by the replica that
/// owns partition 0 of its first topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizeSettings {
    /// On by default.
    pub enabled: bool,
    /// Time between passes (the first comes one interval after start).
    #[serde(with = "ymera_common::units::duration")]
    pub interval: std::time::Duration,
    /// Files are packed up to this size.
    pub target_size: ymera_common::ByteSize,
    /// A table is compacted once its closed partitions hold this many files compaction can
    /// merge (smaller than the target, two or more in a partition).
    pub min_files: usize,
    /// A `dt` partition is closed once its day ended this long ago.
    #[serde(with = "ymera_common::units::duration")]
    pub closed_after: std::time::Duration,
    /// A pass over one table that runs longer is abandoned.
    #[serde(with = "ymera_common::units::duration")]
    pub deadline: std::time::Duration,
}

impl Default for OptimizeSettings {
    fn default() -> Self {
        let policy = ymera_lake::maintain::CompactPolicy::default();
        OptimizeSettings {
            enabled: true,
            interval: std::time::Duration::from_secs(30),
            target_size: ymera_common::ByteSize(policy.target_size),
            min_files: policy.min_files,
            closed_after: policy.closed_after,
            deadline: std::time::Duration::from_secs(15 * 60),
        }
    }
}

impl OptimizeSettings {
    /// What `ymera run` is told: `None` when compaction is off.
    pub fn compaction(&self) -> Option<ymera_pipeline::run::Compaction> {
        self.enabled.then(|| ymera_pipeline::run::Compaction {
            policy: ymera_lake::maintain::CompactPolicy {
                target_size: self.target_size.0.max(1 << 20),
                min_files: self.min_files.max(2),
                closed_after: self.closed_after,
            },
            interval: self.interval.max(std::time::Duration::from_secs(1)),
            deadline: self.deadline,
        })
    }
}

/// `warehouse.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarehouseSettings {
    /// `sqlite://./warehouse.db` (default) or `postgres://user:password@host/db`. Shown
    /// without its password wherever settings are printed.
    pub url: ymera_common::SecretUrl,
    /// Directory of the versioned migrations (default `sql/migrations`).
    pub migrations: std::path::PathBuf,
    /// Apply pending migrations when `ymera run` starts (default false: run
    /// `ymera warehouse migrate`; `ymera demo` always migrates).
    pub migrate_on_start: bool,
}

impl Default for WarehouseSettings {
    fn default() -> Self {
        WarehouseSettings {
            url: ymera_common::SecretUrl::new("sqlite://./warehouse.db"),
            migrations: "sql/migrations".into(),
            migrate_on_start: false,
        }
    }
}

/// `sql.*`: bounds of analyst SQL (`ymera sql`, `POST /v1/sql`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlSettings {
    /// Memory all analyst queries of the process hold together (default 512MiB); past it
    /// a query fails (nothing spills to disk). One call of a function that builds values
    /// (`repeat`, `lpad`, `range`, ...) may make at most a sixteenth of it per batch.
    pub memory_limit: ymera_common::ByteSize,
    /// Wall-clock limit (default 25s); under `ymera serve` it must be below
    /// `serve.request_timeout`.
    #[serde(with = "ymera_common::units::duration")]
    pub timeout: std::time::Duration,
    /// Rows returned at most (default 100000); the rest is cut with a warning.
    pub max_rows: usize,
    /// Largest result (default 64MiB, as Arrow data and again as the JSON body of
    /// `POST /v1/sql`); a larger one is refused (413), never cut silently.
    pub max_result_bytes: ymera_common::ByteSize,
    /// Queries one credential may run at once on `POST /v1/sql` (default 2); more get 429.
    pub max_concurrent_per_credential: usize,
}

impl Default for SqlSettings {
    fn default() -> Self {
        let limits = ymera_query::Limits::default();
        SqlSettings {
            memory_limit: ymera_common::ByteSize(limits.memory as u64),
            timeout: limits.timeout,
            max_rows: limits.max_rows,
            max_result_bytes: ymera_common::ByteSize(limits.max_result_bytes as u64),
            max_concurrent_per_credential: 2,
        }
    }
}

impl SqlSettings {
    /// The bounds of one query.
    pub fn limits(&self) -> ymera_query::Limits {
        ymera_query::Limits {
            memory: usize::try_from(self.memory_limit.0).unwrap_or(usize::MAX),
            timeout: self.timeout,
            max_rows: self.max_rows,
            max_result_bytes: usize::try_from(self.max_result_bytes.0).unwrap_or(usize::MAX),
        }
    }
}

/// `serve.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSettings {
    /// Address of the HTTP API (default 127.0.0.1:8080).
    pub listen: String,
    /// Browser origins allowed to call the API (CORS), exact (`https://app.example.com`);
    /// `["*"]` allows any. Default empty: no CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// Largest request body (default 1MiB); larger requests get 413.
    pub body_limit: ymera_common::ByteSize,
    /// Longest a request may take (default 30s); slower ones get 503.
    #[serde(with = "ymera_common::units::duration")]
    pub request_timeout: std::time::Duration,
    /// Models whose champion must be loaded before `/health/ready` is 200 (default: every
    /// model that has a champion when the server starts).
    pub models: Vec<String>,
    /// How often aliases are re-read, so promotions and rollbacks are served without a
    /// restart (default 2s).
    #[serde(with = "ymera_common::units::duration")]
    pub reload_interval: std::time::Duration,
    /// Worker threads of the separate runtime that runs `POST /v1/sql` (default 1).
    pub sql_threads: usize,
    /// Lake tables `GET /v1/alerts` reads alerts from (default `[anomaly_alerts]`, the
    /// table of `pipelines/metric_anomalies.yaml`).
    pub alert_tables: Vec<String>,
}

impl Default for ListenSettings {
    fn default() -> Self {
        ListenSettings {
            listen: "127.0.0.1:8080".into(),
            cors_allowed_origins: Vec::new(),
            body_limit: ymera_common::ByteSize(1 << 20),
            request_timeout: std::time::Duration::from_secs(30),
            models: Vec::new(),
            reload_interval: std::time::Duration::from_secs(2),
            sql_threads: 1,
            alert_tables: vec!["anomaly_alerts".into()],
        }
    }
}

/// `auth.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// JWTs are accepted when all three keys are set.
    pub jwt: JwtSettings,
    /// Where `ymera serve` writes the admin key it creates when the warehouse has no key
    /// and no JWT is configured (default `./ymera-admin.key`, mode 0600).
    pub admin_key_file: std::path::PathBuf,
    /// Requests per credential.
    pub rate_limit: RateLimitSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt: JwtSettings::default(),
            admin_key_file: "./ymera-admin.key".into(),
            rate_limit: RateLimitSettings::default(),
        }
    }
}

/// `auth.jwt.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtSettings {
    /// PEM public key, Ed25519 (EdDSA) or RSA (RS256); the algorithm follows the key.
    pub public_key_file: Option<std::path::PathBuf>,
    /// The accepted `iss` claim.
    pub issuer: Option<String>,
    /// The `aud` claim that must be present.
    pub audience: Option<String>,
}

/// `auth.rate_limit.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// Sustained requests per second per key or JWT subject (default 50).
    pub per_second: u32,
    /// Requests at once before the rate applies (default 100).
    pub burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_second: 50,
            burst: 100,
        }
    }
}

/// `run.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Address of the health and metrics routes of `ymera run` (default 127.0.0.1:9464).
    pub listen: String,
    /// How often `ymera run` writes the input rate it records of itself per pipeline per
    /// minute to the lake table `ymera_run_input` (default 1m: the lag the autoscaler folds in
    /// is at most this old; one file per replica per flush; `0s`: not recorded).
    #[serde(with = "ymera_common::units::duration")]
    pub input_rate_flush: std::time::Duration,
    /// What the process's pipelines may hold in memory together (default 1GiB): open
    /// segments of every sink and librdkafka's prefetch. Past it the largest open segments
    /// are published early, whatever their rolling settings say.
    pub memory_limit: ymera_common::ByteSize,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            listen: "127.0.0.1:9464".into(),
            input_rate_flush: std::time::Duration::from_secs(60),
            memory_limit: ymera_common::ByteSize(1024 * 1024 * 1024),
        }
    }
}

/// `registry.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySettings {
    /// Where model versions live (default: the lake's `_models/`).
    pub url: Option<String>,
    /// PEM PKCS#8 Ed25519 private key that signs manifests and alias records as they are
    /// written (`ymera train`, promotions, rollbacks). Default none: nothing is signed.
    pub signing_key_file: Option<std::path::PathBuf>,
    /// PEM Ed25519 public key: every manifest and current alias record loaded must carry
    /// a signature it verifies (`ymera serve` refuses the version otherwise). Defaults
    /// to the signing key's public half when only that is set.
    pub public_key_file: Option<std::path::PathBuf>,
}

/// `audit.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// A file holding the key audit rows are signed with (HMAC-SHA256; 64+ hex digits or
    /// 32+ raw bytes, e.g. `openssl rand -hex 32`). It must not live under the lake or
    /// beside the warehouse: mount it from a Secret. Default none: rows are hash-chained
    /// but not signed.
    pub hmac_key_file: Option<std::path::PathBuf>,
    /// `POST /v1/sql` withholds a result (503) when its audit row cannot be written
    /// (default true).
    pub sql_fail_closed: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            hmac_key_file: None,
            sql_fail_closed: true,
        }
    }
}

/// `log.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `json`, `text`, or unset: JSON when stderr is not a terminal.
    pub format: Option<String>,
    /// An `EnvFilter` directive such as `info` or `ymera=debug` (default `info`); the Delta
    /// kernel and delta-rs stay at `warn` unless it names them.
    pub level: Option<String>,
    /// Where OpenTelemetry traces go over OTLP/HTTP (JSON): the traces URL of a
    /// collector, e.g. `http://otel-collector:4318/v1/traces`. Unset: no traces.
    pub otlp_endpoint: Option<String>,
}

/// Loads the settings. A missing default `ymera.yaml` is fine; a missing `--config` is not.
pub fn load(explicit: Option<&Path>) -> Result<Settings, String> {
    let mut fig = Figment::new();
    match explicit {
        Some(p) if !p.exists() => return Err(format!("{}: settings file not found", p.display())),
        Some(p) => fig = fig.merge(Yaml::file(p)),
        None => fig = fig.merge(Yaml::file("ymera.yaml")),
    }
    fig = fig.merge(Env::prefixed("YMERA__").split("__").lowercase(true));
    fig.extract::<Settings>().map_err(|e| {
        e.into_iter()
            .map(|e| format!("settings: {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_settings_hold_no_warehouse_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ymera.yaml");
        std::fs::write(
            &file,
            "warehouse:\n  url: postgres://ymera:hunter2@db:5432/prod?sslpassword=hunter3\n",
        )
        .unwrap();
        let settings = load(Some(&file)).unwrap();
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(
            shown.contains("postgres://ymera:***@db:5432/prod"),
            "{shown}"
        );
        assert_eq!(
            settings.warehouse.url.expose(),
            "postgres://ymera:hunter2@db:5432/prod?sslpassword=hunter3"
        );
    }
}
