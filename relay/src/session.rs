//! One client session on the relay: the control stream (hello, authentication, lease
//! registration) and the data streams the client opens to connect to leases.
//!
//! The relay authenticates the client's identity key by a signature over a fresh nonce and
//! keeps the grants the control plane signed for that key; registering a lease needs a LISTEN
//! grant covering its name, connecting needs a DIAL grant (unless the operator turned that
//! off). Every malformed or oversized frame gets an error frame where possible and a closed
//! stream; nothing a client sends can panic a task or stop other sessions.
//!
//! A session reads the settings snapshot once when it starts (stream and frame limits, hello
//! timeout, trusted keys: what it told the client and how it checked it) and the current one
//! at each registration. Connect streams are handed to `splice`, which depends on this module
//! for nothing: what both need to know about the client is in `client`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use postern_sdk::frame::{read_frame, write_frame, FrameError};
use postern_sdk::grant::{self, unix_now};
use postern_sdk::identity::{auth_message, verify_signature, verify_static_key};
use postern_sdk::lease_name;
use postern_sdk::mux::{self, MuxConfig, MuxHandle, MuxStream, Side};
use postern_sdk::protocol::{
    client_frame, permission, relay_frame, Authenticate, Authenticated, ClientFrame, ErrorCode,
    LeaseGranted, RegisterLease, RelayFrame, ServerHello, MAX_ALPN_BYTES, MAX_ALPN_ENTRIES,
    MAX_GRANTS_PER_SESSION, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_BYTES, MAX_METADATA_VALUE_BYTES,
    PROTOCOL_VERSION,
};
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::Client;
use crate::lease::{LeaseError, NewLease, SessionId};
use crate::splice;
use crate::state::{RelayState, Settings};

/// Runs a session over an accepted WebSocket byte stream until it ends.
pub(crate) async fn run<T>(state: Arc<RelayState>, io: T, peer: std::net::SocketAddr)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = state.next_session_id();
    let settings = state.settings();
    let limits = &settings.limits;
    let (handle, mut inbound) = mux::spawn(
        io,
        Side::Server,
        MuxConfig {
            max_streams: limits.max_streams_per_session,
            max_pending_accepts: limits.max_pending_connects.min(1024),
            read_after_close: true,
            ..MuxConfig::default()
        },
    );
    let hello_timeout = settings.timeouts.hello;
    let control = match tokio::time::timeout(hello_timeout, inbound.accept()).await {
        Ok(Some(stream)) => stream,
        _ => {
            tracing::debug!(%peer, "session closed before a control stream");
            return;
        }
    };
    let mut control = control;
    let client = match tokio::time::timeout(
        hello_timeout,
        authenticate(&settings, &mut control, id),
    )
    .await
    {
        Ok(Ok(client)) => Arc::new(client),
        Ok(Err(e)) => {
            tracing::info!(%peer, session = id, error = %e, "session refused");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, session = id, "session hello timed out");
            return;
        }
    };
    tracing::info!(%peer, session = id, grants = client.grants.len(), "session authenticated");

    let control_task = tokio::spawn(control_loop(
        Arc::clone(&state),
        control,
        Arc::clone(&client),
        handle.clone(),
    ));
    loop {
        tokio::select! {
            stream = inbound.accept() => {
                let Some(stream) = stream else { break };
                let state2 = Arc::clone(&state);
                let client = Arc::clone(&client);
                state.tasks.spawn(async move {
                    splice::handle_connect(state2, client, stream).await;
                });
            }
            _ = state.hard_stop.cancelled() => break,
        }
    }
    control_task.abort();
    state.leases.remove_session(id);
    tracing::info!(%peer, session = id, "session ended");
}

#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("{0:?}: {1}")]
    Refused(ErrorCode, String),
}

async fn refuse(
    settings: &Settings,
    stream: &mut MuxStream,
    code: ErrorCode,
    message: &str,
) -> AuthError {
    let frame = RelayFrame::error(code, message, "");
    let _ = write_frame(stream, &frame, settings.max_frame()).await;
    AuthError::Refused(code, message.into())
}

async fn authenticate(
    settings: &Settings,
    control: &mut MuxStream,
    id: SessionId,
) -> Result<Client, AuthError> {
    let max = settings.max_frame();
    let hello = match read_frame::<ClientFrame, _>(control, max).await {
        Ok(ClientFrame {
            msg: Some(client_frame::Msg::Hello(h)),
        }) => h,
        Ok(_) => {
            return Err(refuse(settings, control, ErrorCode::Malformed, "expected hello").await)
        }
        Err(e) => {
            let _ = refuse(settings, control, ErrorCode::Malformed, &e.to_string()).await;
            return Err(e.into());
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let msg = format!("protocol version {} not supported", hello.protocol_version);
        return Err(refuse(settings, control, ErrorCode::UnsupportedVersion, &msg).await);
    }
    let mut nonce = vec![0u8; 32];
    rand::thread_rng().fill_bytes(&mut nonce);
    let answer = RelayFrame::new(relay_frame::Msg::Hello(ServerHello {
        protocol_version: PROTOCOL_VERSION,
        session_nonce: nonce.clone(),
        max_frame_bytes: max as u32,
    }));
    write_frame(control, &answer, max).await?;
    let auth: Authenticate = match read_frame::<ClientFrame, _>(control, max).await {
        Ok(ClientFrame {
            msg: Some(client_frame::Msg::Authenticate(a)),
        }) => a,
        Ok(_) => {
            return Err(refuse(
                settings,
                control,
                ErrorCode::Malformed,
                "expected authenticate",
            )
            .await)
        }
        Err(e) => {
            let _ = refuse(settings, control, ErrorCode::Malformed, &e.to_string()).await;
            return Err(e.into());
        }
    };
    let identity_key: [u8; 32] = match auth.identity_key.as_slice().try_into() {
        Ok(k) => k,
        Err(_) => {
            return Err(refuse(settings, control, ErrorCode::Malformed, "identity key").await);
        }
    };
    let proven = VerifyingKey::from_bytes(&identity_key)
        .map(|k| verify_signature(&k, &auth_message(&nonce), &auth.signature))
        .unwrap_or(false);
    if !proven {
        return Err(refuse(
            settings,
            control,
            ErrorCode::Unauthenticated,
            "signature over the session nonce does not verify",
        )
        .await);
    }
    if auth.grants.len() > MAX_GRANTS_PER_SESSION {
        return Err(refuse(settings, control, ErrorCode::Limit, "too many grants").await);
    }
    let now = unix_now();
    let mut grants = Vec::with_capacity(auth.grants.len());
    for signed in &auth.grants {
        match grant::verify(signed, &settings.trusted_keys, now) {
            Ok(g) if g.identity_key == identity_key => grants.push(g),
            Ok(_) => {
                let msg = "grant names another identity key";
                return Err(refuse(settings, control, ErrorCode::GrantInvalid, msg).await);
            }
            Err(grant::GrantError::Expired) => {
                let msg = "grant expired";
                return Err(refuse(settings, control, ErrorCode::GrantExpired, msg).await);
            }
            Err(e) => {
                return Err(
                    refuse(settings, control, ErrorCode::GrantInvalid, &e.to_string()).await,
                );
            }
        }
    }
    let ok = RelayFrame::new(relay_frame::Msg::Authenticated(Authenticated {
        grants_accepted: grants.len() as u32,
    }));
    write_frame(control, &ok, max).await?;
    Ok(Client {
        id,
        identity_key,
        grants,
        max_frame: max,
    })
}

async fn control_loop(
    state: Arc<RelayState>,
    mut control: MuxStream,
    client: Arc<Client>,
    handle: MuxHandle,
) {
    let max = client.max_frame;
    loop {
        let frame = match read_frame::<ClientFrame, _>(&mut control, max).await {
            Ok(f) => f,
            Err(FrameError::Closed) => return,
            Err(e) => {
                let reply = RelayFrame::error(ErrorCode::Malformed, e.to_string(), "");
                let _ = write_frame(&mut control, &reply, max).await;
                return;
            }
        };
        let reply = match frame.msg {
            Some(client_frame::Msg::Register(r)) => {
                let name = r.name.clone();
                lease_reply(&name, register(&state, &client, &handle, r))
            }
            Some(client_frame::Msg::Renew(r)) => {
                let result = lease_name::normalize(&r.name)
                    .map_err(|e| LeaseError {
                        code: ErrorCode::InvalidName,
                        message: e.to_string(),
                    })
                    .and_then(|name| {
                        state
                            .leases
                            .renew(&name, client.id, Instant::now())
                            .map(|exp| (name, exp))
                    });
                match result {
                    Ok((name, exp)) => granted(&name, exp),
                    Err(e) => RelayFrame::error(e.code, e.message, r.name),
                }
            }
            Some(client_frame::Msg::Deregister(r)) => {
                let name = lease_name::normalize(&r.name).unwrap_or_default();
                match state.leases.deregister(&name, client.id) {
                    Ok(()) => granted(&name, Instant::now()),
                    Err(e) => RelayFrame::error(e.code, e.message, r.name),
                }
            }
            _ => RelayFrame::error(ErrorCode::Malformed, "unexpected control message", ""),
        };
        if write_frame(&mut control, &reply, max).await.is_err() {
            return;
        }
    }
}

fn lease_reply(name: &str, result: Result<(String, Instant), LeaseError>) -> RelayFrame {
    match result {
        Ok((name, exp)) => granted(&name, exp),
        Err(e) => RelayFrame::error(e.code, e.message, name),
    }
}

fn granted(name: &str, expires_at: Instant) -> RelayFrame {
    let remaining = expires_at.saturating_duration_since(Instant::now());
    let unix_ms = std::time::SystemTime::now()
        .checked_add(remaining)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    RelayFrame::new(relay_frame::Msg::Granted(LeaseGranted {
        name: name.into(),
        expires_at_unix_ms: unix_ms,
    }))
}

fn bad(code: ErrorCode, message: impl Into<String>) -> LeaseError {
    LeaseError {
        code,
        message: message.into(),
    }
}

fn register(
    state: &RelayState,
    client: &Client,
    handle: &MuxHandle,
    req: RegisterLease,
) -> Result<(String, Instant), LeaseError> {
    if state.shutdown.is_cancelled() {
        return Err(bad(ErrorCode::ShuttingDown, "relay is shutting down"));
    }
    let name =
        lease_name::normalize(&req.name).map_err(|e| bad(ErrorCode::InvalidName, e.to_string()))?;
    let grant = client.grant_for(&name, permission::LISTEN).ok_or_else(|| {
        bad(
            ErrorCode::Forbidden,
            format!("no grant to listen on {name:?}"),
        )
    })?;
    let identity = VerifyingKey::from_bytes(&client.identity_key)
        .map_err(|_| bad(ErrorCode::Malformed, "identity key"))?;
    if verify_static_key(
        &identity,
        &name,
        &req.e2ee_static_key,
        &req.static_key_signature,
    )
    .is_none()
    {
        return Err(bad(
            ErrorCode::Malformed,
            "e2ee static key is not signed by the session identity for this lease",
        ));
    }
    if req.alpn.len() > MAX_ALPN_ENTRIES || req.alpn.iter().any(|a| a.len() > MAX_ALPN_BYTES) {
        return Err(bad(ErrorCode::Malformed, "alpn list too long"));
    }
    if req.metadata.len() > MAX_METADATA_ENTRIES
        || req
            .metadata
            .iter()
            .any(|(k, v)| k.len() > MAX_METADATA_KEY_BYTES || v.len() > MAX_METADATA_VALUE_BYTES)
    {
        return Err(bad(ErrorCode::Malformed, "metadata too large"));
    }
    let now = Instant::now();
    let grant_left = grant.expires_at_unix.saturating_sub(unix_now());
    let ttl = (req.ttl_secs > 0).then(|| Duration::from_secs(u64::from(req.ttl_secs)));
    let limits = state.settings.load().lease_limits();
    let expires = state.leases.register(
        NewLease {
            name: name.clone(),
            identity_key: client.identity_key,
            session: client.id,
            owner: handle.clone(),
            e2ee_static_key: req.e2ee_static_key,
            static_key_signature: req.static_key_signature,
            alpn: req.alpn,
            metadata: req.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            ttl,
            grant_expiry: now + Duration::from_secs(grant_left),
        },
        &limits,
        now,
    )?;
    tracing::info!(session = client.id, lease = %name, "lease registered");
    Ok((name, expires))
}
