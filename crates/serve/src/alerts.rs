//! The alerts API for the Manager Agent: `GET /v1/alerts?state=open|acknowledged|resolved`,
//! `POST /v1/alerts/{id}/acknowledge`, `POST /v1/alerts/{id}/resolve`.
//!
//! Alerts come from the lake's alert tables (`serve.alert_tables`, written by the anomaly
//! stages: one row when an alert opens, one when it closes); what people and agents did
//! with them is kept in the warehouse (`_ymera_alert_states`), because lake tables are
//! append-only. Every change is written to the audit log.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ymera_query::QueryError;
use ymera_warehouse::{AlertChange, AlertState, Warehouse};

use crate::AppState;
use crate::auth::Principal;
use crate::models::error_json;
use crate::sql::{Failure, SqlService};

/// Alerts read per table for one listing, newest first: older ones are not listed.
pub const MAX_SCANNED: usize = 10_000;
/// Most alerts one listing returns (`limit`).
pub const MAX_LIMIT: usize = 1000;
/// Longest note accepted with a change, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;

/// Where alerts are read and their states kept.
#[derive(Debug, Clone)]
pub struct AlertService {
    sql: SqlService,
    warehouse: Warehouse,
    tables: Vec<String>,
}

impl AlertService {
    /// `tables` are lake table names (letters, digits, `_`; checked here).
    pub fn new(
        sql: SqlService,
        warehouse: Warehouse,
        tables: Vec<String>,
    ) -> Result<AlertService, String> {
        for t in &tables {
            ymera_warehouse::ident(t).map_err(|e| format!("serve.alert_tables: {e}"))?;
        }
        Ok(AlertService {
            sql,
            warehouse,
            tables,
        })
    }

    /// The alerts of every table, newest first, at most [`MAX_SCANNED`] per table.
    async fn read(&self, caller: &str, only: Option<&str>) -> Result<Vec<Alert>, Failure> {
        let mut all = Vec::new();
        for table in &self.tables {
            let filter = only.map_or(String::new(), |id| format!("WHERE alert_id = '{id}'"));
            let sql = format!(
                "SELECT alert_id, stage, \"key\", CAST(min(opened_at) AS BIGINT), \
                 CAST(max(closed_at) AS BIGINT), max(peak_score) \
                 FROM \"{table}\" {filter} GROUP BY alert_id, stage, \"key\" \
                 ORDER BY 4 DESC LIMIT {MAX_SCANNED}"
            );
            let out = match self.sql.query_as(caller, sql).await {
                Ok(out) => out,
                // the anomaly pipeline has not written its first alert yet
                Err(QueryError::Invalid(m)) if m.starts_with("unknown table `") => continue,
                Err(e) => return Err(Failure::from(e)),
            };
            for batch in &out.batches {
                read_batch(table, batch, &mut all).map_err(|e| Failure {
                    text: format!("reading the alerts table `{table}`: {e}"),
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                })?;
            }
        }
        all.sort_by(|a, b| b.opened_us.cmp(&a.opened_us).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    async fn states(&self, alerts: &[Alert]) -> Result<BTreeMap<String, AlertState>, Failure> {
        let ids: Vec<String> = alerts.iter().map(|a| a.id.clone()).collect();
        self.warehouse
            .alert_states(&ids)
            .await
            .map(|m| m.into_iter().collect())
            .map_err(unavailable)
    }
}

fn unavailable(e: ymera_warehouse::WarehouseError) -> Failure {
    Failure {
        text: format!("the warehouse keeps alert states: {e}"),
        status: StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// One alert as the detector wrote it.
#[derive(Debug, Clone)]
struct Alert {
    id: String,
    table: String,
    stage: String,
    key: String,
    opened_us: i64,
    closed_us: Option<i64>,
    peak_score: f64,
}

fn read_batch(table: &str, batch: &RecordBatch, out: &mut Vec<Alert>) -> Result<(), String> {
    let text = |i: usize| {
        arrow::compute::cast(batch.column(i), &DataType::Utf8).map_err(|e| e.to_string())
    };
    let int = |i: usize| {
        arrow::compute::cast(batch.column(i), &DataType::Int64).map_err(|e| e.to_string())
    };
    let (ids, stages, keys) = (text(0)?, text(1)?, text(2)?);
    let (opened, closed) = (int(3)?, int(4)?);
    let peak =
        arrow::compute::cast(batch.column(5), &DataType::Float64).map_err(|e| e.to_string())?;
    let (ids, stages, keys) = (
        ids.as_string::<i32>(),
        stages.as_string::<i32>(),
        keys.as_string::<i32>(),
    );
    let (opened, closed) = (
        opened.as_primitive::<Int64Type>(),
        closed.as_primitive::<Int64Type>(),
    );
    let peak = peak.as_primitive::<Float64Type>();
    for r in 0..batch.num_rows() {
        if ids.is_null(r) || opened.is_null(r) {
            continue;
        }
        out.push(Alert {
            id: ids.value(r).to_string(),
            table: table.to_string(),
            stage: stages.value(r).to_string(),
            key: keys.value(r).to_string(),
            opened_us: opened.value(r),
            closed_us: (!closed.is_null(r)).then(|| closed.value(r)),
            peak_score: if peak.is_null(r) { 0.0 } else { peak.value(r) },
        });
    }
    Ok(())
}

fn rfc3339(us: i64) -> Value {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// The JSON of one alert (the `Alert` schema of the OpenAPI document).
fn alert_json(a: &Alert, s: Option<&AlertState>) -> Value {
    json!({
        "alert_id": a.id,
        "table": a.table,
        "stage": a.stage,
        "key": a.key,
        "opened_at": rfc3339(a.opened_us),
        "closed_at": a.closed_us.map_or(Value::Null, rfc3339),
        "peak_score": a.peak_score,
        "state": s.map_or("open", |s| s.state.as_str()),
        "acknowledged_at": s.and_then(|s| s.acknowledged_at.clone()),
        "acknowledged_by": s.and_then(|s| s.acknowledged_by.clone()),
        "resolved_at": s.and_then(|s| s.resolved_at.clone()),
        "resolved_by": s.and_then(|s| s.resolved_by.clone()),
        "note": s.and_then(|s| s.note.clone()),
    })
}

fn failure(f: Failure) -> Response {
    error_json(f.status, f.text)
}

fn not_enabled() -> Response {
    error_json(
        StatusCode::NOT_FOUND,
        "alerts are not enabled on this server (they need the lake and the warehouse)",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/alerts?state=open|acknowledged|resolved&limit=N` → `{"alerts": [...],
/// "count", "truncated"}`, newest first.
pub async fn list_alerts(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(service) = app.alerts.as_deref() else {
        return not_enabled();
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!("query parameters are `state` and `limit`: {e}"),
            );
        }
    };
    if let Some(s) = q.state.as_deref()
        && !["open", "acknowledged", "resolved"].contains(&s)
    {
        return error_json(
            StatusCode::BAD_REQUEST,
            format!("state `{s}`: expected open, acknowledged or resolved"),
        );
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return error_json(
            StatusCode::BAD_REQUEST,
            format!("limit {limit}: must be from 1 to {MAX_LIMIT}"),
        );
    }
    let alerts = match service.read(&who.subject, None).await {
        Ok(a) => a,
        Err(f) => return failure(f),
    };
    let states = match service.states(&alerts).await {
        Ok(s) => s,
        Err(f) => return failure(f),
    };
    let mut listed: Vec<Value> = alerts
        .iter()
        .map(|a| alert_json(a, states.get(&a.id)))
        .filter(|v| q.state.as_deref().is_none_or(|s| v["state"] == s))
        .collect();
    let truncated = listed.len() > limit;
    listed.truncate(limit);
    axum::Json(json!({"count": listed.len(), "truncated": truncated, "alerts": listed}))
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
    note: Option<String>,
}

/// `POST /v1/alerts/{id}/acknowledge`
pub async fn acknowledge(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Response {
    change(app, id, who, body, "acknowledge").await
}

/// `POST /v1/alerts/{id}/resolve`
pub async fn resolve(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Response {
    change(app, id, who, body, "resolve").await
}

async fn change(app: AppState, id: String, who: Principal, body: Bytes, verb: &str) -> Response {
    let Some(service) = app.alerts.as_deref() else {
        return not_enabled();
    };
    // ids are 16 hex digits (ymera_anomaly::alerts::alert_id), which also keeps them out
    // of harm's way in the lookup below
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error_json(
            StatusCode::NOT_FOUND,
            format!(
                "no alert `{}`: alert ids are 16 hex digits",
                crate::auth::clip(&id, 40)
            ),
        );
    }
    let body: ChangeBody = if body.iter().all(u8::is_ascii_whitespace) {
        ChangeBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return error_json(
                    StatusCode::BAD_REQUEST,
                    format!("the body must be empty or {{\"note\": \"…\"}}: {e}"),
                );
            }
        }
    };
    if let Some(n) = &body.note
        && n.chars().count() > MAX_NOTE_CHARS
    {
        return error_json(
            StatusCode::BAD_REQUEST,
            format!("note: at most {MAX_NOTE_CHARS} characters"),
        );
    }
    let alert = match service.read(&who.subject, Some(&id)).await {
        Ok(mut a) if !a.is_empty() => a.swap_remove(0),
        Ok(_) => {
            return error_json(StatusCode::NOT_FOUND, format!("no alert `{id}`"));
        }
        Err(f) => return failure(f),
    };
    let note = body.note.as_deref();
    let result = match verb {
        "acknowledge" => {
            service
                .warehouse
                .acknowledge_alert(&id, &who.subject, note)
                .await
        }
        _ => {
            service
                .warehouse
                .resolve_alert(&id, &who.subject, note)
                .await
        }
    };
    let (status, changed, state) = match result {
        Ok(AlertChange::Changed(s)) => (StatusCode::OK, true, s),
        Ok(AlertChange::Unchanged(s)) => (StatusCode::OK, false, s),
        Ok(AlertChange::Refused(s)) => (StatusCode::CONFLICT, false, s),
        Err(e) => return failure(unavailable(e)),
    };
    app.auth
        .audit(
            &who,
            &format!("alerts.{verb}"),
            &id,
            status.as_str(),
            json!({"changed": changed, "state": state.state, "note": note, "table": alert.table}),
        )
        .await;
    let alert = alert_json(&alert, Some(&state));
    if status == StatusCode::CONFLICT {
        let error = format!("alert {id} is {}: it cannot be {verb}d", state.state);
        return (status, axum::Json(json!({"error": error, "alert": alert}))).into_response();
    }
    axum::Json(json!({"changed": changed, "alert": alert})).into_response()
}
