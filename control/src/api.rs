//! The HTTP API at `/api/v1`: an axum router the gateway mounts on its own host names.
//!
//! Every request passes one gate ([`gate`]) before any handler runs: the admin API's rate
//! limit, then the route's [`Action`] from [`ROUTES`] (a route missing there is refused, and
//! a test compares the table with the OpenAPI document), then the admin token, then the
//! workspace in the path (a principal of another workspace gets 404, as if it did not exist),
//! then the role. Handlers receive the [`Principal`] and the resolved workspace and only do
//! their one thing.
//!
//! Answers are JSON; errors are RFC 9457 problem documents with field-level `errors` for
//! invalid input. POSTs honour `Idempotency-Key` (a replay returns the first answer; the same
//! key with a different request is 422). Updates need `If-Match` with the resource's `ETag`
//! (412 on a mismatch, 428 without one).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota};
use postern_config::{Rate, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

use crate::audit;
use crate::chain::sha256_hex;
use crate::roles::{self, Action, Role};
use crate::store::{now_ms, ApiKeyRecord, IdempotentAnswer, ListQuery, StoreError, Workspace};
use crate::tokens::{self, Principal, TokenError};
use crate::ControlPlane;

/// Where the API is mounted.
pub const BASE: &str = "/api/v1";
/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest key-rotation overlap: 30 days.
const MAX_OVERLAP_SECS: i64 = 30 * 24 * 3600;
/// Most leases globs, IP rules or scopes on one key.
const MAX_LIST_ITEMS: usize = 64;

/// Every route: method, path template (as axum matches it), and the action it performs.
pub const ROUTES: &[(&str, &str, Action)] = &[
    ("GET", "/api/v1/whoami", Action::WhoAmI),
    ("POST", "/api/v1/workspaces", Action::WorkspaceCreate),
    ("GET", "/api/v1/workspaces", Action::WorkspaceList),
    ("GET", "/api/v1/workspaces/{ws}", Action::WorkspaceRead),
    ("PATCH", "/api/v1/workspaces/{ws}", Action::WorkspaceUpdate),
    ("POST", "/api/v1/workspaces/{ws}/keys", Action::KeyCreate),
    ("GET", "/api/v1/workspaces/{ws}/keys", Action::KeyList),
    ("GET", "/api/v1/workspaces/{ws}/keys/{id}", Action::KeyRead),
    (
        "PATCH",
        "/api/v1/workspaces/{ws}/keys/{id}",
        Action::KeyUpdate,
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/keys/{id}/rotate",
        Action::KeyRotate,
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/keys/{id}/revoke",
        Action::KeyRevoke,
    ),
    (
        "POST",
        "/api/v1/workspaces/{ws}/tokens",
        Action::TokenCreate,
    ),
    ("GET", "/api/v1/workspaces/{ws}/audit", Action::AuditRead),
];

/// The action of a matched route, if the table has one.
pub fn action_of(method: &str, template: &str) -> Option<Action> {
    ROUTES
        .iter()
        .find(|(m, t, _)| *m == method && *t == template)
        .map(|(_, _, a)| *a)
}

/// The client address the mount passes in (for the admin rate limit and the audit log).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// The admin API's own rate limit, per client address.
#[derive(Debug)]
pub struct AdminLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl AdminLimiter {
    pub fn new(rate: Rate) -> Self {
        let burst = NonZeroU32::new(rate.burst()).unwrap_or(NonZeroU32::MIN);
        let per_one = rate.per / rate.requests.max(1);
        let quota = Quota::with_period(per_one.max(std::time::Duration::from_micros(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
        }
    }
}

/// The router, with its state.
pub fn router(cp: Arc<ControlPlane>) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/workspaces",
            post(create_workspace).get(list_workspaces),
        )
        .route(
            "/api/v1/workspaces/{ws}",
            get(get_workspace).patch(update_workspace),
        )
        .route(
            "/api/v1/workspaces/{ws}/keys",
            post(create_key).get(list_keys),
        )
        .route(
            "/api/v1/workspaces/{ws}/keys/{id}",
            get(get_key).patch(update_key),
        )
        .route("/api/v1/workspaces/{ws}/keys/{id}/rotate", post(rotate_key))
        .route("/api/v1/workspaces/{ws}/keys/{id}/revoke", post(revoke_key))
        .route("/api/v1/workspaces/{ws}/tokens", post(create_token))
        .route("/api/v1/workspaces/{ws}/audit", get(read_audit))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&cp), gate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(cp)
}

// ---------------------------------------------------------------------------------------
// Problems

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer-ish name of the field (`leases[2]`), empty for the body as a whole.
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An API failure, answered as a problem document.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: Option<String>,
    errors: Vec<FieldError>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            status,
            kind,
            title,
            detail: None,
            errors: Vec::new(),
        }
    }
    fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "A valid admin token is required",
        )
    }
    fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The token's role does not allow this",
        )
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "No such resource")
    }
    fn invalid(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-request",
            "The request is not valid",
        );
        e.errors = errors;
        e
    }
    fn conflict(what: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "conflict",
            "The resource already exists",
        )
        .detail(format!("{what} already exists"))
    }
    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "The control plane's store is unavailable",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => ApiError::conflict(what),
            other => {
                tracing::error!(error = %other, "control plane store");
                ApiError::unavailable()
            }
        }
    }
}

impl From<audit::AuditError> for ApiError {
    fn from(e: audit::AuditError) -> Self {
        tracing::error!(error = %e, "audit log refused a mutation's event");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit-unavailable",
            "The change could not be recorded in the audit log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let doc = ProblemDoc {
            kind: format!("https://postern.dev/problems/{}", self.kind),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            detail: self.detail,
            errors: self.errors,
        };
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postern-admin\""),
            );
        }
        resp
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

// ---------------------------------------------------------------------------------------
// The gate

/// What the gate hands a handler.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The workspace in the path, resolved (id or name) and reachable by the principal.
    pub workspace: Option<Workspace>,
}

async fn gate(State(cp): State<Arc<ControlPlane>>, mut req: Request<Body>, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let Some(template) = template else {
        return ApiError::not_found().into_response();
    };
    if template == "/api/v1/openapi.json" {
        return next.run(req).await;
    }
    if let Some(ClientAddr(ip)) = req.extensions().get::<ClientAddr>().copied() {
        if cp.limiter.limiter.check_key(&ip).is_err() {
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many admin requests",
            )
            .into_response();
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return resp;
        }
    }
    let Some(action) = action_of(req.method().as_str(), &template) else {
        // Fail closed: a route nobody gave an action to is served to nobody.
        return ApiError::forbidden()
            .detail("this route has no entry in the action table")
            .into_response();
    };
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal =
        match tokens::authenticate(&*cp.store, authorization, cp.settings.keep_bootstrap).await {
            Ok(p) => p,
            Err(TokenError::Store(e)) => return ApiError::from(e).into_response(),
            Err(_) => return ApiError::unauthorized().into_response(),
        };
    let workspace = if template.starts_with("/api/v1/workspaces/{ws}") {
        let segment = req.uri().path().split('/').nth(4).unwrap_or_default();
        match resolve_workspace(&cp, segment).await {
            Ok(Some(ws)) if principal.reaches(&ws.id) => Some(ws),
            Ok(_) => return ApiError::not_found().into_response(),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let allowed = match action {
        Action::WorkspaceCreate => principal.bootstrap,
        _ => roles::allows(principal.role, action),
    };
    if !allowed {
        return ApiError::forbidden().into_response();
    }
    req.extensions_mut().insert(Caller {
        principal,
        workspace,
    });
    next.run(req).await
}

async fn resolve_workspace(
    cp: &ControlPlane,
    segment: &str,
) -> Result<Option<Workspace>, ApiError> {
    let segment = percent_decode(segment);
    if !is_ident(&segment) {
        return Ok(None);
    }
    if segment.starts_with("ws_") {
        Ok(cp.store.workspace(&segment).await?)
    } else {
        Ok(cp.store.workspace_by_name(&segment).await?)
    }
}

/// Whether `s` can be an id or a name this API made: 1 to 128 characters of
/// `[A-Za-z0-9_-]`. Anything else is looked up nowhere (a NUL byte, say, would be refused by
/// PostgreSQL as an error rather than found absent).
fn is_ident(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Decodes `%XX` escapes (anything else passes through); ids and names are ASCII, so an
/// invalid escape simply finds nothing.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn workspace_of(caller: &Caller) -> Result<&Workspace, ApiError> {
    caller.workspace.as_ref().ok_or_else(ApiError::not_found)
}

// ---------------------------------------------------------------------------------------
// Bodies, idempotency, ETags

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(vec![FieldError {
            field: String::new(),
            message: e.to_string(),
        }])
    })
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn etag(kind: &str, id: &str, version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{kind}-{id}-{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

fn with_etag(mut resp: Response, tag: HeaderValue) -> Response {
    resp.headers_mut().insert(http::header::ETAG, tag);
    resp
}

/// Checks `If-Match` against the current tag: 428 without one, 412 on a mismatch.
fn check_if_match(headers: &HeaderMap, current: &HeaderValue) -> Result<(), ApiError> {
    let Some(given) = headers.get(http::header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "if-match-required",
            "Updates need If-Match with the resource's ETag",
        ));
    };
    let given = given.to_str().unwrap_or_default();
    let matches = given.trim() == "*"
        || given
            .split(',')
            .any(|t| t.trim().trim_start_matches("W/") == current.to_str().unwrap_or_default());
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "etag-mismatch",
            "The resource changed since it was read",
        ))
    }
}

/// Runs a POST under its `Idempotency-Key`, if it has one: a replay with the same request
/// returns the first answer; the same key with a different request is 422. Only successful
/// answers are kept (a failure may be retried with the same key).
async fn idempotent<F, Fut>(
    cp: &ControlPlane,
    caller: &Caller,
    headers: &HeaderMap,
    route: &str,
    body: &Bytes,
    run: F,
) -> Response
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(StatusCode, Value), ApiError>>,
{
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= 255 => Some(k.to_owned()),
        Some(_) => {
            return ApiError::invalid(vec![FieldError {
                field: "Idempotency-Key".into(),
                message: "must be 1 to 255 visible ASCII characters".into(),
            }])
            .into_response()
        }
    };
    let Some(key) = key else {
        return match run().await {
            Ok((status, value)) => json_response(status, &value),
            Err(e) => e.into_response(),
        };
    };
    let principal = &caller.principal.token_id;
    let mut digest_input = Vec::with_capacity(route.len() + body.len() + 1);
    digest_input.extend_from_slice(route.as_bytes());
    digest_input.push(0);
    digest_input.extend_from_slice(body);
    let digest = sha256_hex(&digest_input);
    match cp.store.idempotent_answer(principal, &key).await {
        Err(e) => return ApiError::from(e).into_response(),
        Ok(Some(first)) => return replay(&first, &digest),
        Ok(None) => {}
    }
    match run().await {
        Err(e) => e.into_response(),
        Ok((status, value)) => {
            let answer = IdempotentAnswer {
                request_digest: digest.clone(),
                status: status.as_u16(),
                body: value.to_string(),
            };
            match cp
                .store
                .keep_idempotent_answer(principal, &key, &answer)
                .await
            {
                Ok(true) => json_response(status, &value),
                // A concurrent request with the same key won: answer as it did.
                Ok(false) => match cp.store.idempotent_answer(principal, &key).await {
                    Ok(Some(first)) => replay(&first, &digest),
                    _ => json_response(status, &value),
                },
                Err(e) => ApiError::from(e).into_response(),
            }
        }
    }
}

fn replay(first: &IdempotentAnswer, digest: &str) -> Response {
    if first.request_digest != digest {
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "This Idempotency-Key was used for a different request",
        )
        .into_response();
    }
    let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, first.body.clone()).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    resp
}

// ---------------------------------------------------------------------------------------
// Views and inputs

/// A page of results.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PageOf<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// List parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1 to 1000; 100 by default.
    pub limit: Option<u32>,
    /// Only items with exactly this name.
    pub name: Option<String>,
}

impl ListParams {
    fn query(&self) -> Result<ListQuery, ApiError> {
        use base64::Engine as _;
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        ApiError::invalid(vec![FieldError {
                            field: "cursor".into(),
                            message: "not a cursor this API returned".into(),
                        }])
                    })?,
            ),
        };
        let limit = self.limit.unwrap_or(100);
        if !(1..=crate::store::MAX_PAGE).contains(&limit) {
            return Err(ApiError::invalid(vec![FieldError {
                field: "limit".into(),
                message: format!("must be 1 to {}", crate::store::MAX_PAGE),
            }]));
        }
        let bad = |field: &str| {
            ApiError::invalid(vec![FieldError {
                field: field.into(),
                message: "not a name or id this API makes".into(),
            }])
        };
        if after.as_deref().is_some_and(|a| !is_ident(a)) {
            return Err(bad("cursor"));
        }
        if self
            .name
            .as_deref()
            .is_some_and(|n| n.len() > 128 || n.chars().any(char::is_control))
        {
            return Err(bad("name"));
        }
        Ok(ListQuery {
            after,
            limit,
            name: self.name.clone(),
        })
    }
}

fn cursor(next: Option<String>) -> Option<String> {
    use base64::Engine as _;
    next.map(|id| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id))
}

/// A workspace.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceView {
    pub id: String,
    pub name: String,
    pub display_name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&Workspace> for WorkspaceView {
    fn from(w: &Workspace) -> Self {
        Self {
            id: w.id.clone(),
            name: w.name.clone(),
            display_name: w.display_name.clone(),
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A new workspace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorkspace {
    /// 1 to 63 characters of `[a-z0-9-]`, starting with a letter or digit; unique.
    pub name: String,
    pub display_name: Option<String>,
}

/// A change to a workspace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePatch {
    pub display_name: String,
}

/// A request budget.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateView {
    /// Requests per `per_seconds`, at least 1.
    pub requests: u32,
    /// 1 to 86400.
    pub per_seconds: u32,
    /// Requests that may arrive at once; `requests` when absent.
    pub burst: Option<u32>,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeView {
    Read,
    Write,
}

/// The state of a key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

/// An API key (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub leases: Vec<String>,
    pub scopes: Vec<ScopeView>,
    pub allow_ips: Vec<String>,
    pub deny_ips: Vec<String>,
    pub rate_limit: Option<RateView>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    pub rotated_from: Option<String>,
    pub state: KeyState,
    pub created_at: i64,
    pub updated_at: i64,
}

impl From<&ApiKeyRecord> for ApiKeyView {
    fn from(k: &ApiKeyRecord) -> Self {
        let now = now_ms() / 1000;
        let state = if k.revoked_at.is_some() {
            KeyState::Revoked
        } else if k.expires_unix.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        };
        Self {
            id: k.id.clone(),
            workspace_id: k.workspace_id.clone(),
            name: k.name.clone(),
            leases: k.leases.clone(),
            scopes: k
                .scopes
                .iter()
                .map(|s| match s {
                    Scope::Read => ScopeView::Read,
                    Scope::Write => ScopeView::Write,
                })
                .collect(),
            allow_ips: k.allow_ips.iter().map(ToString::to_string).collect(),
            deny_ips: k.deny_ips.iter().map(ToString::to_string).collect(),
            rate_limit: k.rate_limit.map(|r| RateView {
                requests: r.requests,
                per_seconds: u32::try_from(r.per.as_secs()).unwrap_or(u32::MAX),
                burst: r.burst,
            }),
            expires_at: k.expires_unix,
            revoked_at: k.revoked_at,
            rotated_from: k.rotated_from.clone(),
            state,
            created_at: k.created_at,
            updated_at: k.updated_at,
        }
    }
}

/// A new API key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// 1 to 128 characters.
    pub name: String,
    /// Lease name globs (`*` matches any run of characters), 1 to 64.
    pub leases: Vec<String>,
    /// `["write"]` by default.
    pub scopes: Option<Vec<ScopeView>>,
    /// Unix seconds, in the future.
    pub expires_at: Option<i64>,
    pub allow_ips: Option<Vec<String>>,
    pub deny_ips: Option<Vec<String>>,
    pub rate_limit: Option<RateView>,
}

/// A change to a key; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub leases: Option<Vec<String>>,
    pub scopes: Option<Vec<ScopeView>>,
    pub expires_at: Option<i64>,
    pub allow_ips: Option<Vec<String>>,
    pub deny_ips: Option<Vec<String>>,
    pub rate_limit: Option<RateView>,
}

/// A key and its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// `pst_<id>_<secret>`: store it now; only its hash is kept.
    pub key: String,
    pub api_key: ApiKeyView,
}

/// How to rotate a key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working, 0 to 2592000 seconds (30 days).
    pub overlap_seconds: i64,
}

/// A rotated key: the new one (secret shown once) and the old one with its new expiry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    pub key: String,
    pub api_key: ApiKeyView,
    pub previous: ApiKeyView,
}

/// A new personal access token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// 1 to 128 characters.
    pub name: String,
    pub role: RoleView,
    /// 60 to 31536000 seconds; no expiry when absent.
    pub expires_in_seconds: Option<i64>,
}

/// A workspace role.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleView {
    Viewer,
    Auditor,
    Approver,
    Operator,
    Admin,
}

impl From<RoleView> for Role {
    fn from(r: RoleView) -> Self {
        match r {
            RoleView::Viewer => Role::Viewer,
            RoleView::Auditor => Role::Auditor,
            RoleView::Approver => Role::Approver,
            RoleView::Operator => Role::Operator,
            RoleView::Admin => Role::Admin,
        }
    }
}

/// A token, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// `pat_…`: store it now; only its hash is kept.
    pub token: String,
    pub id: String,
    pub workspace_id: String,
    pub role: String,
    pub expires_at: Option<i64>,
}

/// The caller.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub token_id: String,
    /// Absent for the bootstrap token (every workspace).
    pub workspace_id: Option<String>,
    pub role: String,
    pub bootstrap: bool,
}

/// One entry of the evidence chain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditEntryView {
    pub seq: i64,
    pub hash: String,
    /// The canonical entry, parsed.
    #[schema(value_type = Object)]
    pub entry: Value,
}

/// Audit read parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Entries after this sequence number.
    pub after: Option<i64>,
    /// 1 to 1000; 100 by default.
    pub limit: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// Validation

fn valid_workspace_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

fn check_text(errors: &mut Vec<FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control)
    {
        errors.push(FieldError {
            field: field.into(),
            message: format!("must be 1 to {max} printable characters"),
        });
    }
}

fn check_leases(errors: &mut Vec<FieldError>, leases: &[String]) {
    if leases.is_empty() || leases.len() > MAX_LIST_ITEMS {
        errors.push(FieldError {
            field: "leases".into(),
            message: format!("must list 1 to {MAX_LIST_ITEMS} lease name globs"),
        });
    }
    for (i, glob) in leases.iter().enumerate() {
        let ok = (1..=253).contains(&glob.len())
            && glob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'));
        if !ok {
            errors.push(FieldError {
                field: format!("leases[{i}]"),
                message: "a lease glob is 1 to 253 characters of [A-Za-z0-9-._*]".into(),
            });
        }
    }
}

fn check_ips(errors: &mut Vec<FieldError>, field: &str, ips: &[String]) -> Vec<ipnet::IpNet> {
    if ips.len() > MAX_LIST_ITEMS {
        errors.push(FieldError {
            field: field.into(),
            message: format!("at most {MAX_LIST_ITEMS} networks"),
        });
    }
    let mut nets = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let parsed = ip
            .parse::<ipnet::IpNet>()
            .or_else(|_| ip.parse::<IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net),
            Err(_) => errors.push(FieldError {
                field: format!("{field}[{i}]"),
                message: "not an IP address or CIDR network".into(),
            }),
        }
    }
    nets
}

fn check_rate(errors: &mut Vec<FieldError>, rate: &RateView) -> Rate {
    if rate.requests == 0 || !(1..=86_400).contains(&rate.per_seconds) || rate.burst == Some(0) {
        errors.push(FieldError {
            field: "rate_limit".into(),
            message: "requests and burst at least 1, per_seconds 1 to 86400".into(),
        });
    }
    Rate {
        requests: rate.requests.max(1),
        per: std::time::Duration::from_secs(u64::from(rate.per_seconds.max(1))),
        burst: rate.burst,
    }
}

fn check_scopes(errors: &mut Vec<FieldError>, scopes: &[ScopeView]) -> Vec<Scope> {
    if scopes.is_empty() {
        errors.push(FieldError {
            field: "scopes".into(),
            message: "name at least one scope".into(),
        });
    }
    let mut out: Vec<Scope> = scopes
        .iter()
        .map(|s| match s {
            ScopeView::Read => Scope::Read,
            ScopeView::Write => Scope::Write,
        })
        .collect();
    out.dedup();
    out
}

fn check_expiry(errors: &mut Vec<FieldError>, expires_at: Option<i64>) {
    if let Some(t) = expires_at {
        if t <= now_ms() / 1000 || t > 4_102_444_800 {
            errors.push(FieldError {
                field: "expires_at".into(),
                message: "must be unix seconds in the future (before 2100)".into(),
            });
        }
    }
}

fn random_id(prefix: &str) -> String {
    let bytes: [u8; 10] = rand::random();
    let hex = sha256_hex(&bytes);
    format!("{prefix}{}", &hex[..20])
}

// ---------------------------------------------------------------------------------------
// Handlers

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi_json() -> Response {
    let mut resp = (StatusCode::OK, openapi_document()).into_response();
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The caller's token.
#[utoipa::path(get, path = "/api/v1/whoami", security(("admin_token" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = ProblemDoc, content_type = "application/problem+json")))]
async fn whoami(Extension(caller): Extension<Caller>) -> Response {
    let p = &caller.principal;
    json_response(
        StatusCode::OK,
        &WhoAmI {
            token_id: p.token_id.clone(),
            workspace_id: p.workspace_id.clone(),
            role: p.role.as_str().into(),
            bootstrap: p.bootstrap,
        },
    )
}

/// Creates a workspace (bootstrap token only).
#[utoipa::path(post, path = "/api/v1/workspaces", security(("admin_token" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    request_body = NewWorkspace,
    responses((status = 201, body = WorkspaceView),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn create_workspace(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || async {
        let input: NewWorkspace = parse_body(&body)?;
        let mut errors = Vec::new();
        if !valid_workspace_name(&input.name) {
            errors.push(FieldError {
                field: "name".into(),
                message: "1 to 63 characters of [a-z0-9-], not starting with '-'".into(),
            });
        }
        let display = input
            .display_name
            .clone()
            .unwrap_or_else(|| input.name.clone());
        check_text(&mut errors, "display_name", &display, 128);
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        let now = now_ms();
        let ws = Workspace {
            id: random_id("ws_"),
            name: input.name,
            display_name: display,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        cp.store.create_workspace(&ws).await?;
        cp.audit
            .record(audit::event(
                "workspace.create",
                &caller.principal.token_id,
                Some(&ws.id),
                Some(&ws.id),
                json!({"name": ws.name}),
            ))
            .await?;
        Ok((StatusCode::CREATED, json!(WorkspaceView::from(&ws))))
    };
    idempotent(&cp, &caller, &headers, "POST /workspaces", &body, run).await
}

/// Lists the workspaces the caller reaches.
#[utoipa::path(get, path = "/api/v1/workspaces", security(("admin_token" = [])), params(ListParams),
    responses((status = 200, body = PageOf<WorkspaceView>),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn list_workspaces(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let q = params.query()?;
    let page = match &caller.principal.workspace_id {
        // A scoped principal's list is its own workspace, filtered the same way.
        Some(own) => {
            let ws = cp.store.workspace(own).await?;
            let items: Vec<Workspace> = ws
                .into_iter()
                .filter(|w| q.after.as_deref().is_none_or(|a| w.id.as_str() > a))
                .filter(|w| q.name.as_deref().is_none_or(|n| w.name == n))
                .collect();
            crate::store::Page { items, next: None }
        }
        None => cp.store.list_workspaces(&q).await?,
    };
    Ok(json_response(
        StatusCode::OK,
        &PageOf {
            items: page.items.iter().map(WorkspaceView::from).collect(),
            next_cursor: cursor(page.next),
        },
    ))
}

fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::invalid(vec![FieldError {
        field: "query".into(),
        message: e.body_text(),
    }])
}

/// Reads a workspace (by id or name).
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name")),
    responses((status = 200, body = WorkspaceView, headers(("ETag" = String))),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
async fn get_workspace(Extension(caller): Extension<Caller>) -> Result<Response, ApiError> {
    let ws = workspace_of(&caller)?;
    Ok(with_etag(
        json_response(StatusCode::OK, &WorkspaceView::from(ws)),
        etag("ws", &ws.id, ws.version),
    ))
}

/// Changes a workspace's display name (`If-Match` required).
#[utoipa::path(patch, path = "/api/v1/workspaces/{ws}", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("If-Match" = String, Header, description = "The ETag last read")),
    request_body = WorkspacePatch,
    responses((status = 200, body = WorkspaceView, headers(("ETag" = String))),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 428, body = ProblemDoc, content_type = "application/problem+json")))]
async fn update_workspace(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ws = workspace_of(&caller)?;
    let input: WorkspacePatch = parse_body(&body)?;
    let mut errors = Vec::new();
    check_text(&mut errors, "display_name", &input.display_name, 128);
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    check_if_match(&headers, &etag("ws", &ws.id, ws.version))?;
    let mut next = ws.clone();
    next.display_name = input.display_name;
    next.version += 1;
    next.updated_at = now_ms();
    if !cp.store.update_workspace(&next, ws.version).await? {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "etag-mismatch",
            "The resource changed since it was read",
        ));
    }
    cp.audit
        .record(audit::event(
            "workspace.update",
            &caller.principal.token_id,
            Some(&ws.id),
            Some(&ws.id),
            json!({"display_name": next.display_name}),
        ))
        .await?;
    Ok(with_etag(
        json_response(StatusCode::OK, &WorkspaceView::from(&next)),
        etag("ws", &next.id, next.version),
    ))
}

fn record_from_new(
    ws: &Workspace,
    input: NewKey,
    id: String,
    hash: String,
) -> Result<ApiKeyRecord, ApiError> {
    let mut errors = Vec::new();
    check_text(&mut errors, "name", &input.name, 128);
    check_leases(&mut errors, &input.leases);
    let scopes = check_scopes(
        &mut errors,
        input.scopes.as_deref().unwrap_or(&[ScopeView::Write]),
    );
    check_expiry(&mut errors, input.expires_at);
    let allow_ips = check_ips(
        &mut errors,
        "allow_ips",
        input.allow_ips.as_deref().unwrap_or(&[]),
    );
    let deny_ips = check_ips(
        &mut errors,
        "deny_ips",
        input.deny_ips.as_deref().unwrap_or(&[]),
    );
    let rate_limit = input
        .rate_limit
        .as_ref()
        .map(|r| check_rate(&mut errors, r));
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let now = now_ms();
    Ok(ApiKeyRecord {
        id,
        workspace_id: ws.id.clone(),
        name: input.name,
        hash,
        leases: input.leases,
        scopes,
        allow_ips,
        deny_ips,
        rate_limit,
        expires_unix: input.expires_at,
        revoked_at: None,
        rotated_from: None,
        version: 1,
        created_at: now,
        updated_at: now,
    })
}

async fn mint_key() -> Result<(String, String, String), ApiError> {
    // argon2 takes ~20 ms of CPU: off the async workers.
    tokio::task::spawn_blocking(|| crate::keys::generate(16))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(ApiError::unavailable)
}

/// Creates an API key; the answer holds its secret, shown this once.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/keys", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    request_body = NewKey,
    responses((status = 201, body = CreatedKey),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn create_key(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || async {
        let ws = workspace_of(&caller)?;
        let input: NewKey = parse_body(&body)?;
        let (key, id, hash) = mint_key().await?;
        let record = record_from_new(ws, input, id, hash)?;
        cp.store.insert_api_key(&record).await?;
        cp.audit
            .record(audit::event(
                "key.create",
                &caller.principal.token_id,
                Some(&ws.id),
                Some(&record.id),
                json!({"name": record.name, "leases": record.leases}),
            ))
            .await?;
        cp.keys_changed();
        Ok((
            StatusCode::CREATED,
            json!(CreatedKey {
                key,
                api_key: ApiKeyView::from(&record),
            }),
        ))
    };
    let route = format!(
        "POST /workspaces/{}/keys",
        caller.workspace.as_ref().map_or("", |w| w.id.as_str())
    );
    idempotent(&cp, &caller, &headers, &route, &body, run).await
}

/// Lists a workspace's API keys.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/keys", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"), ListParams),
    responses((status = 200, body = PageOf<ApiKeyView>),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn list_keys(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let ws = workspace_of(&caller)?;
    let Query(params) = params.map_err(query_error)?;
    let page = cp.store.list_api_keys(&ws.id, &params.query()?).await?;
    Ok(json_response(
        StatusCode::OK,
        &PageOf {
            items: page.items.iter().map(ApiKeyView::from).collect(),
            next_cursor: cursor(page.next),
        },
    ))
}

async fn key_of(cp: &ControlPlane, ws: &Workspace, id: &str) -> Result<ApiKeyRecord, ApiError> {
    if !is_ident(id) {
        return Err(ApiError::not_found());
    }
    cp.store
        .api_key(&ws.id, id)
        .await?
        .ok_or_else(ApiError::not_found)
}

/// Reads an API key.
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/keys/{id}", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"), ("id" = String, Path, description = "Key id")),
    responses((status = 200, body = ApiKeyView, headers(("ETag" = String))),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
async fn get_key(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let ws = workspace_of(&caller)?;
    let key = key_of(&cp, ws, &id).await?;
    Ok(with_etag(
        json_response(StatusCode::OK, &ApiKeyView::from(&key)),
        etag("key", &key.id, key.version),
    ))
}

/// Changes an API key (`If-Match` required).
#[utoipa::path(patch, path = "/api/v1/workspaces/{ws}/keys/{id}", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"), ("id" = String, Path, description = "Key id"),
        ("If-Match" = String, Header, description = "The ETag last read")),
    request_body = KeyPatch,
    responses((status = 200, body = ApiKeyView, headers(("ETag" = String))),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 428, body = ProblemDoc, content_type = "application/problem+json")))]
async fn update_key(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ws = workspace_of(&caller)?;
    let key = key_of(&cp, ws, &id).await?;
    let input: KeyPatch = parse_body(&body)?;
    let mut next = key.clone();
    let mut errors = Vec::new();
    if let Some(name) = input.name {
        check_text(&mut errors, "name", &name, 128);
        next.name = name;
    }
    if let Some(leases) = input.leases {
        check_leases(&mut errors, &leases);
        next.leases = leases;
    }
    if let Some(scopes) = &input.scopes {
        next.scopes = check_scopes(&mut errors, scopes);
    }
    if input.expires_at.is_some() {
        check_expiry(&mut errors, input.expires_at);
        next.expires_unix = input.expires_at;
    }
    if let Some(ips) = &input.allow_ips {
        next.allow_ips = check_ips(&mut errors, "allow_ips", ips);
    }
    if let Some(ips) = &input.deny_ips {
        next.deny_ips = check_ips(&mut errors, "deny_ips", ips);
    }
    if let Some(rate) = &input.rate_limit {
        next.rate_limit = Some(check_rate(&mut errors, rate));
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    check_if_match(&headers, &etag("key", &key.id, key.version))?;
    next.version += 1;
    next.updated_at = now_ms();
    if !cp.store.update_api_key(&next, key.version).await? {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "etag-mismatch",
            "The resource changed since it was read",
        ));
    }
    cp.audit
        .record(audit::event(
            "key.update",
            &caller.principal.token_id,
            Some(&ws.id),
            Some(&key.id),
            json!({"name": next.name, "leases": next.leases}),
        ))
        .await?;
    cp.keys_changed();
    Ok(with_etag(
        json_response(StatusCode::OK, &ApiKeyView::from(&next)),
        etag("key", &next.id, next.version),
    ))
}

/// Rotates a key: a new key with the same settings, and the old one expiring after the
/// overlap.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/keys/{id}/rotate", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"), ("id" = String, Path, description = "Key id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    request_body = RotateKey,
    responses((status = 201, body = RotatedKey),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn rotate_key(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || async {
        let ws = workspace_of(&caller)?;
        let old = key_of(&cp, ws, &id).await?;
        let input: RotateKey = parse_body(&body)?;
        if !(0..=MAX_OVERLAP_SECS).contains(&input.overlap_seconds) {
            return Err(ApiError::invalid(vec![FieldError {
                field: "overlap_seconds".into(),
                message: format!("must be 0 to {MAX_OVERLAP_SECS}"),
            }]));
        }
        if old.revoked_at.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "key-revoked",
                "A revoked key cannot be rotated",
            ));
        }
        let (secret, new_id, hash) = mint_key().await?;
        let now = now_ms();
        let mut fresh = old.clone();
        fresh.id = new_id;
        fresh.hash = hash;
        fresh.rotated_from = Some(old.id.clone());
        fresh.version = 1;
        fresh.created_at = now;
        fresh.updated_at = now;
        let mut previous = old.clone();
        let overlap_end = now / 1000 + input.overlap_seconds;
        previous.expires_unix = Some(
            previous
                .expires_unix
                .map_or(overlap_end, |t| t.min(overlap_end)),
        );
        previous.version += 1;
        previous.updated_at = now;
        cp.store.insert_api_key(&fresh).await?;
        if !cp.store.update_api_key(&previous, old.version).await? {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "etag-mismatch",
                "The key changed while it was rotated",
            ));
        }
        cp.audit
            .record(audit::event(
                "key.rotate",
                &caller.principal.token_id,
                Some(&ws.id),
                Some(&old.id),
                json!({"new_key": fresh.id, "old_expires_at": previous.expires_unix}),
            ))
            .await?;
        cp.keys_changed();
        Ok((
            StatusCode::CREATED,
            json!(RotatedKey {
                key: secret,
                api_key: ApiKeyView::from(&fresh),
                previous: ApiKeyView::from(&previous),
            }),
        ))
    };
    let route = format!("POST /keys/{id}/rotate");
    idempotent(&cp, &caller, &headers, &route, &body, run).await
}

/// Revokes a key: every gateway refuses it within the cache bound.
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/keys/{id}/revoke", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"), ("id" = String, Path, description = "Key id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    responses((status = 200, body = ApiKeyView),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 412, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn revoke_key(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || async {
        let ws = workspace_of(&caller)?;
        if !body.is_empty() {
            let _: serde_json::Map<String, Value> = parse_body(&body)?;
        }
        let key = key_of(&cp, ws, &id).await?;
        if key.revoked_at.is_some() {
            return Ok((StatusCode::OK, json!(ApiKeyView::from(&key))));
        }
        let mut next = key.clone();
        next.revoked_at = Some(now_ms());
        next.version += 1;
        next.updated_at = now_ms();
        if !cp.store.update_api_key(&next, key.version).await? {
            return Err(ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "etag-mismatch",
                "The key changed while it was revoked",
            ));
        }
        cp.audit
            .record(audit::event(
                "key.revoke",
                &caller.principal.token_id,
                Some(&ws.id),
                Some(&key.id),
                json!({}),
            ))
            .await?;
        cp.keys_changed();
        Ok((StatusCode::OK, json!(ApiKeyView::from(&next))))
    };
    let route = format!("POST /keys/{id}/revoke");
    idempotent(&cp, &caller, &headers, &route, &body, run).await
}

/// Creates a personal access token in the workspace (admins only).
#[utoipa::path(post, path = "/api/v1/workspaces/{ws}/tokens", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays return the first answer")),
    request_body = NewToken,
    responses((status = 201, body = CreatedToken),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn create_token(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = || async {
        let ws = workspace_of(&caller)?;
        let input: NewToken = parse_body(&body)?;
        let mut errors = Vec::new();
        check_text(&mut errors, "name", &input.name, 128);
        if let Some(secs) = input.expires_in_seconds {
            if !(60..=31_536_000).contains(&secs) {
                errors.push(FieldError {
                    field: "expires_in_seconds".into(),
                    message: "must be 60 to 31536000".into(),
                });
            }
        }
        let role = Role::from(input.role);
        // No one hands out more than they hold.
        if role > caller.principal.role {
            errors.push(FieldError {
                field: "role".into(),
                message: "cannot exceed the caller's own role".into(),
            });
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
        let mut minted = tokens::mint(Some(&ws.id), role, &input.name, false);
        minted.record.expires_unix = input.expires_in_seconds.map(|s| now_ms() / 1000 + s);
        cp.store.insert_admin_token(&minted.record).await?;
        cp.audit
            .record(audit::event(
                "token.create",
                &caller.principal.token_id,
                Some(&ws.id),
                Some(&minted.record.id),
                json!({"role": role.as_str(), "name": input.name}),
            ))
            .await?;
        Ok((
            StatusCode::CREATED,
            json!(CreatedToken {
                token: minted.secret,
                id: minted.record.id.clone(),
                workspace_id: ws.id.clone(),
                role: role.as_str().into(),
                expires_at: minted.record.expires_unix,
            }),
        ))
    };
    let route = format!(
        "POST /workspaces/{}/tokens",
        caller.workspace.as_ref().map_or("", |w| w.id.as_str())
    );
    idempotent(&cp, &caller, &headers, &route, &body, run).await
}

/// Reads the workspace's entries of the evidence chain, in order. (Verifying the whole chain
/// is `postern audit verify`, which needs every workspace's entries.)
#[utoipa::path(get, path = "/api/v1/workspaces/{ws}/audit", security(("admin_token" = [])),
    params(("ws" = String, Path, description = "Workspace id or name"), AuditParams),
    responses((status = 200, body = PageOf<AuditEntryView>),
        (status = 401, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 422, body = ProblemDoc, content_type = "application/problem+json")))]
async fn read_audit(
    State(cp): State<Arc<ControlPlane>>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let ws = workspace_of(&caller)?;
    let Query(params) = params.map_err(query_error)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=crate::store::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(vec![FieldError {
            field: "limit".into(),
            message: format!("must be 1 to {}", crate::store::MAX_PAGE),
        }]));
    }
    // Scans forward in pages until `limit` entries of this workspace are found, bounded by
    // ten pages per request (the cursor resumes where the scan stopped).
    let mut after = params.after.unwrap_or(0).max(0);
    let mut items = Vec::new();
    for _ in 0..10 {
        let rows = cp.store.audit_rows(after, crate::store::MAX_PAGE).await?;
        let Some(last) = rows.last() else {
            after = -1;
            break;
        };
        let last_seq = last.seq;
        for row in rows {
            after = row.seq;
            let entry: Value = serde_json::from_str(&row.entry).unwrap_or(Value::Null);
            if entry.get("workspace").and_then(Value::as_str) == Some(ws.id.as_str()) {
                items.push(AuditEntryView {
                    seq: row.seq,
                    hash: row.hash,
                    entry,
                });
                if items.len() == limit as usize {
                    break;
                }
            }
        }
        if items.len() == limit as usize || after < last_seq {
            break;
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &PageOf {
            items,
            next_cursor: (after > 0).then(|| after.to_string()),
        },
    ))
}

// ---------------------------------------------------------------------------------------
// OpenAPI

struct AdminTokenScheme;

impl utoipa::Modify for AdminTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Postern control plane", version = "1", description = "Workspaces, API keys, admin tokens and the audit chain."),
    paths(openapi_json, whoami, create_workspace, list_workspaces, get_workspace, update_workspace,
        create_key, list_keys, get_key, update_key, rotate_key, revoke_key, create_token, read_audit),
    modifiers(&AdminTokenScheme)
)]
struct ApiDoc;

/// The OpenAPI 3.1 document, as served and as checked in (`control/openapi.json`).
pub fn openapi_document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn operations() -> Vec<(String, String)> {
        let doc: Value = serde_json::from_str(&openapi_document()).unwrap();
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.push((method.to_uppercase(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_route_has_an_action_and_every_action_a_route() {
        let ops = operations();
        for (method, path) in &ops {
            if path == "/api/v1/openapi.json" {
                continue;
            }
            assert!(
                action_of(method, path).is_some(),
                "{method} {path} has no entry in the action table"
            );
        }
        for (method, path, _) in ROUTES {
            assert!(
                ops.iter().any(|(m, p)| m == method && p == path),
                "{method} {path} is in the action table but not in the OpenAPI document"
            );
        }
    }

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let checked_in = include_str!("../openapi.json");
        assert_eq!(
            checked_in.trim(),
            openapi_document().trim(),
            "control/openapi.json is stale: run `cargo run -p postern-cli -- openapi > control/openapi.json`"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc: Value = serde_json::from_str(&openapi_document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    }

    #[test]
    fn percent_decoding_leaves_plain_names_alone() {
        assert_eq!(percent_decode("team-a"), "team-a");
        assert_eq!(percent_decode("team%2Da"), "team-a");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%2"), "end%2");
    }
}
