//! The Open Inference Protocol V2 (KServe / Triton) REST endpoints, JSON tensors.
//!
//! Inputs: one tensor per feature (name = feature, shape `[N]` or `[N, 1]`), or a single
//! `[N, F]` FP64 tensor named `input` in metadata feature order. Outputs per task:
//! classification `probability` (FP64) and `label` (BOOL); regression `value`, `lower`,
//! `upper` (FP64); clustering `cluster` (INT64) and `distance` (FP64). `{version}` may be
//! a number or an alias; every response carries the concrete `model_version`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use ymera_models::features::{FeatureType, Matrix};
use ymera_models::model::Estimate;
use ymera_models::{LoadedModel, ModelError, Task};

use crate::AppState;
use crate::models::{MAX_INSTANCES, UNRESOLVED, error_response, observe, predict_rows};

/// `GET /v2`: server metadata.
pub async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "ymera",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

/// `GET /v2/health/live`.
pub async fn live() -> Response {
    axum::Json(json!({"live": true})).into_response()
}

/// `GET /v2/health/ready`: 200 when every pinned model is loaded, else 503.
pub async fn ready(State(app): State<AppState>) -> Response {
    let ready = app.health.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({"ready": ready}))).into_response()
}

fn outputs(task: Task) -> &'static [(&'static str, &'static str)] {
    match task {
        Task::Classification => &[("probability", "FP64"), ("label", "BOOL")],
        Task::Regression => &[("value", "FP64"), ("lower", "FP64"), ("upper", "FP64")],
        Task::Clustering => &[("cluster", "INT64"), ("distance", "FP64")],
        Task::Forecast | Task::AnomalyDetection => &[],
    }
}

fn metadata(m: &LoadedModel) -> Value {
    let a = &m.artifact;
    json!({
        "name": a.name,
        "versions": [m.manifest.version],
        "platform": format!("ymera-{}", m.manifest.algorithm),
        "inputs": a.features.0.iter().map(|f| json!({
            "name": f.name,
            "datatype": f.kind.v2_datatype(),
            "shape": [-1],
        })).collect::<Vec<_>>(),
        "outputs": outputs(a.task).iter().map(|(n, d)| json!({
            "name": n, "datatype": d, "shape": [-1],
        })).collect::<Vec<_>>(),
        "model_version": m.manifest.version,
    })
}

async fn resolve(
    app: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<LoadedModel>, Response> {
    app.models
        .resolve(name, version)
        .await
        .map_err(|e| error_response(&e))
}

/// `GET /v2/models/{name}`.
pub async fn model_metadata(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    match resolve(&app, &name, None).await {
        Ok(m) => axum::Json(metadata(&m)).into_response(),
        Err(r) => r,
    }
}

/// `GET /v2/models/{name}/versions/{version}`.
pub async fn version_metadata(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match resolve(&app, &name, Some(&version)).await {
        Ok(m) => axum::Json(metadata(&m)).into_response(),
        Err(r) => r,
    }
}

fn ready_body(m: &LoadedModel) -> Response {
    axum::Json(json!({"name": m.artifact.name, "ready": true, "model_version": m.manifest.version}))
        .into_response()
}

/// `GET /v2/models/{name}/ready`.
pub async fn model_ready(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    match resolve(&app, &name, None).await {
        Ok(m) => ready_body(&m),
        Err(r) => r,
    }
}

/// `GET /v2/models/{name}/versions/{version}/ready`.
pub async fn version_ready(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match resolve(&app, &name, Some(&version)).await {
        Ok(m) => ready_body(&m),
        Err(r) => r,
    }
}

/// `POST /v2/models/{name}/infer`.
pub async fn infer(State(app): State<AppState>, Path(name): Path<String>, body: Bytes) -> Response {
    infer_with(app, name, None, body).await
}

/// `POST /v2/models/{name}/versions/{version}/infer`.
pub async fn infer_version(
    State(app): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    infer_with(app, name, Some(version), body).await
}

async fn infer_with(app: AppState, name: String, version: Option<String>, body: Bytes) -> Response {
    let started = Instant::now();
    let model = match resolve(&app, &name, version.as_deref()).await {
        Ok(m) => m,
        Err(r) => {
            observe(UNRESOLVED, "", "v2_infer", r.status(), started);
            return r;
        }
    };
    let v = model.manifest.version.clone();
    let response = match infer_model(model, &body).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(&e),
    };
    observe(&name, &v, "v2_infer", response.status(), started);
    response
}

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Input(msg.into())
}

/// Flattens nested row-major JSON arrays.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn shape_of(t: &serde_json::Map<String, Value>, name: &str) -> Result<Vec<i64>, ModelError> {
    let shape = t.get("shape").and_then(Value::as_array).ok_or_else(|| {
        bad(format!(
            "input `{name}`: `shape` must be an array of integers"
        ))
    })?;
    shape
        .iter()
        .map(|d| {
            d.as_i64().filter(|d| *d >= 0).ok_or_else(|| {
                bad(format!(
                    "input `{name}`: shape {shape:?} has a non-integer or negative dimension"
                ))
            })
        })
        .collect()
}

/// Checks a tensor's datatype against a feature's type and converts one element to the
/// JSON value the feature encoder takes.
fn element(
    feature: &ymera_models::features::Feature,
    datatype: &str,
    v: &Value,
    tensor: &str,
    i: usize,
) -> Result<Value, ModelError> {
    let ok_type = match feature.kind {
        FeatureType::Float => matches!(
            datatype,
            "FP64"
                | "FP32"
                | "FP16"
                | "INT64"
                | "INT32"
                | "INT16"
                | "INT8"
                | "UINT64"
                | "UINT32"
                | "UINT16"
                | "UINT8"
        ),
        FeatureType::Integer => matches!(
            datatype,
            "INT64" | "INT32" | "INT16" | "INT8" | "UINT64" | "UINT32" | "UINT16" | "UINT8"
        ),
        FeatureType::Bool => datatype == "BOOL",
        FeatureType::Text => datatype == "BYTES",
    };
    if !ok_type {
        return Err(bad(format!(
            "input `{tensor}`: datatype {datatype} does not fit feature `{}` ({})",
            feature.name,
            feature.kind.v2_datatype()
        )));
    }
    match (feature.kind, v) {
        (FeatureType::Float | FeatureType::Integer, Value::Number(_))
        | (FeatureType::Bool, Value::Bool(_))
        | (FeatureType::Text, Value::String(_)) => Ok(v.clone()),
        _ => Err(bad(format!(
            "input `{tensor}`: element {i} ({v}) is not a {datatype} value"
        ))),
    }
}

async fn infer_model(model: Arc<LoadedModel>, body: &[u8]) -> Result<Value, ModelError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not valid JSON: {e}")))?;
    let req = req
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object with `inputs`"))?;
    let inputs = req
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`inputs` must be an array of tensors"))?;
    let schema = &model.artifact.features;
    let mut columns: Vec<Option<Vec<Value>>> = vec![None; schema.0.len()];
    let mut rows: Option<usize> = None;
    let mut set_rows = |n: usize, tensor: &str| -> Result<(), ModelError> {
        match rows {
            Some(r) if r != n => Err(bad(format!(
                "input `{tensor}` has {n} rows but an earlier input has {r}"
            ))),
            _ => {
                rows = Some(n);
                Ok(())
            }
        }
    };
    for (ti, t) in inputs.iter().enumerate() {
        let t = t
            .as_object()
            .ok_or_else(|| bad(format!("inputs[{ti}] must be an object")))?;
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("inputs[{ti}] has no `name`")))?;
        let datatype = t
            .get("datatype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("input `{name}` has no `datatype`")))?;
        let shape = shape_of(t, name)?;
        // the instance limit, and the element count in u64 with overflow checked, before
        // anything is sized from the shape (a wrapped product once matched a short `data`)
        if let Some(&n) = shape.first()
            && n as u64 > MAX_INSTANCES as u64
        {
            return Err(bad(format!(
                "input `{name}`: {n} rows in one request; at most {MAX_INSTANCES}"
            )));
        }
        let count = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&c| c <= (MAX_INSTANCES * schema.0.len().max(1)) as u64)
            .ok_or_else(|| {
                bad(format!(
                    "input `{name}`: shape {shape:?} has too many elements (at most {MAX_INSTANCES} rows of the model's {} features)",
                    schema.0.len()
                ))
            })?;
        let data = t.get("data").ok_or_else(|| {
            bad(format!(
                "input `{name}` has no `data` (the binary data extension is not supported)"
            ))
        })?;
        let mut flat = Vec::new();
        flatten(data, &mut flat);
        if count != flat.len() as u64 {
            return Err(bad(format!(
                "input `{name}`: shape {shape:?} holds {count} elements but `data` has {}",
                flat.len()
            )));
        }
        if name == "input" && !schema.0.iter().any(|f| f.name == "input") {
            // one [N, F] FP64 tensor in metadata feature order
            let f = schema.0.len() as i64;
            if shape.len() != 2 || shape[1] != f {
                return Err(bad(format!(
                    "input `input` must have shape [N, {f}] (features: {}), got {shape:?}",
                    schema.names().collect::<Vec<_>>().join(", ")
                )));
            }
            if !matches!(datatype, "FP64" | "FP32") {
                return Err(bad(format!("input `input` must be FP64, got {datatype}")));
            }
            if let Some(text) = schema.0.iter().find(|f| f.kind == FeatureType::Text) {
                return Err(bad(format!(
                    "the model has a text feature `{}`: send one tensor per feature instead of `input`",
                    text.name
                )));
            }
            let n = shape[0] as usize;
            set_rows(n, name)?;
            for (c, feat) in schema.0.iter().enumerate() {
                let mut col = Vec::with_capacity(n);
                for r in 0..n {
                    let v = flat[r * schema.0.len() + c];
                    let v = match (feat.kind, v) {
                        (FeatureType::Bool, Value::Number(x)) => {
                            Value::Bool(x.as_f64() != Some(0.0))
                        }
                        (FeatureType::Integer, Value::Number(x)) => match x.as_f64() {
                            Some(x) if x.fract() == 0.0 => json!(x as i64),
                            _ => v.clone(),
                        },
                        _ => v.clone(),
                    };
                    col.push(v);
                }
                columns[c] = Some(col);
            }
            continue;
        }
        let c = schema
            .0
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(|| {
                bad(format!(
                    "unknown input `{name}` (the model takes: {}, or one `input` tensor [N, {}])",
                    schema.names().collect::<Vec<_>>().join(", "),
                    schema.0.len()
                ))
            })?;
        if columns[c].is_some() {
            return Err(bad(format!("input `{name}` is given twice")));
        }
        if !(shape.len() == 1 || (shape.len() == 2 && shape[1] == 1)) {
            return Err(bad(format!(
                "input `{name}` must have shape [N] or [N, 1], got {shape:?}"
            )));
        }
        set_rows(shape[0] as usize, name)?;
        let col = flat
            .iter()
            .enumerate()
            .map(|(i, v)| element(&schema.0[c], datatype, v, name, i))
            .collect::<Result<Vec<_>, _>>()?;
        columns[c] = Some(col);
    }
    let n = rows.ok_or_else(|| bad("`inputs` is empty"))?;
    if n > MAX_INSTANCES {
        return Err(bad(format!(
            "{n} rows in one request; at most {MAX_INSTANCES}"
        )));
    }
    if let Some(missing) = schema.0.iter().zip(&columns).find(|(_, c)| c.is_none()) {
        return Err(bad(format!(
            "missing input `{}` ({}, shape [N])",
            missing.0.name,
            missing.0.kind.v2_datatype()
        )));
    }
    let mut values = Vec::with_capacity(n * schema.width());
    for r in 0..n {
        for (f, col) in schema.0.iter().zip(&columns) {
            let v = &col.as_ref().expect("checked above")[r];
            schema
                .encode_value(f, v, &mut values)
                .map_err(|e| bad(format!("row {r}: {e}")))?;
        }
    }
    let x = Matrix {
        values,
        cols: schema.width(),
    };
    let task = model.artifact.task;
    let version = model.manifest.version.clone();
    let name = model.artifact.name.clone();
    let preds = predict_rows(model, x, false).await?;
    let wanted: Option<Vec<String>> = req.get("outputs").and_then(Value::as_array).map(|o| {
        o.iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str).map(String::from))
            .collect()
    });
    if let Some(w) = &wanted
        && let Some(unknown) = w
            .iter()
            .find(|w| !outputs(task).iter().any(|(n, _)| n == w))
    {
        return Err(bad(format!(
            "unknown output `{unknown}` (outputs: {})",
            outputs(task)
                .iter()
                .map(|o| o.0)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let pick = |f: &dyn Fn(&Estimate) -> Value| -> Vec<Value> { preds.iter().map(f).collect() };
    let mut out = Vec::new();
    for (oname, dtype) in outputs(task) {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|x| x == oname))
        {
            continue;
        }
        let data = match *oname {
            "probability" => pick(&|e| json!(e.probability)),
            "label" => pick(&|e| json!(e.label)),
            "value" => pick(&|e| json!(e.value)),
            "lower" => pick(&|e| json!(e.lower)),
            "upper" => pick(&|e| json!(e.upper)),
            "cluster" => pick(&|e| json!(e.cluster)),
            _ => pick(&|e| json!(e.distance)),
        };
        out.push(json!({"name": oname, "datatype": dtype, "shape": [n], "data": data}));
    }
    let mut resp = json!({
        "model_name": name,
        "model_version": version,
        "outputs": out,
    });
    if let Some(id) = req.get("id") {
        resp["id"] = id.clone();
    }
    Ok(resp)
}
