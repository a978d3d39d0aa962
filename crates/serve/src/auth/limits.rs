//! Request hardening around the whole router: a body size limit, a request timeout and
//! CORS (only for the origins the user lists). Every refusal is `{"error": "..."}`.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tracing::error;

use super::error_response;

/// `serve.body_limit`, `serve.request_timeout`, `serve.cors_allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// Largest request body accepted (413 beyond it).
    pub body_limit_bytes: usize,
    /// Longest a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Exact origins (`https://app.example.com`) allowed to call from a browser; empty:
    /// no CORS headers at all; `*` (alone): any origin.
    pub cors_allowed_origins: Vec<String>,
}

/// Checks each allowed origin: `*` alone, or `scheme://host[:port]` with no path.
pub fn check_cors_origins(origins: &[String]) -> Result<(), String> {
    if origins.iter().any(|o| o == "*") && origins.len() > 1 {
        return Err("serve.cors_allowed_origins: `*` must be the only entry".into());
    }
    for o in origins.iter().filter(|o| o.as_str() != "*") {
        let ok = match o.split_once("://") {
            Some((scheme, rest)) => {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains(['/', '?', '#', ' ', '*'])
            }
            None => false,
        };
        if !ok || HeaderValue::from_str(o).is_err() {
            return Err(format!(
                "serve.cors_allowed_origins: `{o}` is not an origin like https://app.example.com (no path, no wildcard)"
            ));
        }
    }
    Ok(())
}

/// Adds the body limit, the timeout and (for a non-empty allowlist) CORS around every
/// route of `router`. Call it last: `harden(protect(router, auth), limits)`, so CORS
/// preflights are answered before authentication and refusals carry CORS headers.
/// Invalid origins are left out with an error logged (check them first with
/// [`check_cors_origins`]).
pub fn harden(router: Router, limits: ServeLimits) -> Router {
    let timeout = limits.request_timeout;
    let mut router = router
        // axum's extractors have their own 2 MB default: make the setting the one limit
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(limits.body_limit_bytes))
        .layer(middleware::from_fn_with_state(
            limits.body_limit_bytes,
            json_payload_too_large,
        ))
        .layer(middleware::from_fn_with_state(timeout, request_timeout));
    if !limits.cors_allowed_origins.is_empty() {
        router = router.layer(cors(&limits.cors_allowed_origins));
    }
    router
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                error!(origin = %o, "serve.cors_allowed_origins: not a valid origin, left out");
                None
            }
        }))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}

async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request timed out after {}", humanize(limit)),
        ),
    }
}

/// Gives the 413 of the body limit (plain text from tower-http or axum) a JSON body.
async fn json_payload_too_large(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than serve.body_limit ({limit} bytes)"),
        );
    }
    resp
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::{get, post};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn app(origins: &[&str]) -> Router {
        let router = Router::new()
            .route("/echo", post(|body: String| async move { body }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        harden(
            router,
            ServeLimits {
                body_limit_bytes: 16,
                request_timeout: Duration::from_millis(100),
                cors_allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    async fn call(app: &Router, req: axum::http::Request<Body>) -> (StatusCode, Response) {
        let resp = app.clone().oneshot(req).await.unwrap();
        (resp.status(), resp)
    }

    async fn error_of(resp: Response) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
        v["error"].as_str().expect("error field").to_string()
    }

    #[tokio::test]
    async fn body_limit_and_timeout_answer_json() {
        let app = app(&[]);
        let small = axum::http::Request::post("/echo")
            .body(Body::from("hello"))
            .unwrap();
        assert_eq!(call(&app, small).await.0, StatusCode::OK);
        // declared too large
        let big = axum::http::Request::post("/echo")
            .header(header::CONTENT_LENGTH, "17")
            .body(Body::from("x".repeat(17)))
            .unwrap();
        let (status, resp) = call(&app, big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error_of(resp).await.contains("16 bytes"));
        // streamed without a length
        let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>("x".repeat(40))]);
        let chunked = axum::http::Request::post("/echo")
            .body(Body::from_stream(stream))
            .unwrap();
        let (status, resp) = call(&app, chunked).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(error_of(resp).await.contains("body_limit"));

        let slow = axum::http::Request::get("/slow")
            .body(Body::empty())
            .unwrap();
        let (status, resp) = call(&app, slow).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(error_of(resp).await.contains("timed out after 100ms"));
    }

    #[tokio::test]
    async fn cors_only_for_listed_origins() {
        let preflight = |origin: &str| {
            axum::http::Request::builder()
                .method(Method::OPTIONS)
                .uri("/echo")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .body(Body::empty())
                .unwrap()
        };
        let allow = |resp: &Response| {
            resp.headers()
                .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                .map(|v| v.to_str().unwrap().to_string())
        };
        // no allowlist: no CORS headers at all
        let (_, resp) = call(&app(&[]), preflight("https://app.example.com")).await;
        assert_eq!(allow(&resp), None);
        let listed = app(&["https://app.example.com"]);
        let (_, resp) = call(&listed, preflight("https://app.example.com")).await;
        assert_eq!(allow(&resp).as_deref(), Some("https://app.example.com"));
        let (_, resp) = call(&listed, preflight("https://evil.example.com")).await;
        assert_eq!(allow(&resp), None);
        let (_, resp) = call(&app(&["*"]), preflight("https://any.example.com")).await;
        assert_eq!(allow(&resp).as_deref(), Some("*"));
    }

    #[test]
    fn origins_are_checked() {
        let ok =
            |v: &[&str]| check_cors_origins(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&[]).is_ok());
        assert!(ok(&["*"]).is_ok());
        assert!(ok(&["https://app.example.com", "http://localhost:3000"]).is_ok());
        assert!(ok(&["*", "https://a.example.com"]).is_err());
        assert!(ok(&["app.example.com"]).is_err());
        assert!(ok(&["https://app.example.com/path"]).is_err());
        assert!(ok(&["https://*.example.com"]).is_err());
    }
}
