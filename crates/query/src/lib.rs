//! Analyst SQL: one DataFusion session over every lake table and every warehouse table,
//! read-only by construction and bounded in memory, time and result rows.
//!
//! Read-only is enforced twice: the statement is parsed and only a query (or `EXPLAIN` of
//! one) is accepted; the plan is then checked by DataFusion's `SQLOptions` (no DDL, DML or
//! statements anywhere in it, subqueries and CTEs included). No table can name a file or
//! URL: URL tables are not enabled and no file-reading table function is registered. The
//! memory pool is bounded (one pool for every query of a session, or of a server with
//! [`Analyst::open_in`]) and spilling is disabled, so a query that needs more fails with a
//! clear error instead of growing; the functions that allocate outside the pool are
//! capped ([`capped`]); results are streamed, cut at `max_rows` and refused past
//! `max_result_bytes`; the whole query runs under a deadline checked by every operator
//! ([`deadline`]), and stops when the caller drops it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
pub use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::StreamExt;
use ymera_lake::Lake;
use ymera_warehouse::Warehouse;

/// Bounds of one query.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the query's operators may hold (joins, sorts, aggregates).
    pub memory: usize,
    /// Wall-clock limit of planning plus execution.
    pub timeout: Duration,
    /// Rows returned at most; the rest is cut (and said so).
    pub max_rows: usize,
    /// Bytes of result (Arrow) at most: past it the query is refused, not cut.
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 512 << 20,
            timeout: Duration::from_secs(25),
            max_rows: 100_000,
            max_result_bytes: 64 << 20,
        }
    }
}

/// Why a query did not run or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Not a read-only query.
    #[error("refused: {0}")]
    Refused(String),
    /// Unknown table or column, syntax, types.
    #[error("{0}")]
    Invalid(String),
    /// It needs more memory than `sql.memory_limit`, or its result is larger than
    /// `sql.max_result_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// `sql.timeout` stopped it.
    #[error("{0}")]
    Timeout(String),
    /// The caller already runs as many queries as it may at once.
    #[error("{0}")]
    Busy(String),
    /// Reading a table failed.
    #[error("{0}")]
    Execution(String),
}

/// Where a table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Lake,
    Warehouse,
}

/// A queryable table.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub source: Source,
    /// Hive partition columns (lake tables).
    pub partitions: Vec<String>,
    pub schema: SchemaRef,
    /// Lake tables: the directory in the lake and the Delta version every query of this
    /// session reads.
    pub delta: Option<(String, u64)>,
}

/// A query's result.
#[derive(Debug)]
pub struct Output {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// More rows existed than `max_rows`.
    pub truncated: bool,
}

/// A session over the lake and the warehouse.
pub struct Analyst {
    ctx: SessionContext,
    tables: Vec<Table>,
    limits: Limits,
    /// For time travel: older snapshots of its tables.
    lake: Lake,
}

impl std::fmt::Debug for Analyst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analyst")
            .field("tables", &self.tables.len())
            .field("limits", &self.limits)
            .finish()
    }
}

const REFUSED_HINT: &str = "analyst SQL is read-only: one SELECT (or WITH … SELECT, or EXPLAIN of one) over lake and warehouse tables";

/// Accepts one read-only query; says what else was found.
pub fn check_read_only(sql: &str) -> Result<(), QueryError> {
    let statements =
        DFParser::parse_sql(sql).map_err(|e| QueryError::Invalid(e.strip_backtrace()))?;
    if statements.len() != 1 {
        return Err(QueryError::Refused(format!(
            "{} statements given; {REFUSED_HINT}",
            statements.len()
        )));
    }
    fn check(s: &DfStatement) -> Result<(), QueryError> {
        let what = match s {
            DfStatement::Statement(st) => match st.as_ref() {
                Statement::Query(_) => return Ok(()),
                Statement::Insert(_)
                | Statement::Update { .. }
                | Statement::Delete(_)
                | Statement::Merge { .. }
                | Statement::Truncate { .. } => "data modification (DML)",
                Statement::Copy { .. } => "COPY",
                Statement::Set(_) => "SET",
                Statement::CreateTable(_)
                | Statement::CreateView { .. }
                | Statement::CreateSchema { .. }
                | Statement::CreateDatabase { .. }
                | Statement::CreateFunction(_)
                | Statement::CreateIndex(_)
                | Statement::Drop { .. }
                | Statement::AlterTable { .. } => "DDL",
                Statement::Explain { statement, .. } => {
                    return check(&DfStatement::Statement(statement.clone()));
                }
                _ => "a statement that is not a query",
            },
            DfStatement::CreateExternalTable(_) => {
                "CREATE EXTERNAL TABLE (files are not tables here)"
            }
            DfStatement::CopyTo(_) => "COPY … TO (writing files)",
            DfStatement::Reset(_) => "RESET",
            DfStatement::Explain(e) => return check(&e.statement),
        };
        Err(QueryError::Refused(format!("{what}; {REFUSED_HINT}")))
    }
    check(&statements[0])
}

/// A memory pool of `bytes` for [`Analyst::open_in`]; its errors name the three largest
/// consumers.
pub fn memory_pool(bytes: usize) -> Arc<dyn MemoryPool> {
    Arc::new(TrackConsumersPool::new(
        GreedyMemoryPool::new(bytes),
        std::num::NonZeroUsize::new(3).expect("3 > 0"),
    ))
}

fn looks_like_a_path(name: &str) -> bool {
    name.contains('/')
        || name.contains("://")
        || name.contains('\\')
        || [".parquet", ".csv", ".json", ".avro", ".arrow"]
            .iter()
            .any(|e| name.to_lowercase().ends_with(e))
}

/// The session settings of analyst SQL, chosen on the `sql/queries` benchmark over a
/// 10.9M-row lake of one file per `dt` partition (docs/analyst-sql.md "Speed"):
/// - two partitions per core: each partition opens its files one after another, so more
///   of them keep the cores busy while a file's footer is read (-10 to -30 % on scans
///   of about 1,260 files, 2 cores);
/// - no page index and no Bloom filters read: each costs a round trip per file, and a
///   `dt` file of a day holds one or two row groups (team_utilisation -17 %);
/// - filters evaluated after decoding, not pushed into the Parquet reader (the
///   session's default, which the Delta scan follows): pushing `status = 'done'` into
///   the reader made team_utilisation 25 % slower. The cost: delta-rs 1.1 hands the
///   reader no predicate at all then, so row groups inside a file are not pruned by
///   their statistics; whole files still are, by the statistics in the Delta log, and
///   partitions by their values.
fn session_config() -> SessionConfig {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(2 * cores);
    let options = config.options_mut();
    options.execution.time_zone = Some("UTC".to_string());
    options.execution.parquet.pushdown_filters = false;
    options.execution.parquet.enable_page_index = false;
    options.execution.parquet.bloom_filter_on_read = false;
    config
}

/// The tables `sql` reads, when its text alone tells: one statement whose every table is
/// named without a schema. `None` when it cannot tell (a parse error, several
/// statements, a qualified name): open every table then, and let the query report.
pub fn tables_named_in(sql: &str) -> Option<Vec<String>> {
    let mut statements = DFParser::parse_sql(sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let statement = statements.pop_front()?;
    let state = SessionStateBuilder::new().build();
    let mut names = Vec::new();
    for reference in state.resolve_table_references(&statement).ok()? {
        match reference {
            datafusion::common::TableReference::Bare { table } => names.push(table.to_string()),
            _ => return None,
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

impl Analyst {
    /// A session with every lake table and (when given) every warehouse table registered.
    /// A warehouse table whose name a lake table already has is left out; the returned
    /// warnings say so.
    pub async fn open(
        lake: &Lake,
        warehouse: Option<&Warehouse>,
        limits: Limits,
    ) -> Result<(Analyst, Vec<String>), QueryError> {
        Analyst::open_in(lake, warehouse, limits, memory_pool(limits.memory)).await
    }

    /// [`Analyst::open`] with the memory pool given: sessions that share one pool hold
    /// `limits.memory` together (a server's sessions over time, say).
    pub async fn open_in(
        lake: &Lake,
        warehouse: Option<&Warehouse>,
        limits: Limits,
        pool: Arc<dyn MemoryPool>,
    ) -> Result<(Analyst, Vec<String>), QueryError> {
        Analyst::open_some(lake, None, warehouse, limits, pool).await
    }

    /// [`Analyst::open`] with only the lake tables named in `lake_tables` (every one when
    /// `None`; see [`tables_named_in`]) and every warehouse table: a one-shot query loads
    /// the snapshots it reads and no others.
    pub async fn open_some(
        lake: &Lake,
        lake_tables: Option<&[String]>,
        warehouse: Option<&Warehouse>,
        limits: Limits,
        pool: Arc<dyn MemoryPool>,
    ) -> Result<(Analyst, Vec<String>), QueryError> {
        let config = session_config();
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(footer::FooterHint))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ymera_transform::register_udfs(&ctx);
        capped::register(&ctx, capped::budget(limits.memory));
        let mut tables = Vec::new();
        for t in ymera_lake::catalog::register_some_lake_tables(&ctx, lake, lake_tables)
            .await
            .map_err(|e| QueryError::Execution(format!("lake: {e}")))?
        {
            let schema = ctx
                .table_provider(t.name.as_str())
                .await
                .map_err(|e| QueryError::Execution(e.strip_backtrace()))?
                .schema();
            tables.push(Table {
                name: t.name,
                source: Source::Lake,
                partitions: t.partition_cols,
                schema,
                delta: Some((t.dir, t.version)),
            });
        }
        let mut warnings = Vec::new();
        if let Some(wh) = warehouse {
            let (registered, shadowed) = ymera_warehouse::provider::register_tables(&ctx, wh)
                .await
                .map_err(|e| QueryError::Execution(e.to_string()))?;
            for info in registered {
                tables.push(Table {
                    schema: info.arrow_schema(),
                    name: info.name,
                    source: Source::Warehouse,
                    partitions: Vec::new(),
                    delta: None,
                });
            }
            for name in shadowed {
                warnings.push(format!(
                    "warehouse table `{name}` is hidden by the lake table of the same name"
                ));
            }
        }
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((
            Analyst {
                ctx,
                tables,
                limits,
                lake: lake.clone(),
            },
            warnings,
        ))
    }

    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Reads each named lake table at the given version from now on (instead of the
    /// version the session started with): `train --as-of` rebuilds a training set from
    /// the versions its manifest recorded.
    pub async fn pin(&mut self, versions: &[(String, u64)]) -> Result<(), QueryError> {
        for (name, version) in versions {
            let i = self
                .tables
                .iter()
                .position(|t| &t.name == name && t.source == Source::Lake)
                .ok_or_else(|| {
                    QueryError::Invalid(format!(
                        "lake table `{name}` is not in the lake any more{}",
                        self.suggest_table(name)
                    ))
                })?;
            let Some((dir, _)) = self.tables[i].delta.clone() else {
                continue;
            };
            let (provider, _) =
                ymera_lake::catalog::provider(&self.ctx, &self.lake, name, &dir, Some(*version))
                    .await
                    .map_err(|e| QueryError::Invalid(e.to_string()))?
                    .ok_or_else(|| {
                        QueryError::Invalid(format!("table `{name}` is gone from the lake"))
                    })?;
            self.ctx
                .deregister_table(name.as_str())
                .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
            self.ctx
                .register_table(name.as_str(), provider.clone())
                .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
            self.tables[i].schema = provider.schema();
            self.tables[i].delta = Some((dir, *version));
        }
        Ok(())
    }

    /// The version each lake table had at `at` ([`Analyst::pin`] them to read the lake as
    /// it was then). Tables created after `at` are left out; a table whose versions of that
    /// time were cleaned up from its log is an error naming it.
    pub async fn versions_at(
        &self,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<(String, u64)>, QueryError> {
        let mut out = Vec::new();
        for t in &self.tables {
            if let Some((dir, _)) = &t.delta {
                match ymera_lake::maintain::version_at(&self.lake, dir, at).await {
                    Ok(Some(v)) => out.push((t.name.clone(), v)),
                    // created after `at`: not part of the lake as it was
                    Ok(None) => {}
                    Err(e @ ymera_lake::LakeError::Invalid(_)) => {
                        return Err(QueryError::Invalid(e.to_string()));
                    }
                    Err(e) => return Err(QueryError::Execution(e.to_string())),
                }
            }
        }
        Ok(out)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A table by name, or an error naming the closest one.
    pub fn table(&self, name: &str) -> Result<&Table, QueryError> {
        self.tables.iter().find(|t| t.name == name).ok_or_else(|| {
            QueryError::Invalid(format!(
                "unknown table `{name}`{}",
                self.suggest_table(name)
            ))
        })
    }

    fn suggest_table(&self, name: &str) -> String {
        match ymera_warehouse::closest(name, self.tables.iter().map(|t| t.name.as_str())) {
            Some(c) => format!(" (did you mean `{c}`?)"),
            None => format!(
                " (tables: {})",
                self.tables
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Turns DataFusion's errors into messages that name the input and the closest match.
    fn explain_error(&self, e: DataFusionError) -> QueryError {
        let e = e.find_root();
        match e {
            DataFusionError::SchemaError(se, _)
                if matches!(
                    se.as_ref(),
                    datafusion::common::SchemaError::FieldNotFound { .. }
                ) =>
            {
                let datafusion::common::SchemaError::FieldNotFound {
                    field,
                    valid_fields,
                } = se.as_ref()
                else {
                    unreachable!("matched above")
                };
                let names: Vec<String> = valid_fields.iter().map(|c| c.name.clone()).collect();
                let hint =
                    match ymera_warehouse::closest(&field.name, names.iter().map(String::as_str)) {
                        Some(c) => format!(" (did you mean `{c}`?)"),
                        None => format!(" (columns: {})", names.join(", ")),
                    };
                QueryError::Invalid(format!("unknown column `{}`{hint}", field.name))
            }
            DataFusionError::Plan(m) if m.starts_with("table '") && m.ends_with("' not found") => {
                let full = &m["table '".len()..m.len() - "' not found".len()];
                let name = full.rsplit('.').next().unwrap_or(full);
                if looks_like_a_path(full) {
                    QueryError::Refused(format!(
                        "`{full}` is a file path or URL; {REFUSED_HINT} (\\d lists them)"
                    ))
                } else {
                    QueryError::Invalid(format!(
                        "unknown table `{name}`{}",
                        self.suggest_table(name)
                    ))
                }
            }
            DataFusionError::Execution(m) if m == deadline::CANCELLED => {
                QueryError::Execution("the query was cancelled".into())
            }
            DataFusionError::Execution(m) if m == deadline::PASSED => QueryError::Timeout(format!(
                "the query ran longer than the time limit of {:?} (sql.timeout) and was stopped",
                self.limits.timeout
            )),
            DataFusionError::ResourcesExhausted(m) => QueryError::TooLarge(format!(
                "the query needs more than the memory limit of {} MiB (sql.memory_limit): {m}",
                self.limits.memory >> 20
            )),
            DataFusionError::Execution(m)
                if m.contains("disk manager") || m.contains("DiskManager") =>
            {
                QueryError::TooLarge(format!(
                    "the query needs more than the memory limit of {} MiB (sql.memory_limit) and spilling to disk is disabled",
                    self.limits.memory >> 20
                ))
            }
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::Invalid(e.strip_backtrace()),
            _ => QueryError::Execution(e.strip_backtrace()),
        }
    }

    /// The tables a read-only query reads (subqueries included), for lineage records.
    pub async fn tables_read_by(&self, sql: &str) -> Result<Vec<Table>, QueryError> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        use datafusion::logical_expr::LogicalPlan;
        let (sql, ctx, travelled) = self.travel(sql).await?;
        check_read_only(&sql)?;
        let plan = ctx
            .as_ref()
            .unwrap_or(&self.ctx)
            .state()
            .create_logical_plan(&sql)
            .await
            .map_err(|e| self.explain_error(e))?;
        let mut names = std::collections::BTreeSet::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                names.insert(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| self.explain_error(e))?;
        Ok(self
            .tables
            .iter()
            .chain(&travelled)
            .filter(|t| names.contains(&t.name))
            .map(|t| Table {
                // an older snapshot is recorded under its table's name, at its version
                name: t
                    .name
                    .split_once('@')
                    .map_or(t.name.as_str(), |(n, _)| n)
                    .to_string(),
                ..t.clone()
            })
            .collect())
    }

    /// `sql` with its time-travel clauses ([`travel`]) replaced by names of the snapshots
    /// they ask for, with a session of its own where those are registered beside every table
    /// (`None` when it asks for none: the shared session runs it), and those snapshots as
    /// tables (named `<table>@v<version>`).
    async fn travel(
        &self,
        sql: &str,
    ) -> Result<(String, Option<SessionContext>, Vec<Table>), QueryError> {
        let travels = travel::find(sql, &self.tables)?;
        if travels.is_empty() {
            return Ok((sql.to_string(), None, Vec::new()));
        }
        // a session of this query's own: the shared one never sees its snapshots
        let catalog = datafusion::catalog::MemoryCatalogProvider::new();
        datafusion::catalog::CatalogProvider::register_schema(
            &catalog,
            "public",
            Arc::new(datafusion::catalog::MemorySchemaProvider::new()),
        )
        .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
        let catalogs = Arc::new(datafusion::catalog::MemoryCatalogProviderList::new());
        datafusion::catalog::CatalogProviderList::register_catalog(
            catalogs.as_ref(),
            "datafusion".to_string(),
            Arc::new(catalog),
        );
        let state = datafusion::execution::SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_catalog_list(catalogs)
            .build();
        let ctx = SessionContext::new_with_state(state);
        for t in &self.tables {
            let provider = self
                .ctx
                .table_provider(t.name.as_str())
                .await
                .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
            ctx.register_table(t.name.as_str(), provider)
                .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
        }
        let mut names = Vec::with_capacity(travels.len());
        let mut snapshots: Vec<Table> = Vec::new();
        for tr in &travels {
            let table = self.table(&tr.table)?;
            let Some((dir, _)) = &table.delta else {
                return Err(QueryError::Execution(format!(
                    "internal error (this is a bug): lake table `{}` has no directory",
                    table.name
                )));
            };
            let version = match tr.at {
                travel::At::Version(v) => v,
                travel::At::Time(t) => ymera_lake::maintain::version_at(&self.lake, dir, t)
                    .await
                    .map_err(|e| QueryError::Invalid(e.to_string()))?
                    .ok_or_else(|| {
                        QueryError::Invalid(format!(
                            "table `{}` has no version as of {t}: it was created after that",
                            table.name
                        ))
                    })?,
            };
            let name = format!("{}@v{version}", table.name);
            if !snapshots.iter().any(|s| s.name == name) {
                let (provider, _) = ymera_lake::catalog::provider(
                    &ctx,
                    &self.lake,
                    &table.name,
                    dir,
                    Some(version),
                )
                .await
                .map_err(|e| QueryError::Invalid(e.to_string()))?
                .ok_or_else(|| {
                    QueryError::Invalid(format!("table `{}` is gone from the lake", table.name))
                })?;
                snapshots.push(Table {
                    name: name.clone(),
                    schema: provider.schema(),
                    delta: Some((dir.clone(), version)),
                    ..table.clone()
                });
                ctx.register_table(name.as_str(), provider)
                    .map_err(|e| QueryError::Execution(e.strip_backtrace()))?;
            }
            names.push(name);
        }
        Ok((travel::rewrite(sql, &travels, &names), Some(ctx), snapshots))
    }

    /// Runs one read-only query within the limits.
    pub async fn query(&self, sql: &str) -> Result<Output, QueryError> {
        let cancel = Cancel::default();
        let _cancel_on_drop = cancel.on_drop();
        self.query_cancellable(sql, &cancel).await
    }

    /// [`Analyst::query`], stopped at the next batch of any operator once `cancel` is
    /// cancelled (say by a [`CancelOnDrop`] held by the task waiting for the answer).
    pub async fn query_cancellable(
        &self,
        sql: &str,
        cancel: &Cancel,
    ) -> Result<Output, QueryError> {
        let (sql, travelled, _) = self.travel(sql).await?;
        let sql = sql.as_str();
        let ctx = travelled.as_ref().unwrap_or(&self.ctx);
        check_read_only(sql)?;
        let limits = self.limits;
        // every operator checks it: past the deadline or once cancelled, the work stops
        // at the next batch
        let stop = deadline::Stop::new(Instant::now() + limits.timeout, cancel.clone());
        let work = async {
            let opts = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx.sql_with_options(sql, opts).await.map_err(|e| match e {
                DataFusionError::Plan(m)
                    if m.contains("not supported")
                        && (m.contains("DDL") || m.contains("DML") || m.contains("Statement")) =>
                {
                    QueryError::Refused(format!("{m}; {REFUSED_HINT}"))
                }
                e => self.explain_error(e),
            })?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let task = Arc::new(df.task_ctx());
            let plan = df
                .create_physical_plan()
                .await
                .map_err(|e| self.explain_error(e))?;
            let plan =
                deadline::with_deadline(plan, stop.clone()).map_err(|e| self.explain_error(e))?;
            let mut stream = datafusion::physical_plan::execute_stream(plan, task)
                .map_err(|e| self.explain_error(e))?;
            let mut batches = Vec::new();
            let mut rows = 0;
            let mut bytes = 0;
            let mut truncated = false;
            while let Some(b) = stream.next().await {
                let mut b = b.map_err(|e| self.explain_error(e))?;
                let room = limits.max_rows - rows;
                if b.num_rows() > room {
                    b = b.slice(0, room);
                    truncated = true;
                }
                bytes += batch_bytes(&b);
                if bytes > limits.max_result_bytes {
                    return Err(QueryError::TooLarge(format!(
                        "the result is larger than {} MiB (sql.max_result_bytes) after {rows} rows: \
                         select fewer columns or rows, or aggregate",
                        limits.max_result_bytes >> 20
                    )));
                }
                rows += b.num_rows();
                batches.push(b);
                if truncated {
                    break;
                }
            }
            Ok(Output {
                schema,
                batches,
                rows,
                truncated,
            })
        };
        match tokio::time::timeout(limits.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(QueryError::Timeout(format!(
                "the query ran longer than the time limit of {:?} (sql.timeout) and was cancelled",
                limits.timeout
            ))),
        }
    }
}

/// Bytes of the rows of `b` (a slice counts only its rows).
pub fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

mod capped;
mod deadline;
mod footer;
mod travel;

pub use deadline::{Cancel, CancelOnDrop};
pub use travel::parse_time;

#[cfg(test)]
mod tests;
