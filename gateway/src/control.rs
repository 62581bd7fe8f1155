//! The control plane inside the gateway: opening it from `[control]`, feeding the keys it
//! holds into the snapshot, and serving `/api/v1` on the gateway's own host names.
//!
//! * [`open`] opens the store (SQLite or PostgreSQL) and starts the control plane.
//! * [`follow`] keeps the snapshot's keys equal to the store's: at once when this process
//!   changed them (the control plane's change signal), and within `[control]
//!   refresh_interval` when another gateway sharing the store did (the store's key stamp is
//!   polled). A store that cannot be read keeps the keys last read and is retried.
//! * [`serve`] answers one `/api/v1` request through the control plane's router: the body is
//!   read under [`postern_control::api::MAX_BODY_BYTES`] (larger: 413 problem+json), the
//!   answer is written back as is.
//!
//! This module never checks an admin token or a role itself: the control plane's router
//! does. Admin tokens and API keys never meet: the API path is answered before the gateway
//! looks for an API key, and an API key is not an admin token.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use postern_config::ControlConfig;
use postern_control::api::{ClientAddr, MAX_BODY_BYTES};
use postern_control::{ControlPlane, Settings};
use postern_sdk::Identity;
use tower::ServiceExt;

use crate::access_log::Outcome;
use crate::problem::{Problem, Refusal};
use crate::runtime::Runtime;
use crate::GatewayError;

/// Largest answer the gateway relays from the API (a page of 1000 keys fits well).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// Opens the control plane `[control]` names, or `None` when it names no database.
pub async fn open(config: &ControlConfig) -> Result<Option<Arc<ControlPlane>>, GatewayError> {
    let Some(url) = &config.database_url else {
        return Ok(None);
    };
    let key_file = config
        .signing_key_file
        .as_ref()
        .ok_or_else(|| GatewayError::Config("control.signing_key_file is required".into()))?;
    let identity = Identity::load(key_file)
        .map_err(|e| GatewayError::Key(format!("{}: {e}", key_file.display())))?;
    let store = postern_control::store::open(url)
        .await
        .map_err(|e| GatewayError::Config(format!("control.database_url: {e}")))?;
    let mut settings = Settings {
        keep_bootstrap: config.keep_bootstrap_token,
        ..Settings::default()
    };
    settings.admin_rate.requests = config.admin_requests_per_second;
    settings.admin_rate.burst = Some(config.admin_requests_per_second.saturating_mul(2));
    settings.audit.queue = config.audit_queue;
    Ok(Some(ControlPlane::start(
        store,
        identity.signing_key(),
        settings,
    )))
}

/// What [`open_with_keys`] found.
#[derive(Debug, Default)]
pub struct Opened {
    pub control: Option<Arc<ControlPlane>>,
    /// The store's keys now, for [`Runtime::start_with_control`].
    pub keys: Vec<postern_config::ApiKeyConfig>,
}

/// [`open`], then reads the store's keys.
pub async fn open_with_keys(config: &ControlConfig) -> Result<Opened, GatewayError> {
    let Some(control) = open(config).await? else {
        return Ok(Opened::default());
    };
    let store = |e: postern_control::store::StoreError| {
        GatewayError::Config(format!("control plane store: {e}"))
    };
    let keys = control.active_keys().await.map_err(store)?;
    Ok(Opened {
        control: Some(control),
        keys,
    })
}

/// Makes the bootstrap admin token if the store has none (first start) and returns it, to
/// be printed once. Call it once the listeners are bound, so that a start that fails never
/// keeps a token nobody was shown. `None` without a control plane, when the store has one
/// already, or when the bootstrap token is not kept.
pub async fn bootstrap_token(runtime: &Runtime) -> Result<Option<String>, GatewayError> {
    let Some(control) = &runtime.control else {
        return Ok(None);
    };
    if !control.settings.keep_bootstrap {
        return Ok(None);
    }
    control
        .ensure_bootstrap_token()
        .await
        .map_err(|e| GatewayError::Config(format!("control plane store: {e}")))
}

/// Keeps the runtime's store keys current until the process ends.
pub fn follow(runtime: Arc<Runtime>) {
    let Some(control) = runtime.control.clone() else {
        return;
    };
    let interval = runtime.snapshot().config.control.refresh_interval;
    tokio::spawn(async move {
        let mut changes = control.subscribe();
        let mut stamp = control.store.api_keys_stamp().await.ok();
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(interval) => {
                    match control.store.api_keys_stamp().await {
                        Ok(now) if Some(&now) == stamp.as_ref() => continue,
                        Ok(now) => stamp = Some(now),
                        Err(e) => {
                            tracing::warn!(error = %e, "control plane store unreadable; keeping the keys last read");
                            continue;
                        }
                    }
                }
            }
            refresh(&runtime, &control).await;
        }
    });
}

/// Reads the store's keys into a new snapshot now.
pub async fn refresh(runtime: &Runtime, control: &ControlPlane) {
    match control.active_keys().await {
        Ok(keys) => {
            if let Err(e) = runtime.set_store_keys(keys) {
                tracing::error!(error = %e, "the store's keys did not resolve; keeping the last ones");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "control plane store unreadable; keeping the keys last read")
        }
    }
}

/// Answers one `/api/v1` request. `Err` is a refusal the caller answers instead.
pub async fn serve(
    session: &mut Session,
    runtime: &Runtime,
    ip: IpAddr,
) -> Result<pingora::Result<()>, Refusal> {
    let Some(router) = runtime.control_router.clone() else {
        return Err(Refusal::new(Problem::NotFound, Outcome::NotFound));
    };
    let body = match read_body(session).await {
        Ok(body) => body,
        Err(refusal) => return Err(refusal),
    };
    let head = session.req_header();
    let mut builder = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in head.headers.iter() {
        builder = builder.header(name, value);
    }
    let Ok(mut request) = builder.body(axum::body::Body::from(body)) else {
        return Err(Refusal::new(Problem::BadRequest, Outcome::BadRequest));
    };
    request.extensions_mut().insert(ClientAddr(ip));
    let Ok(response) = router.oneshot(request).await;
    let (parts, body) = response.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_ANSWER_BYTES);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            tracing::error!(error = %e, "control plane answer too large or failed");
            return Err(Refusal::new(
                Problem::ServiceUnavailable,
                Outcome::Unavailable,
            ));
        }
    };
    Ok(write_answer(session, parts, bytes).await)
}

async fn read_body(session: &mut Session) -> Result<Bytes, Refusal> {
    let too_large = || Refusal::new(Problem::PayloadTooLarge, Outcome::TooLarge);
    if session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY_BYTES)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(body)),
            Err(_) => return Err(Refusal::new(Problem::BadRequest, Outcome::BadRequest)),
        }
    }
}

async fn write_answer(
    session: &mut Session,
    parts: http::response::Parts,
    body: Bytes,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(parts.status, Some(parts.headers.len() + 1))?;
    for (name, value) in parts.headers.iter() {
        if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header("cache-control", "no-store")?;
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
