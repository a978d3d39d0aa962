//! The policy and the guard, through a stub router with every route of the API (no
//! socket): the auth matrix (every rule × no token and each role), the JWT refusals, rate
//! limits, revocation, the failure audit and the bootstrap key.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::Request;
use axum::routing::{MethodFilter, on};
use http_body_util::BodyExt;
use jsonwebtoken::{EncodingKey, Header};
use tower::ServiceExt;

use super::*;

/// The routes of the API as interfaces.md and the brief list them, with who may call
/// each — written out independently of [`POLICY`], which must say the same.
const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/health", "public"),
    ("GET", "/health/startup", "public"),
    ("GET", "/health/ready", "public"),
    ("GET", "/metrics", "admin"),
    ("GET", "/v2", "agent admin"),
    ("GET", "/v2/health/live", "agent admin"),
    ("GET", "/v2/health/ready", "agent admin"),
    ("GET", "/v2/models/{name}", "agent admin"),
    ("GET", "/v2/models/{name}/ready", "agent admin"),
    ("GET", "/v2/models/{name}/versions/{version}", "agent admin"),
    (
        "GET",
        "/v2/models/{name}/versions/{version}/ready",
        "agent admin",
    ),
    ("POST", "/v2/models/{name}/infer", "agent admin"),
    (
        "POST",
        "/v2/models/{name}/versions/{version}/infer",
        "agent admin",
    ),
    ("POST", "/v1/models/{name}", "agent admin"),
    ("GET", "/v1/models", "agent analyst admin"),
    ("GET", "/v1/models/{name}", "agent analyst admin"),
    (
        "GET",
        "/v1/models/{name}/aliases/{alias}/history",
        "agent analyst admin",
    ),
    ("PUT", "/v1/models/{name}/aliases/{alias}", "admin"),
    ("POST", "/v1/sql", "analyst admin"),
    (
        "GET",
        "/v1/autoscale/{service}/forecast",
        "autoscaler admin",
    ),
    ("POST", "/v1/anomaly/detect", "agent admin"),
    ("GET", "/v1/alerts", "agent analyst admin"),
    ("POST", "/v1/alerts/{id}/acknowledge", "agent admin"),
    ("POST", "/v1/alerts/{id}/resolve", "agent admin"),
    ("GET", "/openapi.json", "public"),
];

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "ymera";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// A concrete path for a template (`:predict` as a client sends it).
fn concrete(method: &str, template: &str) -> String {
    let path = template
        .replace("{name}", "churn")
        .replace("{version}", "3")
        .replace("{alias}", "champion")
        .replace("{service}", "api")
        .replace("{id}", "00112233445566ff");
    if method == "POST" && template == "/v1/models/{name}" {
        path.replace("churn", "churn:predict")
    } else {
        path
    }
}

/// Every route of [`ROUTES`], each answering 200 with the caller's role.
fn stub_router() -> Router {
    let mut router = Router::new();
    for (method, path, _) in ROUTES {
        let filter =
            MethodFilter::try_from(Method::from_bytes(method.as_bytes()).unwrap()).unwrap();
        router = router.route(
            path,
            on(filter, |p: Option<axum::Extension<Principal>>| async move {
                p.map(|axum::Extension(p)| p.role.to_string())
                    .unwrap_or_else(|| "public".into())
            }),
        );
    }
    router
}

struct Env {
    _dir: tempfile::TempDir,
    wh: Warehouse,
    keys: Vec<(Role, String)>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let wh = Warehouse::connect(&format!("sqlite://{}/w.db", dir.path().display()))
        .await
        .unwrap();
    let mut keys = Vec::new();
    for role in Role::ALL {
        let (_, key) = wh.create_key(role.as_str(), "test").await.unwrap();
        keys.push((role, key));
    }
    Env {
        _dir: dir,
        wh,
        keys,
    }
}

fn config(jwt_key: Option<&str>) -> AuthConfig {
    AuthConfig {
        jwt: jwt_key.map(|k| JwtConfig {
            public_key_file: format!("{FIXTURES}/{k}").into(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
        }),
        rate_per_second: 1000,
        burst: 1000,
    }
}

fn app(env: &Env, config: AuthConfig) -> Router {
    let auth = Auth::new(config, env.wh.clone()).unwrap();
    protect(stub_router(), Arc::new(auth))
}

async fn call(app: &Router, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    app.clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

async fn status(app: &Router, method: &str, path: &str, token: Option<&str>) -> StatusCode {
    call(app, method, path, token).await.status()
}

async fn body_json(resp: Response) -> serde_json::Value {
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn policy_is_the_route_list() {
    let spec: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .map(|(m, p, a)| (m.to_string(), p.to_string(), a.to_string()))
        .collect();
    assert_eq!(spec.len(), ROUTES.len(), "a route listed twice");
    let policy: BTreeSet<(String, String, String)> = POLICY
        .iter()
        .map(|r| {
            let allow = match r.allow {
                Allow::Public => "public".to_string(),
                Allow::Roles(roles) => {
                    let mut names: Vec<&str> = Role::ALL
                        .iter()
                        .filter(|x| roles.contains(x))
                        .map(|x| x.as_str())
                        .collect();
                    names.dedup();
                    names.join(" ")
                }
            };
            (r.method.to_string(), r.path.to_string(), allow)
        })
        .collect();
    assert_eq!(policy.len(), POLICY.len(), "a rule listed twice");
    assert_eq!(policy, spec);
}

#[tokio::test]
async fn auth_matrix() {
    let env = env().await;
    let app = app(&env, config(None));
    let mut checked = 0;
    for (method, template, allowed) in ROUTES {
        let path = concrete(method, template);
        let public = *allowed == "public";
        let want = if public {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        let resp = call(&app, method, &path, None).await;
        assert_eq!(resp.status(), want, "{method} {path} without a token");
        if !public {
            assert_eq!(
                resp.headers().get(header::WWW_AUTHENTICATE).unwrap(),
                "Bearer realm=\"ymera\""
            );
            assert!(body_json(resp).await["error"].is_string());
        }
        for (role, key) in &env.keys {
            let may = public || allowed.split(' ').any(|r| r == role.as_str());
            let want = if may {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            let resp = call(&app, method, &path, Some(key)).await;
            assert_eq!(resp.status(), want, "{method} {path} as {role}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            if may && !public {
                assert_eq!(body, role.as_str(), "{method} {path}: principal of {role}");
            }
            if !may {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let msg = v["error"].as_str().unwrap();
                assert!(
                    msg.starts_with(&format!("role {role} may not {method}")),
                    "{msg}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * Role::ALL.len());
    // a bad key, a malformed header, and a JWT when JWTs are not enabled
    let bad = format!("ymk_000000000000_{}", "0".repeat(64));
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some(&bad)).await,
        StatusCode::UNAUTHORIZED
    );
    let basic = Request::post("/v1/sql")
        .header(header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        app.clone().oneshot(basic).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some("a.b.c")).await,
        StatusCode::UNAUTHORIZED
    );
    // unmatched paths and methods are 404 and 405, never a 401
    assert_eq!(
        status(&app, "GET", "/nowhere", None).await,
        StatusCode::NOT_FOUND
    );
    let resp = call(&app, "DELETE", "/v1/sql", None).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()[header::ALLOW], "POST");
    // HEAD is checked as GET
    assert_eq!(
        status(&app, "HEAD", "/v1/models", None).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_route_without_a_rule_is_refused() {
    let env = env().await;
    let router = stub_router()
        .route("/v1/secret", axum::routing::get(|| async { "secret" }))
        .route("/v1/sql/{id}", axum::routing::delete(|| async { "gone" }));
    let app = protect(
        router,
        Arc::new(Auth::new(config(None), env.wh.clone()).unwrap()),
    );
    let admin = &env.keys.iter().find(|(r, _)| *r == Role::Admin).unwrap().1;
    assert_eq!(
        status(&app, "GET", "/v1/secret", Some(admin)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&app, "GET", "/v1/secret", None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&app, "DELETE", "/v1/sql/1", Some(admin)).await,
        StatusCode::FORBIDDEN
    );
    // a handler for a method the policy does not list on a known route stays unreachable
    let router = stub_router().route("/v1/models", axum::routing::delete(|| async { "all gone" }));
    let app = protect(
        router,
        Arc::new(Auth::new(config(None), env.wh.clone()).unwrap()),
    );
    let resp = call(&app, "DELETE", "/v1/models", Some(admin)).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(role: &str) -> serde_json::Value {
    json!({"sub": "svc-reporting", "role": role, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600})
}

fn ed_token(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_ed_pem(&fixture("ed25519-private.pem")).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &key).unwrap()
}

fn rsa_token(claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(&fixture("rsa-private.pem")).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

#[test]
fn base64url_matches_known_values() {
    assert_eq!(b64url(b""), "");
    assert_eq!(b64url(b"f"), "Zg");
    assert_eq!(b64url(b"fo"), "Zm8");
    assert_eq!(b64url(b"foo"), "Zm9v");
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

#[tokio::test]
async fn jwt_refusals_and_roles() {
    let env = env().await;
    let app = app(&env, config(Some("ed25519-public.pem")));
    let sql = |token: String| {
        let app = app.clone();
        async move { (status(&app, "POST", "/v1/sql", Some(&token)).await, token) }
    };

    let good = ed_token(&claims("analyst"));
    assert_eq!(sql(good.clone()).await.0, StatusCode::OK);
    let put = "/v1/models/churn/aliases/champion";
    let resp = call(&app, "PUT", put, Some(&good)).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        body_json(resp).await["error"],
        format!("role analyst may not PUT {put}")
    );

    let payload = |c: &serde_json::Value| b64url(c.to_string().as_bytes());
    let mut refused: Vec<(&str, String)> = Vec::new();
    // alg none, no signature
    refused.push((
        "alg none",
        format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            payload(&claims("admin"))
        ),
    ));
    // HS256 keyed with the public key's PEM (the classic key-confusion attack)
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("admin"),
        &EncodingKey::from_secret(&fixture("ed25519-public.pem")),
    )
    .unwrap();
    refused.push(("HS256 with the public key", hs));
    let mut c = claims("analyst");
    c["iss"] = json!("https://evil.example.com");
    refused.push(("wrong iss", ed_token(&c)));
    let mut c = claims("analyst");
    c["aud"] = json!("someone-else");
    refused.push(("wrong aud", ed_token(&c)));
    let mut c = claims("analyst");
    c["exp"] = json!(now() - 3600);
    refused.push(("expired", ed_token(&c)));
    let mut c = claims("analyst");
    c.as_object_mut().unwrap().remove("exp");
    refused.push(("no exp", ed_token(&c)));
    let mut c = claims("analyst");
    c.as_object_mut().unwrap().remove("iss");
    refused.push(("no iss", ed_token(&c)));
    // not valid for another hour
    let mut c = claims("analyst");
    c["nbf"] = json!(now() + 3600);
    refused.push(("nbf an hour ahead", ed_token(&c)));
    // no subject: nobody to audit or rate-limit
    let mut c = claims("analyst");
    c.as_object_mut().unwrap().remove("sub");
    refused.push(("no sub", ed_token(&c)));
    // a valid signature over another payload
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], payload(&claims("admin")), parts[2]);
    refused.push(("tampered payload", tampered));
    refused.push(("unknown role", ed_token(&claims("root"))));
    let mut c = claims("analyst");
    c.as_object_mut().unwrap().remove("role");
    refused.push(("no role", ed_token(&c)));
    // signed by the right kind of key, but not ours
    refused.push(("RS256 to an Ed25519 server", rsa_token(&claims("analyst"))));

    for (what, token) in refused {
        let resp = call(&app, "POST", "/v1/sql", Some(&token)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        assert!(
            resp.headers().contains_key(header::WWW_AUTHENTICATE),
            "{what}"
        );
        let msg = body_json(resp).await["error"].as_str().unwrap().to_string();
        assert!(msg.starts_with("invalid token"), "{what}: {msg}");
    }
    // an `nbf` already passed is fine
    let mut c = claims("analyst");
    c["nbf"] = json!(now() - 60);
    assert_eq!(sql(ed_token(&c)).await.0, StatusCode::OK);
    // API keys still work beside JWTs
    let admin = &env.keys.iter().find(|(r, _)| *r == Role::Admin).unwrap().1;
    assert_eq!(status(&app, "PUT", put, Some(admin)).await, StatusCode::OK);
}

#[tokio::test]
async fn a_jwt_caller_is_audited_as_jwt_and_its_subject() {
    let env = env().await;
    let auth = Auth::new(config(Some("ed25519-public.pem")), env.wh.clone()).unwrap();
    let who = auth
        .authenticate(&ed_token(&claims("analyst")))
        .await
        .unwrap();
    assert_eq!(who.subject, "jwt:svc-reporting");
    auth.audit(&who, "sql.query", "lake", "ok", json!({})).await;
    let rows = env.wh.audit_rows(0, 10).await.unwrap();
    assert_eq!(rows[0].entry.actor, "jwt:svc-reporting");
}

#[tokio::test]
async fn rsa_keys_mean_rs256() {
    let env = env().await;
    let app = app(&env, config(Some("rsa-public.pem")));
    assert_eq!(
        status(
            &app,
            "GET",
            "/v1/autoscale/api/forecast",
            Some(&rsa_token(&claims("autoscaler")))
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        status(
            &app,
            "GET",
            "/v1/autoscale/api/forecast",
            Some(&ed_token(&claims("autoscaler")))
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("autoscaler"),
        &EncodingKey::from_secret(&fixture("rsa-public.pem")),
    )
    .unwrap();
    assert_eq!(
        status(&app, "GET", "/v1/autoscale/api/forecast", Some(&hs)).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn bad_jwt_settings_are_refused() {
    let env = env().await;
    let with = |file: &str, issuer: &str| AuthConfig {
        jwt: Some(JwtConfig {
            public_key_file: format!("{FIXTURES}/{file}").into(),
            issuer: issuer.into(),
            audience: AUDIENCE.into(),
        }),
        ..config(None)
    };
    let err = |c| {
        Auth::new(c, env.wh.clone())
            .err()
            .expect("refused")
            .to_string()
    };
    assert!(err(with("ed25519-private.pem", ISSUER)).contains("private key"));
    assert!(err(with("README.md", ISSUER)).contains("not a PEM"));
    assert!(err(with("missing.pem", ISSUER)).contains("cannot read"));
    assert!(err(with("ed25519-public.pem", "")).contains("issuer"));
    let zero = AuthConfig {
        burst: 0,
        ..config(None)
    };
    assert!(err(zero).contains("burst"));
}

#[tokio::test]
async fn rate_limit_per_credential() {
    let env = env().await;
    let app = app(
        &env,
        AuthConfig {
            rate_per_second: 1,
            burst: 3,
            ..config(None)
        },
    );
    let key = |role| &env.keys.iter().find(|(r, _)| *r == role).unwrap().1;
    for i in 0..3 {
        assert_eq!(
            status(&app, "POST", "/v1/sql", Some(key(Role::Analyst))).await,
            StatusCode::OK,
            "request {i}"
        );
    }
    let resp = call(&app, "POST", "/v1/sql", Some(key(Role::Analyst))).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(
        body_json(resp).await["error"]
            .as_str()
            .unwrap()
            .contains("rate limit")
    );
    // another credential has its own allowance
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some(key(Role::Admin))).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn revocation_applies_after_the_cache() {
    let env = env().await;
    let auth = Auth::new(config(None), env.wh.clone())
        .unwrap()
        .with_key_cache_ttl(Duration::ZERO);
    let app = protect(stub_router(), Arc::new(auth));
    let (id, key) = env.wh.create_key("analyst", "temp").await.unwrap();
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some(&key)).await,
        StatusCode::OK
    );
    assert!(env.wh.revoke_key(&id).await.unwrap());
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some(&key)).await,
        StatusCode::UNAUTHORIZED
    );

    // with the default TTL a found key is served from the cache for a while
    let cached = app_with_default_ttl(&env);
    let (id, key) = env.wh.create_key("analyst", "temp2").await.unwrap();
    assert_eq!(
        status(&cached, "POST", "/v1/sql", Some(&key)).await,
        StatusCode::OK
    );
    assert!(env.wh.revoke_key(&id).await.unwrap());
    assert_eq!(
        status(&cached, "POST", "/v1/sql", Some(&key)).await,
        StatusCode::OK
    );
}

fn app_with_default_ttl(env: &Env) -> Router {
    app(env, config(None))
}

#[tokio::test]
async fn failures_are_audited_without_the_token() {
    let env = env().await;
    let app = app(&env, config(None));
    let bad = format!("ymk_000000000000_{}", "ab".repeat(32));
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some(&bad)).await,
        StatusCode::UNAUTHORIZED
    );
    let agent = &env.keys.iter().find(|(r, _)| *r == Role::Agent).unwrap().1;
    assert_eq!(
        status(&app, "POST", "/v1/sql", Some(agent)).await,
        StatusCode::FORBIDDEN
    );
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = env.wh.audit_rows(0, 100).await.unwrap();
        if rows.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rows.len(), 2, "{rows:?}");
    let mut outcomes: Vec<&str> = rows.iter().map(|r| r.entry.outcome.as_str()).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["401", "403"]);
    for r in &rows {
        assert_eq!(r.entry.action, "auth.failure");
        assert_eq!(r.entry.target, "POST /v1/sql");
        assert!(
            !r.entry.detail.contains(&bad[17..]),
            "token in the audit log"
        );
        assert!(
            !r.entry.detail.contains(&agent[17..]),
            "token in the audit log"
        );
    }
    let forbidden = rows.iter().find(|r| r.entry.outcome == "403").unwrap();
    assert_eq!(forbidden.entry.role, "agent");
    assert!(env.wh.audit_verify().await.unwrap().first_bad.is_none());
}

#[tokio::test]
async fn audit_rows_keep_the_route_and_a_bounded_path() {
    let env = env().await;
    let app = app(&env, config(None));
    // 10,000 refused calls on bogus model names, one of them 8 KiB long
    let long = format!("/v1/models/{}:predict", "x".repeat(8192));
    assert_eq!(
        status(&app, "POST", &long, None).await,
        StatusCode::UNAUTHORIZED
    );
    for i in 0..9_999 {
        let path = format!("/v1/models/bogus-{i}:predict");
        assert_eq!(
            status(&app, "POST", &path, None).await,
            StatusCode::UNAUTHORIZED
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = env.wh.audit_rows(0, 20_000).await.unwrap();
    // the failure audit is rate limited (a burst of 200), and no row is large
    assert!(!rows.is_empty() && rows.len() <= 260, "{} rows", rows.len());
    for r in &rows {
        assert_eq!(r.entry.target, "POST /v1/models/{name}");
    }
    // written in the background, so in any order: find the long one
    let detail: serde_json::Value = rows
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.entry.detail).unwrap())
        .find(|d| d.get("path_bytes").is_some())
        .expect("the long path's row");
    let path = detail["path"].as_str().unwrap();
    assert!(
        path.len() <= AUDIT_TEXT_MAX && path.starts_with("/v1/models/xxx"),
        "{path}"
    );
    assert_eq!(detail["path_bytes"], json!(long.len()));
    for r in &rows {
        let bytes = r.entry.target.len() + r.entry.detail.len() + r.entry.actor.len();
        assert!(bytes < 600, "{} bytes: {:?}", bytes, r.entry);
    }
}

#[test]
fn clip_cuts_at_a_character_boundary() {
    assert_eq!(clip("abc", 5), "abc");
    assert_eq!(clip("ééé", 3), "é");
    assert_eq!(clip("ééé", 4), "éé");
}

#[tokio::test]
async fn audit_helper_appends_for_the_principal() {
    let env = env().await;
    let auth = Auth::new(config(None), env.wh.clone()).unwrap();
    let who = Principal {
        subject: "k1".into(),
        role: Role::Admin,
    };
    auth.audit(
        &who,
        "models.promote",
        "churn@champion",
        "ok",
        json!({"version": "7"}),
    )
    .await;
    let rows = env.wh.audit_rows(0, 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].entry.actor.as_str(),
            rows[0].entry.role.as_str(),
            rows[0].entry.detail.as_str()
        ),
        ("k1", "admin", r#"{"version":"7"}"#)
    );
}

#[tokio::test]
async fn bootstrap_admin_key_once() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let wh = Warehouse::connect(&format!("sqlite://{}/w.db", dir.path().display()))
        .await
        .unwrap();
    let path = dir.path().join("admin.key");
    let written = bootstrap_admin_key(&wh, &path)
        .await
        .unwrap()
        .expect("created");
    assert_eq!(written, path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(bootstrap_admin_key(&wh, &path).await.unwrap().is_none());
    assert_eq!(wh.list_keys().await.unwrap().len(), 1);

    let key = std::fs::read_to_string(&path).unwrap();
    let key = key.trim();
    let auth = Arc::new(Auth::new(config(None), wh.clone()).unwrap());
    assert_eq!(auth.authenticate(key).await.unwrap().role, Role::Admin);
    let app = protect(stub_router(), auth);
    assert_eq!(
        status(&app, "GET", "/metrics", Some(key)).await,
        StatusCode::OK
    );

    // a fresh warehouse never overwrites an existing key file
    let other = Warehouse::connect(&format!("sqlite://{}/w2.db", dir.path().display()))
        .await
        .unwrap();
    let err = bootstrap_admin_key(&other, &path).await.unwrap_err();
    assert!(err.to_string().contains("exists"), "{err}");
    assert!(!other.has_keys().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_flooding_bad_keys_takes_turns_and_a_valid_key_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let wh = Warehouse::connect(&format!("sqlite://{}/w.db", dir.path().display()))
        .await
        .unwrap();
    let (_, valid) = wh.create_key("analyst", "flood").await.unwrap();
    let auth = Arc::new(Auth::new(config(None), wh).unwrap());
    let flooder: IpAddr = "10.0.0.1".parse().unwrap();
    let other: IpAddr = "10.0.0.2".parse().unwrap();
    let bad = |i: usize| format!("{KEY_PREFIX}{i:040}");
    // the allowance of one address: lookups run side by side
    let burst = 2 * LOOKUPS_PER_ADDRESS_PER_SECOND as usize;
    for i in 0..burst {
        assert!(auth.authenticate_from(&bad(i), flooder).await.is_err());
    }
    assert_eq!(auth.throttled(), 0);
    // past it: the address's lookups wait for the one lane, in turn, and are still
    // answered
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (auth, token) = (auth.clone(), bad(burst + i));
            tokio::spawn(async move { auth.authenticate_from(&token, flooder).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().is_err());
    }
    assert!(auth.throttled() >= 60, "{}", auth.throttled());
    // a valid key from the throttled address is not refused, nor one from elsewhere
    assert_eq!(
        auth.authenticate_from(&valid, flooder).await.unwrap().role,
        Role::Analyst
    );
    let before = auth.throttled();
    assert!(auth.authenticate_from(&bad(999), other).await.is_err());
    assert_eq!(auth.throttled(), before, "another address is not throttled");
}
