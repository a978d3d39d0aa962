//! `POST /v1/sql`: the read-only analyst SQL of `ymera sql`, over HTTP.
//!
//! Queries run on a runtime of their own, on their own threads (`serve.sql_threads`), with
//! their own lake and warehouse connections, so a heavy query cannot take the threads
//! that answer predictions. The memory, time, row and result-size limits are those of
//! `sql.*`: every query of one service draws on one memory pool; a query whose caller
//! went away (a closed connection, `serve.request_timeout`) is cancelled; one credential
//! runs at most `sql.max_concurrent_per_credential` queries at once. The autoscaler reads
//! through a service of its own, so analysts cannot starve it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use ymera_lake::Lake;
use ymera_query::{Analyst, Cancel, Limits, MemoryPool, Output, QueryError};
use ymera_warehouse::Warehouse;

use crate::AppState;
use crate::auth::Principal;
use crate::models::error_json;

/// Where analyst SQL reads from.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    pub lake_url: String,
    pub s3: Vec<(String, ymera_common::Secret)>,
    pub warehouse_url: Option<ymera_common::SecretUrl>,
    pub limits: Limits,
    /// Worker threads of the SQL runtime.
    pub threads: usize,
    /// How long a table catalog is reused before new tables are looked for.
    pub catalog_ttl: Duration,
    /// Queries one caller of [`SqlService::query_as`] may run at once.
    pub max_per_caller: usize,
    /// `POST /v1/sql` withholds a result whose audit row cannot be written.
    pub audit_fail_closed: bool,
}

type Job = (String, Cancel, oneshot::Sender<Result<Output, QueryError>>);
/// The analyst session and when its table catalog was read.
type Catalog = tokio::sync::Mutex<Option<(Instant, Arc<Analyst>)>>;

/// A handle on the SQL runtime.
#[derive(Debug, Clone)]
pub struct SqlService {
    jobs: mpsc::Sender<Job>,
    /// Queries running per caller; a caller leaves the map when its last query ends.
    running: Arc<Mutex<HashMap<String, usize>>>,
    max_per_caller: usize,
    limits: Limits,
    audit_fail_closed: bool,
}

/// One running query of a caller; dropping it frees the slot.
struct Slot {
    running: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        if let Some(n) = running.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

fn lock(m: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqlService {
    /// Starts the SQL runtime on its own thread.
    pub fn start(config: SqlConfig) -> std::io::Result<SqlService> {
        let (tx, mut rx) = mpsc::channel::<Job>(64);
        let pool = ymera_query::memory_pool(config.limits.memory);
        let service = SqlService {
            jobs: tx,
            running: Arc::default(),
            max_per_caller: config.max_per_caller.max(1),
            limits: config.limits,
            audit_fail_closed: config.audit_fail_closed,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("ymera-sql")
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("ymera-sql-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let catalog: Arc<Catalog> = Arc::default();
                    while let Some((sql, cancel, reply)) = rx.recv().await {
                        let config = config.clone();
                        let catalog = catalog.clone();
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            let result = match session(&config, &catalog, pool).await {
                                Ok(analyst) => analyst.query_cancellable(&sql, &cancel).await,
                                Err(e) => Err(e),
                            };
                            let _ = reply.send(result);
                        });
                    }
                });
            })?;
        Ok(service)
    }

    /// The bounds of each query.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs one query for `caller`, refused while `caller` already runs as many as it may.
    pub async fn query_as(&self, caller: &str, sql: String) -> Result<Output, QueryError> {
        let _slot = {
            let mut running = lock(&self.running);
            let n = running.entry(caller.to_string()).or_insert(0);
            if *n >= self.max_per_caller {
                return Err(QueryError::Busy(format!(
                    "this credential already runs {n} queries (sql.max_concurrent_per_credential): retry when one ends"
                )));
            }
            *n += 1;
            Slot {
                running: self.running.clone(),
                caller: caller.to_string(),
            }
        };
        self.query(sql).await
    }

    /// Runs one query on the SQL runtime; dropping the future cancels it.
    pub async fn query(&self, sql: String) -> Result<Output, QueryError> {
        let (tx, rx) = oneshot::channel();
        // this future is dropped when the client goes away or serve.request_timeout
        // passes: the query's operators then stop at their next batch
        let cancel = Cancel::default();
        let _cancel_on_drop = cancel.on_drop();
        self.jobs
            .send((sql, cancel, tx))
            .await
            .map_err(|_| QueryError::Execution("the SQL runtime has stopped".into()))?;
        rx.await
            .map_err(|_| QueryError::Execution("the SQL runtime dropped the query".into()))?
    }
}

async fn session(
    config: &SqlConfig,
    catalog: &Catalog,
    pool: Arc<dyn MemoryPool>,
) -> Result<Arc<Analyst>, QueryError> {
    let mut guard = catalog.lock().await;
    if let Some((at, a)) = guard.as_ref()
        && at.elapsed() < config.catalog_ttl
    {
        return Ok(a.clone());
    }
    let lake = Lake::open_with(&config.lake_url, &config.s3)
        .map_err(|e| QueryError::Execution(format!("opening the lake: {e}")))?;
    let warehouse = match &config.warehouse_url {
        Some(url) => Some(
            Warehouse::connect(url.expose())
                .await
                .map_err(|e| QueryError::Execution(format!("connecting to the warehouse: {e}")))?,
        ),
        None => None,
    };
    let (analyst, _warnings) =
        Analyst::open_in(&lake, warehouse.as_ref(), config.limits, pool).await?;
    let analyst = Arc::new(analyst);
    *guard = Some((Instant::now(), analyst.clone()));
    Ok(analyst)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// `POST /v1/sql` `{"sql": "SELECT …"}` → `{"columns": [...], "rows": [{...}], "row_count",
/// "truncated"}`.
pub async fn post_sql(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Response {
    let Some(sql_service) = app.sql.clone() else {
        return error_json(
            StatusCode::NOT_FOUND,
            "analyst SQL is not enabled on this server",
        );
    };
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"sql\": \"SELECT …\"}}: {e}"),
            );
        }
    };
    let started = Instant::now();
    let limits = sql_service.limits();
    let result = sql_service.query_as(&who.subject, req.sql.clone()).await;
    let (status, response, rows) = match result.map_err(Failure::from).and_then(|out| {
        let rows = out.rows;
        to_json(&out, limits.max_result_bytes).map(|body| (body, rows))
    }) {
        Ok((body, rows)) => {
            let mut resp = (StatusCode::OK, body).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            (StatusCode::OK, resp, rows)
        }
        Err(failure) => {
            let status = failure.status;
            let mut resp = error_json(status, failure.text);
            if status == StatusCode::TOO_MANY_REQUESTS {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            (status, resp, 0)
        }
    };
    // the text's first 4,000 characters for reading, and the whole text's sha256 and
    // length, so a row proves which query ran without holding megabytes of it
    let sql_text: String = req.sql.chars().take(4000).collect();
    let written = app
        .auth
        .audit_checked(
            &who,
            "sql.query",
            "/v1/sql",
            status.as_str(),
            json!({
                "sql": sql_text,
                "sql_sha256": ymera_warehouse::sha256_hex(&req.sql),
                "sql_bytes": req.sql.len(),
                "rows": rows,
                "ms": started.elapsed().as_millis() as u64,
            }),
        )
        .await;
    // only a result is withheld: a refusal discloses no data and keeps its own status
    match written {
        Err(e) if sql_service.audit_fail_closed && status == StatusCode::OK => {
            tracing::error!(error = %e, actor = %who.subject, "cannot audit a SQL query: its result is withheld (audit.sql_fail_closed)");
            error_json(
                StatusCode::SERVICE_UNAVAILABLE,
                "the query could not be recorded in the audit log, so its result is withheld (audit.sql_fail_closed): retry later",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, actor = %who.subject, "cannot audit a SQL query");
            response
        }
        Ok(()) => response,
    }
}

/// Why a query has no answer: its message, and the status it gets.
pub(crate) struct Failure {
    pub(crate) text: String,
    pub(crate) status: StatusCode,
}

impl From<QueryError> for Failure {
    fn from(e: QueryError) -> Failure {
        let status = match e {
            QueryError::Refused(_) => StatusCode::FORBIDDEN,
            QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
            QueryError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            QueryError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            QueryError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Failure {
            text: e.to_string(),
            status,
        }
    }
}

/// The response body, refused (413) once it would pass `max_bytes`: rows are encoded a
/// few thousand at a time and the length checked after each, so a body is either whole
/// or not sent at all.
fn to_json(out: &Output, max_bytes: usize) -> Result<Vec<u8>, Failure> {
    const CHUNK: usize = 4096;
    let too_large = |rows: usize| Failure {
        text: format!(
            "the result's JSON is larger than {} MiB (sql.max_result_bytes) after {rows} rows: \
             select fewer columns or rows, or aggregate",
            max_bytes >> 20
        ),
        status: StatusCode::PAYLOAD_TOO_LARGE,
    };
    let encoding = |e: arrow::error::ArrowError| Failure {
        text: format!("encoding the result: {e}"),
        status: StatusCode::INTERNAL_SERVER_ERROR,
    };
    let columns = json!(
        out.schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect::<Vec<_>>()
    );
    let mut body = format!("{{\"columns\":{columns},\"rows\":").into_bytes();
    let mut rows = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut rows);
        let mut done = 0;
        for b in &out.batches {
            let mut at = 0;
            while at < b.num_rows() {
                let n = CHUNK.min(b.num_rows() - at);
                w.write(&b.slice(at, n)).map_err(encoding)?;
                at += n;
                done += n;
                if w.get_ref().len() + body.len() > max_bytes {
                    return Err(too_large(done));
                }
            }
        }
        w.finish().map_err(encoding)?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    body.extend_from_slice(&rows);
    body.extend_from_slice(
        format!(
            ",\"row_count\":{},\"truncated\":{}}}",
            out.rows, out.truncated
        )
        .as_bytes(),
    );
    if body.len() > max_bytes {
        return Err(too_large(out.rows));
    }
    Ok(body)
}
