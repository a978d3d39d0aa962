//! A client of ymera's own HTTP API (what the Manager Agent does), for `ymera demo`: one
//! `reqwest` client with a bearer key, JSON in and out, a non-2xx answer an error naming
//! the route.

use std::time::{Duration, Instant};

use serde_json::Value;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached, or its answer not read.
    #[error("{method} {url}: {source}")]
    Transport {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A non-2xx status, with the body.
    #[error("{method} {url}: {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    /// A 2xx answer that is not JSON.
    #[error("{method} {url}: not JSON: {source}")]
    NotJson {
        method: &'static str,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// `/health/ready` did not answer 200 in time.
    #[error("{url} was not ready after {waited:?}: {last}")]
    NotReady {
        url: String,
        waited: Duration,
        last: String,
    },
}

/// The API at `base` (`http://host:port`), called with one key.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl ApiClient {
    /// Every call times out after `timeout`.
    pub fn new(base: &str, key: &str, timeout: Duration) -> Result<ApiClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|source| ClientError::Transport {
                method: "build",
                url: base.to_string(),
                source,
            })?;
        Ok(ApiClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            key: key.to_string(),
        })
    }

    /// Waits until `GET /health/ready` answers 200, polling every 100 ms for at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> Result<(), ClientError> {
        let url = format!("{}/health/ready", self.base);
        let started = Instant::now();
        loop {
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if started.elapsed() >= limit {
                return Err(ClientError::NotReady {
                    url,
                    waited: limit,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` (e.g. `/v1/alerts?state=open`).
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body)).await
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |source| ClientError::Transport {
            method,
            url: url.clone(),
            source,
        };
        let mut req = match body {
            Some(b) => self.http.post(&url).json(b),
            None => self.http.get(&url),
        };
        req = req.bearer_auth(&self.key);
        // the caller's trace goes on (W3C traceparent), when there is one
        let mut headers = reqwest::header::HeaderMap::new();
        let context =
            tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current());
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(
                &context,
                &mut opentelemetry_http::HeaderInjector(&mut headers),
            )
        });
        req = req.headers(headers);
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let text = resp.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(ClientError::Status {
                method,
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|source| ClientError::NotJson {
            method,
            url,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the real router on a socket: a 2xx is JSON, a refusal names route and status.
    #[tokio::test]
    async fn calls_answer_json_and_refusals_name_the_route() {
        let dir = tempfile::tempdir().unwrap();
        let router = crate::tests::app(dir.path()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = ApiClient::new(&base, "no-key-needed", Duration::from_secs(5)).unwrap();
        let doc = client.get("/openapi.json").await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let e = client
            .post(
                "/v1/models/nope:predict",
                &serde_json::json!({"instances": [{}]}),
            )
            .await
            .unwrap_err();
        assert!(matches!(&e, ClientError::Status { status: 404, .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("POST {base}/v1/models/nope:predict: 404")),
            "{e}"
        );
        let gone = ApiClient::new("http://127.0.0.1:9", "k", Duration::from_secs(1)).unwrap();
        let e = gone
            .wait_ready(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::NotReady { .. }), "{e}");
    }
}
