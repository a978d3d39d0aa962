//! `GET /openapi.json`: the OpenAPI 3.1 document of the API, kept in `openapi.yaml` beside
//! this crate and checked against the real router by the tests below (every documented
//! operation is a route, every route of [`crate::auth::POLICY`] is documented with the
//! same roles).

use std::sync::LazyLock;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

static SOURCE: &str = include_str!("../openapi.yaml");

/// The document, parsed once; `info.version` is the crate's version.
static DOCUMENT: LazyLock<Result<Value, String>> = LazyLock::new(|| {
    let mut doc: Value =
        serde_norway::from_str(SOURCE).map_err(|e| format!("openapi.yaml: {e}"))?;
    doc["info"]["version"] = Value::String(env!("CARGO_PKG_VERSION").into());
    Ok(doc)
});

/// The OpenAPI document as JSON.
pub fn document() -> Result<&'static Value, &'static str> {
    DOCUMENT.as_ref().map_err(String::as_str)
}

/// `GET /openapi.json`
pub async fn get_openapi() -> Response {
    match document() {
        Ok(doc) => axum::Json(doc).into_response(),
        Err(e) => crate::models::error_json(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Every documented operation: (method, the axum route template, the roles as
/// `x-ymera-roles` lists them).
pub fn operations(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            if !["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                continue;
            }
            let route = op["x-ymera-route"].as_str().unwrap_or(path);
            out.push((
                method.to_uppercase(),
                route.to_string(),
                op["x-ymera-roles"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::extract::{MatchedPath, Request};
    use axum::http::HeaderValue;
    use axum::middleware::Next;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::{Allow, POLICY};

    fn roles(allow: Allow) -> String {
        match allow {
            Allow::Public => "public".into(),
            Allow::Roles(r) => r.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" "),
        }
    }

    #[test]
    fn every_route_of_the_policy_is_documented_with_its_roles() {
        let doc = document().unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<(String, String, String)> = operations(doc).into_iter().collect();
        let policy: BTreeSet<(String, String, String)> = POLICY
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string(), roles(r.allow)))
            .collect();
        assert_eq!(documented, policy);
        // public operations say so to OpenAPI clients too
        for (path, item) in doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                let public = op["x-ymera-roles"] == "public";
                assert_eq!(
                    op["security"] == serde_json::json!([]),
                    public,
                    "{path}: `security: []` exactly on public operations"
                );
                assert!(op["operationId"].is_string(), "{path}: operationId");
                assert!(op["responses"].is_object(), "{path}: responses");
            }
        }
    }

    /// Records which route template answered, as a response header.
    async fn matched(req: Request, next: Next) -> Response {
        let template = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_string());
        let mut resp = next.run(req).await;
        if let Some(t) = template.and_then(|t| HeaderValue::from_str(&t).ok()) {
            resp.headers_mut().insert("x-matched-route", t);
        }
        resp
    }

    /// Every documented operation, sent to the real router of `ymera serve` (no
    /// credentials layer): it reaches the route the document names, with that method.
    #[tokio::test]
    async fn every_documented_operation_is_a_route_of_the_real_router() {
        let dir = tempfile::tempdir().unwrap();
        let router = crate::tests::app(dir.path())
            .await
            .route_layer(axum::middleware::from_fn(matched));
        let doc = document().unwrap();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let expected = op["x-ymera-route"].as_str().unwrap_or(path);
                let concrete = path
                    .replace("{name}", "risk")
                    .replace("{version}", "1")
                    .replace("{alias}", "champion")
                    .replace("{service}", "api")
                    .replace("{id}", "00112233445566ff");
                let req = axum::http::Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&concrete)
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                assert_ne!(
                    resp.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
                assert_eq!(
                    resp.headers()
                        .get("x-matched-route")
                        .and_then(|v| v.to_str().ok()),
                    Some(expected),
                    "{method} {path} ({concrete}) answered {} by another route or none",
                    resp.status()
                );
                seen += 1;
            }
        }
        assert_eq!(seen, POLICY.len());
    }

    #[tokio::test]
    async fn the_document_is_served_as_json() {
        let resp = get_openapi().await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc["components"]["schemas"]["Alert"]["properties"]["state"].is_object());
    }
}
