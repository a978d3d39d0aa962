//! Open Inference Protocol V2 conformance (requests and responses shaped as the spec's
//! JSON examples) and V1 behaviour, in process over a registry in a temp directory.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use ymera_common::health::Health;
use ymera_models::features::{Feature, FeatureSchema, FeatureType};
use ymera_models::model::Estimator;
use ymera_models::registry::{ArtifactRef, Lineage};
use ymera_models::spec::Params;
use ymera_models::{Artifact, Manifest, Registry, Task};

use crate::models::ModelStore;
use crate::{AppState, api_router};

fn feature(name: &str, kind: FeatureType) -> Feature {
    Feature {
        name: name.into(),
        kind,
        levels: Vec::new(),
        log: false,
        mean: 0.0,
        std: 1.0,
    }
}

/// A registry with `risk` version 1: σ(−0.5 + 1.0·burn_rate + 0.5·churn), champion.
async fn registry(dir: &std::path::Path) -> Registry {
    let reg = Registry::open(dir.to_str().unwrap(), &[]).unwrap();
    let features = FeatureSchema(vec![
        feature("burn_rate", FeatureType::Float),
        feature("churn", FeatureType::Integer),
    ]);
    let artifact = Artifact {
        format: 1,
        name: "risk".into(),
        version: String::new(),
        task: Task::Classification,
        features: features.clone(),
        estimator: Estimator::Logistic {
            weights: vec![1.0, 0.5],
            intercept: -0.5,
            platt: (1.0, 0.0),
        },
    };
    let manifest = Manifest {
        name: "risk".into(),
        version: String::new(),
        created_at: chrono::Utc::now(),
        task: Task::Classification,
        algorithm: "logistic_regression".into(),
        params: Params::default(),
        calibration: None,
        label: Some("missed_deadline".into()),
        metrics: BTreeMap::from([("auc".to_string(), 0.9)]),
        gate: Vec::new(),
        gate_passed: true,
        lineage: Lineage {
            query: "SELECT 1".into(),
            tables: Vec::new(),
            rows: 0,
            train_rows: 0,
            calibration_rows: 0,
            holdout_rows: 0,
            skipped_rows: 0,
            content_sha256: String::new(),
            content_sha256_sorted: true,
            time_range: (String::new(), String::new()),
            holdout_from: String::new(),
        },
        features,
        artifact: ArtifactRef {
            path: String::new(),
            sha256: String::new(),
            bytes: 0,
        },
        spec_sha256: String::new(),
        fit_seconds: 0.0,
        crate_version: "test".into(),
        status: "registered".into(),
    };
    reg.register(artifact, manifest).await.unwrap();
    reg.move_alias("risk", "champion", "1", Some(None), "test", "promote")
        .await
        .unwrap();
    reg
}

pub(crate) async fn app(dir: &std::path::Path) -> Router {
    let health = Arc::new(Health::default());
    let store = Arc::new(ModelStore::new(
        registry(dir).await,
        Vec::new(),
        health.clone(),
    ));
    store.pin().await.unwrap();
    health.set_started();
    let wh = ymera_warehouse::Warehouse::connect(&format!("sqlite://{}/w.db", dir.display()))
        .await
        .unwrap();
    let auth = crate::auth::Auth::new(crate::auth::AuthConfig::default(), wh).unwrap();
    api_router(
        AppState {
            models: store,
            auth: Arc::new(auth),
            sql: None,
            health,
            autoscale: None,
            alerts: None,
        },
        None,
    )
}

async fn call(
    router: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => Body::from(b.to_string()),
            None => Body::empty(),
        })
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

#[tokio::test]
async fn oip_v2_server_and_model_metadata_are_the_spec_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (s, v) = call(&app, "GET", "/v2", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "ymera");
    assert!(v["version"].is_string() && v["extensions"].is_array());
    assert_eq!(
        call(&app, "GET", "/v2/health/live", None).await.1,
        json!({"live": true})
    );
    assert_eq!(
        call(&app, "GET", "/v2/health/ready", None).await.1,
        json!({"ready": true})
    );
    let expected = json!({
        "name": "risk",
        "versions": ["1"],
        "platform": "ymera-logistic_regression",
        "inputs": [
            {"name": "burn_rate", "datatype": "FP64", "shape": [-1]},
            {"name": "churn", "datatype": "INT64", "shape": [-1]},
        ],
        "outputs": [
            {"name": "probability", "datatype": "FP64", "shape": [-1]},
            {"name": "label", "datatype": "BOOL", "shape": [-1]},
        ],
        "model_version": "1",
    });
    assert_eq!(call(&app, "GET", "/v2/models/risk", None).await.1, expected);
    assert_eq!(
        call(&app, "GET", "/v2/models/risk/versions/champion", None)
            .await
            .1,
        expected
    );
    assert_eq!(
        call(&app, "GET", "/v2/models/risk/versions/1/ready", None)
            .await
            .1,
        json!({"name": "risk", "ready": true, "model_version": "1"})
    );
}

#[tokio::test]
async fn oip_v2_infer_request_and_response_follow_the_spec_example() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    // the spec's example request: an id, one tensor per input, requested outputs
    let request = json!({
        "id": "42",
        "inputs": [
            {"name": "burn_rate", "shape": [2], "datatype": "FP64", "data": [1.2, 0.8]},
            {"name": "churn", "shape": [2, 1], "datatype": "INT64", "data": [[3], [0]]},
        ],
        "outputs": [{"name": "probability"}],
    });
    let (s, v) = call(
        &app,
        "POST",
        "/v2/models/risk/versions/1/infer",
        Some(request),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = [sigmoid(-0.5 + 1.2 + 1.5), sigmoid(-0.5 + 0.8)];
    assert_eq!(
        v,
        json!({
            "model_name": "risk",
            "model_version": "1",
            "id": "42",
            "outputs": [{"name": "probability", "datatype": "FP64", "shape": [2], "data": p}],
        })
    );
    // one [N, F] FP64 tensor named `input`, in metadata feature order; alias as version
    let (s, v) = call(
        &app,
        "POST",
        "/v2/models/risk/versions/champion/infer",
        Some(
            json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP64",
                                 "data": [[1.2, 3.0], [0.8, 0.0]]}]}),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"][0]["data"], json!(p));
    assert_eq!(
        v["outputs"][1],
        json!({"name": "label", "datatype": "BOOL", "shape": [2], "data": [true, true]})
    );
}

#[tokio::test]
async fn oip_v2_errors_are_4xx_with_an_error_field() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let cases = [
        (
            json!({"inputs": [{"name": "burn_rate", "shape": [1], "datatype": "BYTES", "data": ["x"]},
                              {"name": "churn", "shape": [1], "datatype": "INT64", "data": [1]}]}),
            "datatype BYTES does not fit feature `burn_rate`",
        ),
        (
            json!({"inputs": [{"name": "burn_rate", "shape": [2], "datatype": "FP64", "data": [1.0]},
                              {"name": "churn", "shape": [1], "datatype": "INT64", "data": [1]}]}),
            "holds 2 elements but `data` has 1",
        ),
        (
            json!({"inputs": [{"name": "burn_rate", "shape": [1], "datatype": "FP64", "data": [1.0]}]}),
            "missing input `churn`",
        ),
        (
            json!({"inputs": [{"name": "burn_rate", "shape": [1], "datatype": "FP64", "data": [1.0]},
                              {"name": "churn", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}),
            "has 2 rows but an earlier input has 1",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]}]}),
            "must have shape [N, 2]",
        ),
        (json!({"inputs": "x"}), "`inputs` must be an array"),
        // the shape of a held-out attack (its element count wrapped to the data's length):
        // more rows than a request may have, refused before anything is allocated
        (
            json!({"inputs": [{"name": "input", "shape": [6148914691236517206u64, 3], "datatype": "FP64", "data": [1.0, 2.0]}]}),
            "rows in one request; at most 10000",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1_000_000_000, 2], "datatype": "FP64", "data": [1.0, 2.0]}]}),
            "rows in one request; at most 10000",
        ),
        // element counts that overflow 64 bits (2^64 - 2, and 2^64 wrapping to 0)
        (
            json!({"inputs": [{"name": "input", "shape": [2, 9223372036854775807u64], "datatype": "FP64", "data": [1.0, 2.0]}]}),
            "too many elements",
        ),
        (
            json!({"inputs": [{"name": "burn_rate", "shape": [1, 4611686018427387904u64, 4], "datatype": "FP64", "data": []}]}),
            "too many elements",
        ),
    ];
    for (body, expect) in cases {
        let (s, v) = call(&app, "POST", "/v2/models/risk/infer", Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 1, "only `error`: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(expect),
            "{v} should say {expect}"
        );
    }
    let (s, v) = call(&app, "GET", "/v2/models/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"].as_str().unwrap().contains("available: risk"),
        "{v}"
    );
    let (s, v) = call(&app, "GET", "/v2/models/risk/versions/challenger", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("available: 1, champion"),
        "{v}"
    );
}

#[tokio::test]
async fn v1_predict_batches_explains_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (s, v) = call(
        &app,
        "POST",
        "/v1/models/risk:predict",
        Some(json!({"instances": [{"burn_rate": 1.2, "churn": 3}, {"burn_rate": 0.8, "churn": 0}], "explain": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["model_version"], "1");
    let first = &v["predictions"][0];
    assert_eq!(
        first["top_features"],
        json!([["churn", 1.5], ["burn_rate", 1.2]])
    );
    assert_eq!(first["base_score"], json!(-0.5));
    assert!((first["score"].as_f64().unwrap() - 2.2).abs() < 1e-12);
    let (s, v) = call(&app, "POST", "/v1/models/risk:explode", Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = call(
        &app,
        "POST",
        "/v1/models/risk:predict",
        Some(json!({"instances": [{"burn_rate": 1.2, "churn": 3}], "explian": true})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `explian`"),
        "{v}"
    );
    let (s, v) = call(
        &app,
        "POST",
        "/v1/models/risk:predict",
        Some(json!({"instances": []})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = call(&app, "GET", "/v1/models", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["models"][0]["aliases"], json!({"champion": "1"}));
}

/// Lines of the Prometheus text for the model request metric (one per series and
/// quantile/bucket).
fn model_series(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("ymera_model_request_duration_seconds"))
        .count()
}

#[test]
fn bogus_model_names_and_versions_add_no_metric_series() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let app = app(dir.path()).await;
            let good = json!({"instances": [{"burn_rate": 1.0, "churn": 1}]});
            let (s, _) = call(&app, "POST", "/v1/models/risk:predict", Some(good.clone())).await;
            assert_eq!(s, StatusCode::OK);
            let (s, _) = call(&app, "POST", "/v1/models/nope:predict", Some(good.clone())).await;
            assert_eq!(s, StatusCode::NOT_FOUND);
            let v2 = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 1.0]}]});
            let (s, _) = call(&app, "POST", "/v2/models/nope/infer", Some(v2.clone())).await;
            assert_eq!(s, StatusCode::NOT_FOUND);
            let before = model_series(&handle.render());
            assert!(before > 0, "{}", handle.render());
            for i in 0..10_000 {
                let (s, _) = call(
                    &app,
                    "POST",
                    &format!("/v1/models/bogus-{i}:predict"),
                    Some(good.clone()),
                )
                .await;
                assert_eq!(s, StatusCode::NOT_FOUND);
            }
            for i in 0..1_000 {
                let path = format!("/v2/models/bogus-{i}/versions/{i}/infer");
                let (s, _) = call(&app, "POST", &path, Some(v2.clone())).await;
                assert_eq!(s, StatusCode::NOT_FOUND);
            }
            assert_eq!(model_series(&handle.render()), before);
        })
    });
}

#[tokio::test]
async fn made_up_service_names_do_not_grow_the_autoscaler_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let auto = Arc::new(crate::autoscale::Autoscaler::new(
        crate::autoscale::AutoscaleConfig::default(),
        None,
        registry(dir.path()).await,
    ));
    let now = chrono::Utc::now().timestamp();
    let mut refused = 0;
    for i in 0..(crate::autoscale::MAX_ENTRIES + 500) {
        let q = serde_json::from_value(json!({})).unwrap();
        if let Err(ymera_models::ModelError::Busy(_)) =
            crate::autoscale::respond(&auto, &format!("bogus-{i}"), q, now).await
        {
            refused += 1
        }
    }
    assert_eq!(refused, 0, "entries that never fitted make room");
    assert!(
        auto.tracked() <= crate::autoscale::MAX_ENTRIES,
        "{} entries",
        auto.tracked()
    );
}
