//! Served models: verified versions cached by number, aliases re-read on a timer (hot
//! reload), and the friendly V1 routes (`/v1/models…`).
//!
//! A request takes an `Arc` of the version it resolved to, so an alias moving mid-request
//! changes nothing for it. When the registry holds a corrupt target for an alias, the
//! move is refused and logged and the previous target keeps serving.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use ymera_common::health::Health;
use ymera_models::features::Matrix;
use ymera_models::model::Estimate;
use ymera_models::{LoadedModel, ModelError, Registry};

use crate::AppState;
use crate::auth::Principal;

/// The alias used when a request names no version.
pub const DEFAULT_ALIAS: &str = "champion";

/// Models the server holds.
pub struct ModelStore {
    registry: Registry,
    /// Verified versions, by (name, version).
    versions: RwLock<HashMap<(String, String), Arc<LoadedModel>>>,
    /// Alias → (record seq, version) as last verified, by (name, alias).
    aliases: RwLock<HashMap<(String, String), (u64, String)>>,
    /// Models that must be loaded for readiness.
    pinned: RwLock<Vec<String>>,
    health: Arc<Health>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelStore")
            .field("registry", &self.registry.url())
            .finish()
    }
}

/// An error as an HTTP response: `{"error": "..."}` with the status its kind maps to.
pub fn error_response(e: &ModelError) -> Response {
    let status = match e {
        ModelError::Input(_) | ModelError::Data(_) => StatusCode::BAD_REQUEST,
        ModelError::NotFound { .. } => StatusCode::NOT_FOUND,
        ModelError::Conflict(_) => StatusCode::CONFLICT,
        ModelError::Gate(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ModelError::Integrity(_) | ModelError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        ModelError::Storage(_) | ModelError::Deadline(_) | ModelError::Busy(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    error_json(status, e.to_string())
}

pub fn error_json(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

impl ModelStore {
    /// A store over `registry`; `pinned` models (empty: every model that has a champion
    /// when the server starts) gate readiness.
    pub fn new(registry: Registry, pinned: Vec<String>, health: Arc<Health>) -> ModelStore {
        ModelStore {
            registry,
            versions: RwLock::default(),
            aliases: RwLock::default(),
            pinned: RwLock::new(pinned),
            health,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Loads the pinned models' champions (discovering them when none were named) and
    /// reports readiness per model.
    pub async fn pin(&self) -> Result<(), ModelError> {
        let mut pinned = self.pinned.read().map(|p| p.clone()).unwrap_or_default();
        if pinned.is_empty() {
            for m in self.registry.models().await? {
                if self.registry.alias(&m, DEFAULT_ALIAS).await?.is_some() {
                    pinned.push(m);
                }
            }
            if let Ok(mut p) = self.pinned.write() {
                *p = pinned.clone();
            }
        }
        for m in &pinned {
            let state = match self.resolve(m, None).await {
                Ok(_) => None,
                Err(e) => Some(format!("model {m} is not loaded: {e}")),
            };
            self.health.set(&format!("model:{m}"), state);
        }
        Ok(())
    }

    /// A verified version, from the cache or the registry.
    async fn version(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, ModelError> {
        let key = (name.to_string(), version.to_string());
        if let Some(m) = self.versions.read().ok().and_then(|v| v.get(&key).cloned()) {
            return Ok(m);
        }
        let loaded = Arc::new(self.registry.load(name, version).await?);
        if let Ok(mut v) = self.versions.write() {
            v.insert(key, loaded.clone());
        }
        Ok(loaded)
    }

    /// The model a request means: a version number, an alias, or (None) the champion —
    /// or, without one, the newest version.
    pub async fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedModel>, ModelError> {
        let v = match version {
            Some(v) => v.to_string(),
            None => {
                if self.alias_target(name, DEFAULT_ALIAS).await?.is_some() {
                    DEFAULT_ALIAS.to_string()
                } else {
                    let versions = self.registry.versions(name).await?;
                    match versions
                        .iter()
                        .rev()
                        .find(|e| matches!(e.manifest, Some(Ok(_))))
                    {
                        Some(e) => e.version.to_string(),
                        None => {
                            return Err(ModelError::NotFound {
                                what: format!("model `{name}`"),
                                available: self.registry.models().await.unwrap_or_default(),
                            });
                        }
                    }
                }
            }
        };
        if v.parse::<u64>().is_ok() {
            return self.version(name, &v).await;
        }
        match self.alias_target(name, &v).await? {
            Some(version) => self.version(name, &version).await,
            None => Err(self
                .registry
                .resolve(name, &v)
                .await
                .err()
                .unwrap_or_else(|| ModelError::NotFound {
                    what: format!("alias `{v}` of `{name}`"),
                    available: Vec::new(),
                })),
        }
    }

    /// The verified version an alias points at (cached; the reloader keeps it fresh).
    async fn alias_target(&self, name: &str, alias: &str) -> Result<Option<String>, ModelError> {
        let key = (name.to_string(), alias.to_string());
        if let Some((_, v)) = self.aliases.read().ok().and_then(|a| a.get(&key).cloned()) {
            return Ok(Some(v));
        }
        self.refresh_alias(name, alias).await
    }

    /// Re-reads one alias; a new target is loaded and verified before it replaces the old
    /// one. Returns the version now served.
    pub async fn refresh_alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<Option<String>, ModelError> {
        let key = (name.to_string(), alias.to_string());
        let current = self.aliases.read().ok().and_then(|a| a.get(&key).cloned());
        let Some(record) = self.registry.alias(name, alias).await? else {
            return Ok(current.map(|c| c.1));
        };
        if current.as_ref().is_some_and(|(seq, _)| *seq == record.seq) {
            return Ok(current.map(|c| c.1));
        }
        match self.registry.load_resolved(name, alias).await {
            Ok(loaded) => {
                let v = loaded.manifest.version.clone();
                if let Ok(mut vs) = self.versions.write() {
                    vs.entry((name.to_string(), v.clone()))
                        .or_insert_with(|| Arc::new(loaded));
                }
                if let Ok(mut a) = self.aliases.write() {
                    a.insert(key, (record.seq, v.clone()));
                }
                if let Some((_, old)) = &current {
                    tracing::info!(model = name, alias, from = %old, to = %v, "alias moved; now serving the new version");
                }
                Ok(Some(v))
            }
            Err(e) => {
                tracing::error!(model = name, alias, version = %record.version, error = %e,
                    "refusing the alias's new target; the previous version keeps serving");
                match current {
                    Some((_, v)) => Ok(Some(v)),
                    None => Err(e),
                }
            }
        }
    }

    /// Re-reads every alias the server has resolved, and the pinned champions.
    pub async fn reload(&self) {
        let mut keys: Vec<(String, String)> = self
            .aliases
            .read()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        for m in self.pinned.read().map(|p| p.clone()).unwrap_or_default() {
            let k = (m, DEFAULT_ALIAS.to_string());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut storage_ok = true;
        for (name, alias) in keys {
            let state = match self.refresh_alias(&name, &alias).await {
                Ok(Some(_)) => None,
                Ok(None) => Some(format!("model {name} has no `{alias}`")),
                Err(ModelError::Storage(e)) => {
                    storage_ok = false;
                    Some(format!("registry unreachable: {e}"))
                }
                Err(e) => Some(e.to_string()),
            };
            if alias == DEFAULT_ALIAS
                && self
                    .pinned
                    .read()
                    .map(|p| p.contains(&name))
                    .unwrap_or(false)
            {
                self.health.set(&format!("model:{name}"), state);
            }
        }
        let registry_state = match self.registry.models().await {
            Ok(_) if storage_ok => None,
            Ok(_) => Some("some registry reads failed".into()),
            Err(e) => Some(format!("registry unreachable: {e}")),
        };
        self.health.set("registry", registry_state);
    }

    /// Runs [`ModelStore::reload`] every `every` until the process ends.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.reload().await;
            }
        })
    }
}

/// Predicts encoded rows; large batches go to a blocking thread.
pub async fn predict_rows(
    model: Arc<LoadedModel>,
    x: Matrix,
    explain: bool,
) -> Result<Vec<Estimate>, ModelError> {
    if x.rows() <= 64 {
        return model
            .artifact
            .estimator
            .predict(&model.artifact.features, &x, explain);
    }
    tokio::task::spawn_blocking(move || {
        model
            .artifact
            .estimator
            .predict(&model.artifact.features, &x, explain)
    })
    .await
    .map_err(|e| ModelError::Model(format!("prediction task failed: {e}")))?
}

/// The `model` label of a request whose model did not resolve: a caller-chosen name never
/// becomes a label value, so bogus names cannot grow the number of series.
pub const UNRESOLVED: &str = "unknown";

/// Records `ymera_model_request_duration_seconds`.
pub fn observe(
    model: &str,
    version: &str,
    endpoint: &'static str,
    code: StatusCode,
    started: Instant,
) {
    metrics::histogram!(
        "ymera_model_request_duration_seconds",
        "model" => model.to_string(),
        "version" => version.to_string(),
        "endpoint" => endpoint,
        "code" => code.as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
}

#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    version: Option<String>,
}

/// Largest batch one request may carry.
pub const MAX_INSTANCES: usize = 10_000;

/// `POST /v1/models/{name}:predict`.
pub async fn predict(
    State(app): State<AppState>,
    Path(segment): Path<String>,
    Query(q): Query<VersionQuery>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let Some((name, verb)) = segment.rsplit_once(':') else {
        return error_json(
            StatusCode::NOT_FOUND,
            format!("POST /v1/models/{segment}: use /v1/models/{segment}:predict"),
        );
    };
    if verb != "predict" {
        return error_json(
            StatusCode::NOT_FOUND,
            format!("unknown model action `:{verb}` (the action is `:predict`)"),
        );
    }
    let model = match app.models.resolve(name, q.version.as_deref()).await {
        Ok(m) => m,
        Err(e) => {
            let r = error_response(&e);
            observe(UNRESOLVED, "", "v1_predict", r.status(), started);
            return r;
        }
    };
    let version = model.manifest.version.clone();
    let result = async {
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| ModelError::Input(format!("the body is not valid JSON: {e}")))?;
        let obj = body.as_object().ok_or_else(|| {
            ModelError::Input("the body must be a JSON object with `instances`".into())
        })?;
        for k in obj.keys() {
            if k != "instances" && k != "explain" {
                return Err(ModelError::Input(format!(
                    "unknown field `{k}` in the body (fields: instances, explain)"
                )));
            }
        }
        let explain = match obj.get("explain") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ModelError::Input("`explain` must be true or false".into())),
        };
        let instances = obj
            .get("instances")
            .and_then(Value::as_array)
            .ok_or_else(|| ModelError::Input("`instances` must be an array of objects".into()))?;
        if instances.is_empty() {
            return Err(ModelError::Input("`instances` is empty".into()));
        }
        if instances.len() > MAX_INSTANCES {
            return Err(ModelError::Input(format!(
                "{} instances in one request; at most {MAX_INSTANCES}",
                instances.len()
            )));
        }
        let schema = &model.artifact.features;
        let mut values = Vec::with_capacity(instances.len() * schema.width());
        for (i, inst) in instances.iter().enumerate() {
            let obj = inst.as_object().ok_or_else(|| {
                ModelError::Input(format!(
                    "instances[{i}] must be an object of named features"
                ))
            })?;
            let row = schema
                .encode_instance(obj)
                .map_err(|e| ModelError::Input(format!("instances[{i}]: {e}")))?;
            values.extend(row);
        }
        let x = Matrix {
            values,
            cols: schema.width(),
        };
        predict_rows(model.clone(), x, explain).await
    }
    .await;
    let response = match result {
        Ok(preds) => (
            StatusCode::OK,
            axum::Json(json!({
                "predictions": preds,
                "model": name,
                "model_version": version,
            })),
        )
            .into_response(),
        Err(e) => error_response(&e),
    };
    observe(name, &version, "v1_predict", response.status(), started);
    response
}

fn manifest_summary(m: &ymera_models::Manifest) -> Value {
    json!({
        "version": m.version,
        "created_at": m.created_at,
        "task": m.task,
        "algorithm": m.algorithm,
        "metrics": m.metrics,
        "gate_passed": m.gate_passed,
        "rows": m.lineage.rows,
    })
}

/// `GET /v1/models`.
pub async fn list_models(State(app): State<AppState>) -> Response {
    let reg = app.models.registry();
    let result = async {
        let mut out = Vec::new();
        for name in reg.models().await? {
            let versions = reg.versions(&name).await?;
            let latest = versions.iter().rev().find_map(|e| match &e.manifest {
                Some(Ok(m)) => Some(m.clone()),
                _ => None,
            });
            let aliases: serde_json::Map<String, Value> = reg
                .aliases(&name)
                .await?
                .into_iter()
                .map(|a| (a.alias, Value::String(a.version)))
                .collect();
            out.push(json!({
                "name": name,
                "versions": versions.iter().filter(|e| matches!(e.manifest, Some(Ok(_)))).count(),
                "latest": latest.as_ref().map(manifest_summary),
                "aliases": aliases,
            }));
        }
        Ok::<_, ModelError>(json!({ "models": out }))
    }
    .await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/models/{name}`.
pub async fn show_model(State(app): State<AppState>, Path(name): Path<String>) -> Response {
    let reg = app.models.registry();
    let result = async {
        if !reg.models().await?.contains(&name) {
            return Err(ModelError::NotFound {
                what: format!("model `{name}`"),
                available: reg.models().await?,
            });
        }
        let versions: Vec<Value> = reg
            .versions(&name)
            .await?
            .into_iter()
            .filter_map(|e| match e.manifest {
                Some(Ok(m)) => Some(manifest_summary(&m)),
                Some(Err(problem)) => {
                    Some(json!({"version": e.version.to_string(), "problem": problem}))
                }
                None => None,
            })
            .collect();
        let aliases: serde_json::Map<String, Value> = reg
            .aliases(&name)
            .await?
            .into_iter()
            .map(|a| {
                (
                    a.alias.clone(),
                    json!({"version": a.version, "since": a.at, "seq": a.seq}),
                )
            })
            .collect();
        Ok(json!({"name": name, "versions": versions, "aliases": aliases}))
    }
    .await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_response(&e),
    }
}

/// `GET /v1/models/{name}/aliases/{alias}/history`.
pub async fn alias_history(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Response {
    match app.models.registry().history(&name, &alias).await {
        Ok(h) if h.is_empty() => error_json(
            StatusCode::NOT_FOUND,
            format!("alias `{alias}` of `{name}` was never set"),
        ),
        Ok(h) => axum::Json(json!({"name": name, "alias": alias, "history": h})).into_response(),
        Err(e) => error_response(&e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveAlias {
    version: String,
    #[serde(default)]
    expected_version: Option<String>,
}

/// `PUT /v1/models/{name}/aliases/{alias}` — compare-and-swap through the gate.
pub async fn put_alias(
    State(app): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Response {
    let req: MoveAlias = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_json(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"version\": \"7\", \"expected_version\": \"6\"}}: {e}"
                ),
            );
        }
    };
    let expected = req.expected_version.as_deref().map(|v| {
        if v.is_empty() || v == "none" {
            None
        } else {
            Some(v)
        }
    });
    let result = app
        .models
        .registry()
        .move_alias(
            &name,
            &alias,
            &req.version,
            expected,
            &who.subject,
            "promote",
        )
        .await;
    let (status, outcome) = match &result {
        Ok(_) => (StatusCode::OK, "ok".to_string()),
        Err(e) => (error_response(e).status(), e.to_string()),
    };
    app.auth
        .audit(
            &who,
            "models.promote",
            &format!("{name}@{alias}"),
            status.as_str(),
            json!({"version": req.version, "expected_version": req.expected_version, "result": outcome}),
        )
        .await;
    match result {
        Ok(record) => {
            // serve the new target now rather than at the next reload tick
            let _ = app.models.refresh_alias(&name, &alias).await;
            axum::Json(json!({"name": name, "record": record})).into_response()
        }
        Err(e) => error_response(&e),
    }
}
