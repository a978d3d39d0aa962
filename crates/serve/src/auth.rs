//! Credentials and authorisation of the HTTP API (interfaces.md, "Credentials").
//!
//! Every route's (method, template) has one rule in [`POLICY`]: public, or the roles that
//! may call it. [`protect`] adds a route layer that finds the rule of the matched route and
//! checks `Authorization: Bearer <token>`:
//!
//! - a token starting with `ymk_` is an API key, found by its SHA-256 in the warehouse
//!   (`_ymera_api_keys`). A key found is cached for [`KEY_CACHE_TTL`], so a revocation
//!   takes effect within that time; a key not found is looked up again each time;
//! - anything else is a JWT, accepted only when `auth.jwt` is configured: the algorithm
//!   follows the public key (Ed25519 -> EdDSA, RSA -> RS256, nothing else); `exp`, `iss`,
//!   `aud` and `sub` are required, `nbf` is checked when present (60 s leeway, as for
//!   `exp`); the role is the `role` claim, the caller `jwt:<sub>`.
//!
//! Missing or bad credentials: 401 with `WWW-Authenticate: Bearer`. A credential without
//! the route's role: 403. Too many requests for one credential (a governor keyed limiter,
//! keyed by key id or JWT subject): 429 with `Retry-After`. Every body is
//! `{"error": "..."}`. 401s and 403s are appended to the audit log in the background
//! (never the token). A matched route without a rule is refused (fail closed) and logged
//! as an error: adding a route means adding its rule here.

pub mod limits;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{error, warn};
use ymera_warehouse::{AuditEntry, KEY_PREFIX, Warehouse, WarehouseError};

pub use limits::{ServeLimits, check_cors_origins, harden};

/// The most of a request path (or any other caller-chosen text) an audit row keeps.
pub const AUDIT_TEXT_MAX: usize = 256;

/// The first `max` bytes of `s`, cut at a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How long an API key found in the warehouse is trusted without asking again: a revoked
/// key keeps working for at most this long on a server that used it just before.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// Lookups of keys not found before that one client address may cause per second (twice
/// as many in a burst) before its lookups take turns in one lane.
pub const LOOKUPS_PER_ADDRESS_PER_SECOND: u32 = 20;

/// Who may call what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Predictions (the Manager Agent).
    Agent,
    /// Analyst SQL and reading the model registry.
    Analyst,
    /// Forecasts for the autoscaler.
    Autoscaler,
    /// Everything, including promotions and `/metrics`.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Agent, Role::Analyst, Role::Autoscaler, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Analyst => "analyst",
            Role::Autoscaler => "autoscaler",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}` (agent, analyst, autoscaler, admin)"))
    }
}

/// The authenticated caller, inserted as a request extension before a handler runs
/// (`axum::Extension<Principal>`). Public routes get none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The API key's id, or `jwt:` and the JWT's `sub` claim (never mistaken for a key id).
    pub subject: String,
    pub role: Role,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allow {
    /// No credentials needed.
    Public,
    /// A credential with one of these roles.
    Roles(&'static [Role]),
}

/// One line of the policy: a method, an axum route template, and who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub method: &'static str,
    /// Exactly as registered with axum (`/v2/models/{name}/infer`).
    pub path: &'static str,
    pub allow: Allow,
}

const ADMIN: Allow = Allow::Roles(&[Role::Admin]);
const AGENT: Allow = Allow::Roles(&[Role::Agent, Role::Admin]);
const READER: Allow = Allow::Roles(&[Role::Agent, Role::Analyst, Role::Admin]);
const ANALYST: Allow = Allow::Roles(&[Role::Analyst, Role::Admin]);
const AUTOSCALER: Allow = Allow::Roles(&[Role::Autoscaler, Role::Admin]);

const fn rule(method: &'static str, path: &'static str, allow: Allow) -> Rule {
    Rule {
        method,
        path,
        allow,
    }
}

/// Every route of the HTTP API and who may call it: the one place access is decided.
/// docs/security.md shows this table.
pub const POLICY: &[Rule] = &[
    rule("GET", "/health", Allow::Public),
    rule("GET", "/health/startup", Allow::Public),
    rule("GET", "/health/ready", Allow::Public),
    // the API document holds no data
    rule("GET", "/openapi.json", Allow::Public),
    rule("GET", "/metrics", ADMIN),
    // Open Inference Protocol V2
    rule("GET", "/v2", AGENT),
    rule("GET", "/v2/health/live", AGENT),
    rule("GET", "/v2/health/ready", AGENT),
    rule("GET", "/v2/models/{name}", AGENT),
    rule("GET", "/v2/models/{name}/ready", AGENT),
    rule("GET", "/v2/models/{name}/versions/{version}", AGENT),
    rule("GET", "/v2/models/{name}/versions/{version}/ready", AGENT),
    rule("POST", "/v2/models/{name}/infer", AGENT),
    rule("POST", "/v2/models/{name}/versions/{version}/infer", AGENT),
    // `POST /v1/models/{name}:predict`: axum captures the whole segment
    rule("POST", "/v1/models/{name}", AGENT),
    // the model registry
    rule("GET", "/v1/models", READER),
    rule("GET", "/v1/models/{name}", READER),
    rule("GET", "/v1/models/{name}/aliases/{alias}/history", READER),
    rule("PUT", "/v1/models/{name}/aliases/{alias}", ADMIN),
    rule("POST", "/v1/sql", ANALYST),
    rule("GET", "/v1/autoscale/{service}/forecast", AUTOSCALER),
    rule("POST", "/v1/anomaly/detect", AGENT),
    rule("GET", "/v1/alerts", READER),
    rule("POST", "/v1/alerts/{id}/acknowledge", AGENT),
    rule("POST", "/v1/alerts/{id}/resolve", AGENT),
];

/// The rule of `method` on the route template `path` (HEAD is checked as GET, which
/// axum also answers it with).
pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    POLICY.iter().find(|r| r.method == method && r.path == path)
}

/// `auth.jwt.*`: JWTs are accepted only when all three are set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// PEM public key, Ed25519 (EdDSA) or RSA (RS256).
    pub public_key_file: PathBuf,
    /// The only accepted `iss`.
    pub issuer: String,
    /// The `aud` that must be present.
    pub audience: String,
}

/// What [`Auth::new`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub jwt: Option<JwtConfig>,
    /// Sustained requests per second per credential.
    pub rate_per_second: u32,
    /// Requests one credential may make at once before the rate applies.
    pub burst: u32,
}

impl Default for AuthConfig {
    /// No JWTs; 50 requests per second per credential, bursts of 100.
    fn default() -> Self {
        AuthConfig {
            jwt: None,
            rate_per_second: 50,
            burst: 100,
        }
    }
}

/// Errors of the security layer.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Settings the user must fix (key file, rate limits, origins).
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: Option<String>,
}

/// Authentication, authorisation, rate limits and the audit helper of `ymera serve`.
pub struct Auth {
    warehouse: Warehouse,
    jwt: Option<JwtVerifier>,
    limiter: DefaultKeyedRateLimiter<String>,
    /// SHA-256 of a key found -> who it is, and when it was found.
    key_cache: Mutex<HashMap<String, (Principal, Instant)>>,
    key_cache_ttl: Duration,
    /// Where keys are looked up: a connection pool of its own, so a flood of bad keys
    /// cannot take the connections the audit log and the registry need.
    keys: Warehouse,
    /// Lookups of keys not found before, per client address.
    lookups_by_address: DefaultKeyedRateLimiter<IpAddr>,
    /// An address past its allowance looks keys up in this one lane, in turn.
    throttled_lane: tokio::sync::Semaphore,
    /// Lookups that waited for the lane.
    throttled: AtomicU64,
    /// Bounds the audit writes unauthenticated callers can cause.
    failure_audit: DefaultDirectRateLimiter,
    failures_not_audited: AtomicU64,
    checks: AtomicU64,
}

impl Auth {
    /// Loads the JWT public key (when configured) and sets up the rate limiter.
    pub fn new(config: AuthConfig, warehouse: Warehouse) -> Result<Auth, AuthError> {
        let jwt = config.jwt.as_ref().map(load_jwt).transpose()?;
        let nonzero = |v: u32, key: &str| {
            NonZeroU32::new(v)
                .ok_or_else(|| AuthError::Config(format!("auth.rate_limit.{key} must be above 0")))
        };
        let quota = Quota::per_second(nonzero(config.rate_per_second, "per_second")?)
            .allow_burst(nonzero(config.burst, "burst")?);
        let failure_quota = Quota::per_second(NonZeroU32::new(50).expect("50 > 0"))
            .allow_burst(NonZeroU32::new(200).expect("200 > 0"));
        let lookup_quota = Quota::per_second(
            NonZeroU32::new(LOOKUPS_PER_ADDRESS_PER_SECOND).expect("a constant above 0"),
        )
        .allow_burst(NonZeroU32::new(2 * LOOKUPS_PER_ADDRESS_PER_SECOND).expect("above 0"));
        Ok(Auth {
            keys: warehouse.clone(),
            lookups_by_address: RateLimiter::keyed(lookup_quota),
            throttled_lane: tokio::sync::Semaphore::new(1),
            throttled: AtomicU64::new(0),
            warehouse,
            jwt,
            limiter: RateLimiter::keyed(quota),
            key_cache: Mutex::new(HashMap::new()),
            key_cache_ttl: KEY_CACHE_TTL,
            failure_audit: RateLimiter::direct(failure_quota),
            failures_not_audited: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        })
    }

    /// Changes how long a found API key is cached (default [`KEY_CACHE_TTL`]; zero asks
    /// the warehouse on every request).
    pub fn with_key_cache_ttl(mut self, ttl: Duration) -> Auth {
        self.key_cache_ttl = ttl;
        self
    }

    /// Looks keys up through `keys` (the same warehouse, on a connection pool of its own)
    /// instead of the warehouse the audit log is written to.
    pub fn with_key_lookups(mut self, keys: Warehouse) -> Auth {
        self.keys = keys;
        self
    }

    /// Key lookups that waited for the throttled lane so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// The warehouse holding keys and the audit log.
    pub fn warehouse(&self) -> &Warehouse {
        &self.warehouse
    }

    /// Appends an action of `principal` to the audit log (promotions, SQL queries, ...).
    /// `action` is dotted (`models.promote`), `target` what it acted on, `outcome` an HTTP
    /// status or `ok`; `detail` must not hold secrets. `target` is clipped to
    /// [`AUDIT_TEXT_MAX`] bytes. A failure to write is logged as an error (the action
    /// already happened; the response is not changed).
    pub async fn audit(
        &self,
        principal: &Principal,
        action: &str,
        target: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self
            .audit_checked(principal, action, target, outcome, detail)
            .await
        {
            error!(error = %e, action, target, actor = %principal.subject, "cannot write the audit log");
        }
    }

    /// [`Auth::audit`] that says whether the row was written, for actions that must not
    /// complete unaudited.
    pub async fn audit_checked(
        &self,
        principal: &Principal,
        action: &str,
        target: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) -> Result<(), WarehouseError> {
        let entry = AuditEntry {
            actor: principal.subject.clone(),
            role: principal.role.to_string(),
            action: action.to_string(),
            target: clip(target, AUDIT_TEXT_MAX).to_string(),
            outcome: outcome.to_string(),
            detail: detail.to_string(),
        };
        self.warehouse.audit_append(&entry).await.map(|_| ())
    }

    /// Who `token` is, or why it is refused (a message for the client).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, String> {
        self.authenticate_from(token, IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            .await
    }

    /// [`Auth::authenticate`] for a client at `address`: an address that keeps sending
    /// keys this server has not found before (more than [`LOOKUPS_PER_ADDRESS_PER_SECOND`])
    /// has its lookups wait in one lane, one at a time, for all such addresses together.
    /// A key found before (even if its cache entry expired) never waits there, and no
    /// key is refused by it: a flood is slowed, and costs the warehouse one connection.
    pub async fn authenticate_from(
        &self,
        token: &str,
        address: IpAddr,
    ) -> Result<Principal, String> {
        if token.starts_with(KEY_PREFIX) {
            self.api_key(token, address).await
        } else {
            self.jwt(token)
        }
    }

    async fn api_key(&self, token: &str, address: IpAddr) -> Result<Principal, String> {
        let digest = ymera_warehouse::sha256_hex(token);
        let known = match self.cache().get(&digest) {
            Some((p, at)) if at.elapsed() < self.key_cache_ttl => return Ok(p.clone()),
            Some(_) => true,
            None => false,
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.lookups_by_address.retain_recent();
        }
        let _turn = if !known && self.lookups_by_address.check_key(&address).is_err() {
            metrics::counter!("ymera_http_auth_throttled_total").increment(1);
            self.throttled.fetch_add(1, Ordering::Relaxed);
            Some(
                self.throttled_lane
                    .acquire()
                    .await
                    .map_err(|_| "API keys cannot be checked right now".to_string())?,
            )
        } else {
            None
        };
        let record = match self.keys.find_key(token).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("invalid or revoked API key".into()),
            Err(e) => {
                error!(error = %e, "cannot look up an API key");
                return Err("API keys cannot be checked right now".into());
            }
        };
        let role = Role::from_str(&record.role).map_err(|e| {
            error!(key = %record.id, error = %e, "API key with an unknown role");
            "API key with an unknown role".to_string()
        })?;
        let principal = Principal {
            subject: record.id,
            role,
        };
        let mut cache = self.cache();
        if cache.len() > 1024 {
            let ttl = self.key_cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
        }
        cache.insert(digest, (principal.clone(), Instant::now()));
        Ok(principal)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Principal, Instant)>> {
        // a panic while holding the lock leaves a plain map behind: keep using it
        self.key_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn jwt(&self, token: &str) -> Result<Principal, String> {
        let Some(v) = &self.jwt else {
            return Err("invalid credentials (not an API key, and JWTs are not enabled)".into());
        };
        let data = jsonwebtoken::decode::<Claims>(token, &v.key, &v.validation)
            .map_err(|e| format!("invalid token: {}", jwt_reason(&e)))?;
        let role = data
            .claims
            .role
            .ok_or_else(|| "invalid token: no `role` claim".to_string())?;
        let role = Role::from_str(&role).map_err(|e| format!("invalid token: {e}"))?;
        if data.claims.sub.trim().is_empty() {
            return Err("invalid token: empty `sub` claim".into());
        }
        Ok(Principal {
            subject: format!("jwt:{}", data.claims.sub),
            role,
        })
    }

    /// Takes one request from `principal`'s allowance, or says how long to wait.
    fn rate_limit(&self, principal: &Principal, kind: &str) -> Result<(), Duration> {
        // forget idle credentials now and then so the limiter's map stays small
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
        }
        let key = format!("{kind}:{}", principal.subject);
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Records a refused request in the audit log without delaying the response: the
    /// route template as the target, and at most [`AUDIT_TEXT_MAX`] bytes of the path.
    fn audit_failure(
        &self,
        principal: Option<&Principal>,
        request: &RequestTarget,
        status: StatusCode,
        reason: &str,
    ) {
        metrics::counter!("ymera_http_auth_failures_total", "status" => status.as_u16().to_string())
            .increment(1);
        if self.failure_audit.check().is_err() {
            self.failures_not_audited.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let skipped = self.failures_not_audited.swap(0, Ordering::Relaxed);
        let mut detail = json!({ "reason": clip(reason, AUDIT_TEXT_MAX), "path": request.path });
        if request.path_len > request.path.len() {
            detail["path_bytes"] = json!(request.path_len);
        }
        if skipped > 0 {
            detail["failures_not_audited_before"] = json!(skipped);
        }
        let entry = AuditEntry {
            actor: principal.map_or_else(|| "anonymous".into(), |p| p.subject.clone()),
            role: principal.map(|p| p.role.to_string()).unwrap_or_default(),
            action: "auth.failure".into(),
            target: request.route.clone(),
            outcome: status.as_u16().to_string(),
            detail: detail.to_string(),
        };
        let wh = self.warehouse.clone();
        tokio::spawn(async move {
            if let Err(e) = wh.audit_append(&entry).await {
                warn!(error = %e, target = %entry.target, "cannot audit an authentication failure");
            }
        });
    }
}

fn load_jwt(c: &JwtConfig) -> Result<JwtVerifier, AuthError> {
    let pem = std::fs::read(&c.public_key_file).map_err(|source| AuthError::Io {
        path: c.public_key_file.clone(),
        source,
    })?;
    let shown = c.public_key_file.display();
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY") {
        return Err(AuthError::Config(format!(
            "auth.jwt.public_key_file {shown} holds a private key: give the public key (`openssl pkey -pubout`)"
        )));
    }
    let (key, alg) = if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        (k, Algorithm::EdDSA)
    } else if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        (k, Algorithm::RS256)
    } else {
        return Err(AuthError::Config(format!(
            "auth.jwt.public_key_file {shown}: not a PEM Ed25519 or RSA public key"
        )));
    };
    if c.issuer.is_empty() || c.audience.is_empty() {
        return Err(AuthError::Config(
            "auth.jwt needs public_key_file, issuer and audience together".into(),
        ));
    }
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[&c.issuer]);
    validation.set_audience(&[&c.audience]);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    Ok(JwtVerifier { key, validation })
}

/// A short reason for a refused JWT (no token content).
fn jwt_reason(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "expired",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidAudience => "wrong audience",
        K::MissingRequiredClaim(_) => "a required claim (exp, iss, aud, sub) is missing",
        K::InvalidAlgorithm | K::InvalidAlgorithmName => "algorithm not accepted",
        K::InvalidSignature => "bad signature",
        K::ImmatureSignature => "not valid yet",
        _ => "malformed",
    }
}

/// What an audit row records of a request: `METHOD /route/{template}`, and the path
/// clipped to [`AUDIT_TEXT_MAX`] bytes with its full length.
struct RequestTarget {
    route: String,
    path: String,
    path_len: usize,
}

/// `{"error": message}` with `status`.
pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut resp = error_response(StatusCode::UNAUTHORIZED, message);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ymera\""),
    );
    resp
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Wraps every route of `router` (add all routes first) in the policy check. Paths not
/// matched are answered 404 by the router as usual; a method without a rule on a known
/// route is answered 405 here (even if the router has a handler for it), and a route the
/// policy does not know at all 403 with an error logged.
pub fn protect(router: Router, auth: Arc<Auth>) -> Router {
    router.route_layer(middleware::from_fn_with_state(auth, guard))
}

async fn guard(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = req.method().clone();
    let path = req.uri().path();
    let request = RequestTarget {
        route: format!("{method} {}", template.as_deref().unwrap_or("?")),
        path: clip(path, AUDIT_TEXT_MAX).to_string(),
        path_len: path.len(),
    };
    let target = format!("{method} {}", request.path);
    let Some(rule) = template.as_deref().and_then(|t| rule_for(&method, t)) else {
        // a method the policy has no rule for on a route it knows: 405, whatever the
        // router has (a handler added without its rule stays unreachable)
        let allowed: Vec<&str> = POLICY
            .iter()
            .filter(|r| Some(r.path) == template.as_deref())
            .map(|r| r.method)
            .collect();
        if !allowed.is_empty() {
            let mut resp = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not allowed here (allowed: {})",
                    allowed.join(", ")
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return resp;
        }
        error!(%method, route = ?template, "route without an access rule in auth::POLICY: refused");
        return error_response(StatusCode::FORBIDDEN, "no access rule for this route");
    };
    let roles = match rule.allow {
        Allow::Public => return next.run(req).await,
        Allow::Roles(roles) => roles,
    };
    let Some(token) = bearer(&req) else {
        let reason = "missing `Authorization: Bearer` credentials";
        auth.audit_failure(None, &request, StatusCode::UNAUTHORIZED, reason);
        return unauthorized(reason);
    };
    let kind = if token.starts_with(KEY_PREFIX) {
        "key"
    } else {
        "jwt"
    };
    let address = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let principal = match auth.authenticate_from(token, address).await {
        Ok(p) => p,
        Err(reason) => {
            auth.audit_failure(None, &request, StatusCode::UNAUTHORIZED, &reason);
            return unauthorized(&reason);
        }
    };
    if !roles.contains(&principal.role) {
        let reason = format!("role {} may not {target}", principal.role);
        auth.audit_failure(Some(&principal), &request, StatusCode::FORBIDDEN, &reason);
        return error_response(StatusCode::FORBIDDEN, reason);
    }
    if let Err(wait) = auth.rate_limit(&principal, kind) {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut resp = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            format!("rate limit exceeded for this credential: retry in {secs} s"),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// When the warehouse has no API key at all, creates an admin key, writes it to `path`
/// (created new, mode 0600) and returns the path; the log names the path, never the key.
/// Returns `None` when keys exist. No default secret exists anywhere else.
pub async fn bootstrap_admin_key(
    warehouse: &Warehouse,
    path: &Path,
) -> Result<Option<PathBuf>, AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    if warehouse.has_keys().await? {
        return Ok(None);
    }
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    // create the file first: an existing file (an earlier key) is never overwritten
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                AuthError::Config(format!(
                    "the warehouse has no API keys but {} exists: move it away (or create a key \
                     with `ymera keys create --role admin`)",
                    path.display()
                ))
            } else {
                io(e)
            }
        })?;
    let created = match warehouse.create_key("admin", "bootstrap").await {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
    };
    let (id, key) = created;
    file.write_all(format!("{key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    warn!(
        path = %shown.display(),
        key_id = %id,
        "no API keys existed: created an admin key and wrote it to this file (readable by its owner only)"
    );
    warehouse
        .audit_append(&AuditEntry {
            actor: "serve".into(),
            role: String::new(),
            action: "keys.create".into(),
            target: id,
            outcome: "ok".into(),
            detail: json!({"role": "admin", "name": "bootstrap", "file": shown}).to_string(),
        })
        .await?;
    Ok(Some(shown))
}

#[cfg(test)]
mod tests;
