//! `POST /v1/sql`: the read-only analyst SQL of `ymera sql`, over HTTP.
//!
//! Queries run on a runtime of their own, on their own threads (`serve.sql_threads`), with
//! their own lake and warehouse connections, so a heavy query cannot take the threads
//! that answer predictions. The memory, time and row limits are those of `sql.*`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use ymera_lake::Lake;
use ymera_query::{Analyst, Limits, Output, QueryError};
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
}

type Job = (String, oneshot::Sender<Result<Output, QueryError>>);
/// The analyst session and when its table catalog was read.
type Catalog = tokio::sync::Mutex<Option<(Instant, Arc<Analyst>)>>;

/// A handle on the SQL runtime.
#[derive(Debug, Clone)]
pub struct SqlService {
    jobs: mpsc::Sender<Job>,
}

impl SqlService {
    /// Starts the SQL runtime on its own thread.
    pub fn start(config: SqlConfig) -> std::io::Result<SqlService> {
        let (tx, mut rx) = mpsc::channel::<Job>(64);
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
                    while let Some((sql, reply)) = rx.recv().await {
                        let config = config.clone();
                        let catalog = catalog.clone();
                        tokio::spawn(async move {
                            let analyst = match session(&config, &catalog).await {
                                Ok(a) => a,
                                Err(e) => {
                                    let _ = reply.send(Err(e));
                                    return;
                                }
                            };
                            let _ = reply.send(analyst.query(&sql).await);
                        });
                    }
                });
            })?;
        Ok(SqlService { jobs: tx })
    }

    /// Runs one query on the SQL runtime.
    pub async fn query(&self, sql: String) -> Result<Output, QueryError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send((sql, tx))
            .await
            .map_err(|_| QueryError::Execution("the SQL runtime has stopped".into()))?;
        rx.await
            .map_err(|_| QueryError::Execution("the SQL runtime dropped the query".into()))?
    }
}

async fn session(config: &SqlConfig, catalog: &Catalog) -> Result<Arc<Analyst>, QueryError> {
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
    let (analyst, _warnings) = Analyst::open(&lake, warehouse.as_ref(), config.limits).await?;
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
    let result = sql_service.query(req.sql.clone()).await;
    let (status, response, rows) = match result {
        Ok(out) => match to_json(&out) {
            Ok(v) => (StatusCode::OK, axum::Json(v).into_response(), out.rows),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                error_json(StatusCode::INTERNAL_SERVER_ERROR, e),
                0,
            ),
        },
        Err(e) => {
            let status = match e {
                QueryError::Refused(_) => StatusCode::FORBIDDEN,
                QueryError::Invalid(_) => StatusCode::BAD_REQUEST,
                QueryError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
                QueryError::Execution(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, error_json(status, e.to_string()), 0)
        }
    };
    // the text's first 4,000 characters for reading, and the whole text's sha256 and
    // length, so a row proves which query ran without holding megabytes of it
    let sql_text: String = req.sql.chars().take(4000).collect();
    app.auth
        .audit(
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
    response
}

fn to_json(out: &Output) -> Result<Value, String> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for b in &out.batches {
            w.write(b)
                .map_err(|e| format!("encoding the result: {e}"))?;
        }
        w.finish()
            .map_err(|e| format!("encoding the result: {e}"))?;
    }
    let rows: Value = if buf.is_empty() {
        json!([])
    } else {
        serde_json::from_slice(&buf).map_err(|e| format!("encoding the result: {e}"))?
    };
    Ok(json!({
        "columns": out.schema.fields().iter().map(|f| json!({
            "name": f.name(), "type": f.data_type().to_string(),
        })).collect::<Vec<_>>(),
        "rows": rows,
        "row_count": out.rows,
        "truncated": out.truncated,
    }))
}
