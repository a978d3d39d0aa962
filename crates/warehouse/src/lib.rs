//! The relational warehouse: SQLite (default, embedded) or PostgreSQL, through sqlx.
//!
//! - [`Warehouse::connect`] opens a pool (SQLite in WAL mode with a busy timeout, so
//!   `run`, `serve` and the CLI can share one file) and creates ymera's own tables (the
//!   ledger, dead letters, API keys and the audit log);
//! - [`Warehouse::migrate`] applies the versioned migrations of `sql/migrations/`;
//! - [`Warehouse::describe`] reads a table's columns and unique keys (for `validate`, the
//!   sink and SQL);
//! - [`Warehouse::commit`] writes one segment of rows and the per-partition next offset in
//!   one transaction (exactly-once), via COPY on PostgreSQL and prepared statements on
//!   SQLite;
//! - [`provider::WarehouseTable`] is a DataFusion `TableProvider` that streams a table;
//! - `security.rs`: API keys (only their hash) and the hash-chained audit log;
//! - `alerts.rs`: who acknowledged or resolved which alert (the lake's alert tables are
//!   append-only; this is the state the alerts API changes).
//!
//! No SQL text is built from values: identifiers are validated ([`ident`]) and quoted,
//! values are bound (or, for COPY, encoded as COPY text data).

#[macro_use]
mod macros {
    /// Runs `$body` with `$p` bound to the pool of either dialect.
    macro_rules! on_pool {
        ($wh:expr, $p:ident => $body:expr) => {
            match &$wh.pool {
                Pool::Sqlite($p) => $body,
                Pool::Postgres($p) => $body,
            }
        };
    }
}

mod alerts;
mod error;
pub mod provider;
mod schema;
mod security;
mod sqlite_scan;
mod write;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use alerts::{ALERT_STATES_TABLE, AlertChange, AlertState};
pub use error::{Result, WarehouseError};
pub use schema::{Column, SqlKind, TableInfo, closest, fit};
pub use security::{
    API_KEYS_TABLE, AUDIT_TABLE, AuditEntry, AuditKey, AuditReport, AuditRow, GENESIS_HASH,
    HMAC_PREFIX, KEY_PREFIX, KeyRecord, audit_hash, sha256_hex,
};
pub use write::{Commit, Committed, Mode, OnReject, Origin, Rejected, TableWrite, WriteMethod};

/// The ledger table: next offset per (pipeline, topic, partition), written in the same
/// transaction as the rows.
pub const OFFSETS_TABLE: &str = "_ymera_offsets";

/// Rows a warehouse sink's constraints refused, with the DLQ columns of interfaces.md plus
/// the table, written in the same transaction as the accepted rows.
pub const DEAD_LETTERS_TABLE: &str = "_ymera_dead_letters";

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Bind placeholder number `i` (1-based).
    fn ph(self, i: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{i}"),
            Dialect::Postgres => format!("${i}"),
        }
    }
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection pool to the warehouse.
#[derive(Clone)]
pub struct Warehouse {
    pool: Pool,
    /// The database file of a SQLite warehouse (not of an in-memory one): analyst scans
    /// open it read-only with a connection of their own (`sqlite_scan`).
    sqlite_file: Option<std::path::PathBuf>,
    /// The URL with any password removed (for messages).
    shown: String,
    /// The key audit rows are signed with (`audit.hmac_key_file`), if any.
    audit_key: Option<security::AuditKey>,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("url", &self.shown)
            .finish()
    }
}

/// A URL without its secrets, for messages and logs.
pub use ymera_common::redact;

/// Checks a table or column name: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes. Names are
/// also double-quoted in statements; this check keeps quoting trivially safe.
pub fn ident(name: &str) -> Result<&str> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name)
    } else {
        Err(WarehouseError::User(format!(
            "`{name}` is not a valid table or column name (letters, digits, `_`; not starting with a digit)"
        )))
    }
}

fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

/// How long a PostgreSQL statement of ours waits for another session's lock before it
/// fails (transiently: a commit is retried with backoff, a segment never lost).
pub const PG_LOCK_TIMEOUT: &str = "30s";
/// How long a PostgreSQL statement of ours may run.
pub const PG_STATEMENT_TIMEOUT: &str = "10min";

impl Warehouse {
    /// Connects (`sqlite://path`, `sqlite::memory:`, `postgres://...`) and makes sure the
    /// ledger table exists. A SQLite file is created when missing.
    /// Connects to `url`. PostgreSQL sessions get `lock_timeout` [`PG_LOCK_TIMEOUT`] and
    /// `statement_timeout` [`PG_STATEMENT_TIMEOUT`] unless the URL sets them
    /// (`?options=-c%20lock_timeout%3D5s`).
    pub async fn connect(url: &str) -> Result<Warehouse> {
        let shown = redact(url);
        let unreachable = |e: sqlx::Error| {
            WarehouseError::External(format!("cannot connect to the warehouse {shown}: {e}"))
        };
        let mut sqlite_file = None;
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| WarehouseError::User(format!("warehouse.url `{shown}`: {e}")))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
                // long scans for analyst SQL are expected, not worth a warning each
                .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(10));
            // an in-memory database exists once per connection: keep exactly one
            let max = if url.contains(":memory:") { 1 } else { 4 };
            let file = opts.get_filename().to_path_buf();
            let pool = Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .map_err(unreachable)?,
            );
            // an in-memory database has no file to open a second connection on
            if max > 1 && file.is_file() {
                sqlite_file = Some(file);
            }
            pool
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| WarehouseError::User(format!("warehouse.url `{shown}`: {e}")))?;
            // a statement waiting on another session's lock, or running away, fails in
            // bounded time (retried like any transient error) instead of stalling the
            // pipeline and its consumer group; the URL's or PGOPTIONS' own `-c` settings win
            let set: Vec<String> = opts
                .get_options()
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|t| {
                    let t = t
                        .strip_prefix("--")
                        .or_else(|| t.strip_prefix("-c"))
                        .unwrap_or(t);
                    t.split_once('=').map(|(k, _)| k.to_string())
                })
                .collect();
            let defaults: Vec<(&str, &str)> = [
                ("lock_timeout", PG_LOCK_TIMEOUT),
                ("statement_timeout", PG_STATEMENT_TIMEOUT),
            ]
            .into_iter()
            .filter(|(k, _)| !set.iter().any(|s| s == k))
            .collect();
            let opts = opts
                .options(defaults)
                .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(10));
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
                    .map_err(unreachable)?,
            )
        } else {
            return Err(WarehouseError::User(format!(
                "warehouse.url `{shown}` must start with sqlite:// or postgres://"
            )));
        };
        let wh = Warehouse {
            pool,
            sqlite_file,
            shown,
            audit_key: None,
        };
        wh.ensure_ledger().await?;
        wh.ensure_security_tables().await?;
        wh.ensure_alert_states().await?;
        Ok(wh)
    }

    pub fn dialect(&self) -> Dialect {
        match self.pool {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The URL without its password.
    pub fn url(&self) -> &str {
        &self.shown
    }

    async fn execute(&self, sql: &str) -> Result<()> {
        match &self.pool {
            Pool::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
            Pool::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        }
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))
    }

    async fn ensure_ledger(&self) -> Result<()> {
        // SQLite stores the RFC 3339 text either way; the declared type tells readers
        // (`ymera sql`) it is a timestamp
        let ts = match self.dialect() {
            Dialect::Sqlite => "TIMESTAMP",
            Dialect::Postgres => "TIMESTAMPTZ",
        };
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} (
                pipeline TEXT NOT NULL,
                topic TEXT NOT NULL,
                kafka_partition INTEGER NOT NULL,
                next_offset BIGINT NOT NULL,
                updated_at {ts} NOT NULL,
                PRIMARY KEY (pipeline, topic, kafka_partition));
             CREATE TABLE IF NOT EXISTS {DEAD_LETTERS_TABLE} (
                ymera_pipeline TEXT NOT NULL,
                ymera_table TEXT NOT NULL,
                ymera_error_stage TEXT NOT NULL,
                ymera_error_message TEXT NOT NULL,
                ymera_source_topic TEXT NOT NULL,
                ymera_source_partition INTEGER NOT NULL,
                ymera_source_offset BIGINT NOT NULL,
                ymera_failed_at {ts} NOT NULL,
                value TEXT)"
        ))
        .await
    }

    /// Applies every migration of `dir` not applied yet (sqlx's `<version>_<name>.sql`
    /// files, checksummed in `_sqlx_migrations`: an applied file that changed is refused).
    /// Returns the versions and names applied now.
    pub async fn migrate(&self, dir: &Path) -> Result<Vec<(i64, String)>> {
        let migrator = sqlx::migrate::Migrator::new(dir)
            .await
            .map_err(|e| WarehouseError::User(format!("migrations in {}: {e}", dir.display())))?;
        let before = self.applied_migrations().await?;
        let res = match &self.pool {
            Pool::Sqlite(p) => migrator.run(p).await,
            Pool::Postgres(p) => migrator.run(p).await,
        };
        res.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => WarehouseError::from_sqlx(e, &self.shown),
            other => WarehouseError::User(format!("migrations in {}: {other}", dir.display())),
        })?;
        Ok(migrator
            .iter()
            .filter(|m| !before.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect())
    }

    async fn applied_migrations(&self) -> Result<Vec<i64>> {
        let exists = self.describe("_sqlx_migrations").await?.is_some();
        if !exists {
            return Ok(Vec::new());
        }
        let sql = "SELECT version FROM _sqlx_migrations WHERE success";
        match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await,
            Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await,
        }
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))
    }

    /// The next offset per (topic, partition) recorded for `pipeline`.
    pub async fn read_positions(
        &self,
        pipeline: &str,
    ) -> Result<std::collections::HashMap<(String, i32), i64>> {
        let sql = format!(
            "SELECT topic, kafka_partition, next_offset FROM {OFFSETS_TABLE} WHERE pipeline = {}",
            self.dialect().ph(1)
        );
        let rows: Vec<(String, i32, i64)> = match &self.pool {
            Pool::Sqlite(p) => sqlx::query_as(&sql).bind(pipeline).fetch_all(p).await,
            Pool::Postgres(p) => sqlx::query_as(&sql).bind(pipeline).fetch_all(p).await,
        }
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(rows.into_iter().map(|(t, p, n)| ((t, p), n)).collect())
    }

    /// Runs trusted SQL text as it is (benchmarks and tests set up tables with it). Never
    /// pass anything that contains values from users or data.
    pub async fn run_trusted_script(&self, sql: &str) -> Result<()> {
        self.execute(sql).await
    }

    /// Forgets everything `pipeline` wrote: its offsets, its dead letters and every row of
    /// `tables` (`ymera demo` starts over with a fresh embedded broker).
    pub async fn reset(&self, pipeline: &str, tables: &[String]) -> Result<()> {
        let d = self.dialect();
        let by_pipeline = [
            format!("DELETE FROM {OFFSETS_TABLE} WHERE pipeline = {}", d.ph(1)),
            format!(
                "DELETE FROM {DEAD_LETTERS_TABLE} WHERE ymera_pipeline = {}",
                d.ph(1)
            ),
        ];
        let err = |e| WarehouseError::from_sqlx(e, &self.shown);
        for sql in &by_pipeline {
            match &self.pool {
                Pool::Sqlite(p) => sqlx::query(sql).bind(pipeline).execute(p).await.map(|_| ()),
                Pool::Postgres(p) => sqlx::query(sql).bind(pipeline).execute(p).await.map(|_| ()),
            }
            .map_err(err)?;
        }
        for t in tables {
            if self.describe(t).await?.is_some() {
                self.execute(&format!("DELETE FROM {}", quote(ident(t)?)))
                    .await?;
            }
        }
        Ok(())
    }

    /// Closes the pool (waits for connections to return).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

#[cfg(test)]
mod tests;
