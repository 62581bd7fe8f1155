//! A client session with one relay: TCP (+TLS) → WebSocket on `/v1/tunnel` → yamux (client
//! mode), then the control stream: hello, then proof of the identity key with the grants.
//!
//! [`RelaySession`] is what both the listener and the dialer build on. Control requests are
//! answered in order on the one control stream, one at a time, each with a timeout.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::frame::{read_frame, write_frame, FrameError};
use crate::identity::Identity;
use crate::mux::{self, MuxConfig, MuxHandle, MuxInbound, MuxStream, Side};
use crate::protocol::{
    client_frame, relay_frame, Authenticate, ClientFrame, ClientHello, Connect, ConnectCode,
    ConnectResult, DeregisterLease, ErrorCode, LeaseGranted, RegisterLease, RelayFrame, RenewLease,
    SignedGrant, DEFAULT_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use crate::websocket::WsByteStream;

/// Path of the tunnel endpoint on a relay.
pub const TUNNEL_PATH: &str = "/v1/tunnel";

/// Why talking to the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("relay url {0:?}: expected ws://host[:port] or wss://host[:port]")]
    Url(String),
    #[error("connecting to the relay: {0}")]
    Io(#[from] std::io::Error),
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("control frame: {0}")]
    Frame(#[from] FrameError),
    #[error("relay refused ({code:?}): {message}")]
    Relay { code: ErrorCode, message: String },
    #[error("connect refused ({code:?}): {message}")]
    Connect { code: ConnectCode, message: String },
    #[error("the relay's answer for lease {0:?} is not signed by the granted identity key")]
    KeyMismatch(String),
    #[error("unexpected message from the relay")]
    Unexpected,
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("session: {0}")]
    Mux(#[from] mux::MuxError),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(e))
    }
}

/// A relay address parsed from `ws://` / `wss://` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl RelayUrl {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}{TUNNEL_PATH}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}{TUNNEL_PATH}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.ws_url())
    }
}

/// How to reach and talk to a relay.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub mux: MuxConfig,
    pub max_frame_bytes: usize,
    pub client_name: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            mux: MuxConfig::default(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            client_name: format!("postern-sdk/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Largest WebSocket message accepted from a relay.
pub const MAX_WS_MESSAGE: usize = 1024 * 1024;

/// WebSocket limits shared by both ends of the tunnel.
pub fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .write_buffer_size(0)
}

/// Sets TCP_NODELAY and keepalive on a socket: every socket, always.
pub fn tune_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// An authenticated session with one relay.
pub struct RelaySession {
    url: RelayUrl,
    mux: MuxHandle,
    control: Mutex<MuxStream>,
    opts: ClientOptions,
}

impl std::fmt::Debug for RelaySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelaySession")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

fn relay_error(frame: RelayFrame) -> ClientError {
    match frame.msg {
        Some(relay_frame::Msg::Error(e)) => ClientError::Relay {
            code: e.code(),
            message: e.message,
        },
        _ => ClientError::Unexpected,
    }
}

impl RelaySession {
    /// Connects, says hello and authenticates `identity` with `grants`. Returns the session
    /// and the queue of streams the relay opens towards us (incoming dials for our leases).
    pub async fn connect(
        url: &RelayUrl,
        identity: &Identity,
        grants: &[SignedGrant],
        opts: ClientOptions,
    ) -> Result<(Self, MuxInbound), ClientError> {
        let timeout = opts.connect_timeout;
        tokio::time::timeout(timeout, Self::connect_inner(url, identity, grants, opts))
            .await
            .map_err(|_| ClientError::Timeout("connecting to the relay"))?
    }

    async fn connect_inner(
        url: &RelayUrl,
        identity: &Identity,
        grants: &[SignedGrant],
        opts: ClientOptions,
    ) -> Result<(Self, MuxInbound), ClientError> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
        tune_socket(&tcp);
        let ws_conf = Some(ws_config(MAX_WS_MESSAGE));
        let (mux, inbound) = if url.tls {
            let tls = match &opts.tls {
                Some(c) => Arc::clone(c),
                None => crate::tls::client_config(&[])?,
            };
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|_| ClientError::Url(url.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url.ws_url(), stream, ws_conf).await?;
            mux::spawn(WsByteStream::new(ws), Side::Client, opts.mux)
        } else {
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url.ws_url(), tcp, ws_conf).await?;
            mux::spawn(WsByteStream::new(ws), Side::Client, opts.mux)
        };
        let mut control = mux.open().await?;
        let max = opts.max_frame_bytes;
        let hello = ClientFrame::new(client_frame::Msg::Hello(ClientHello {
            protocol_version: PROTOCOL_VERSION,
            client: opts.client_name.clone(),
        }));
        write_frame(&mut control, &hello, max).await?;
        let nonce = match read_frame::<RelayFrame, _>(&mut control, max).await? {
            RelayFrame {
                msg: Some(relay_frame::Msg::Hello(h)),
            } if h.protocol_version == PROTOCOL_VERSION => h.session_nonce,
            other => return Err(relay_error(other)),
        };
        let auth = ClientFrame::new(client_frame::Msg::Authenticate(Authenticate {
            identity_key: identity.verifying_key().to_bytes().to_vec(),
            signature: identity.sign_session_nonce(&nonce).to_bytes().to_vec(),
            grants: grants.to_vec(),
        }));
        write_frame(&mut control, &auth, max).await?;
        match read_frame::<RelayFrame, _>(&mut control, max).await? {
            RelayFrame {
                msg: Some(relay_frame::Msg::Authenticated(_)),
            } => {}
            other => return Err(relay_error(other)),
        }
        Ok((
            Self {
                url: url.clone(),
                mux,
                control: Mutex::new(control),
                opts,
            },
            inbound,
        ))
    }

    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    pub fn is_closed(&self) -> bool {
        self.mux.is_closed()
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        self.mux.closed().await
    }

    async fn request(&self, msg: client_frame::Msg) -> Result<RelayFrame, ClientError> {
        let max = self.opts.max_frame_bytes;
        let exchange = async {
            let mut control = self.control.lock().await;
            write_frame(&mut *control, &ClientFrame::new(msg), max).await?;
            Ok::<_, ClientError>(read_frame::<RelayFrame, _>(&mut *control, max).await?)
        };
        tokio::time::timeout(self.opts.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout("relay control request"))?
    }

    async fn lease_request(&self, msg: client_frame::Msg) -> Result<LeaseGranted, ClientError> {
        match self.request(msg).await? {
            RelayFrame {
                msg: Some(relay_frame::Msg::Granted(g)),
            } => Ok(g),
            other => Err(relay_error(other)),
        }
    }

    /// Registers a lease; the relay checks it against our grants.
    pub async fn register(&self, lease: RegisterLease) -> Result<LeaseGranted, ClientError> {
        self.lease_request(client_frame::Msg::Register(lease)).await
    }

    pub async fn renew(&self, name: &str) -> Result<LeaseGranted, ClientError> {
        self.lease_request(client_frame::Msg::Renew(RenewLease { name: name.into() }))
            .await
    }

    pub async fn deregister(&self, name: &str) -> Result<LeaseGranted, ClientError> {
        self.lease_request(client_frame::Msg::Deregister(DeregisterLease {
            name: name.into(),
        }))
        .await
    }

    /// Opens a stream spliced to the owner of `lease`. Returns the stream and the E2EE static
    /// key the owner registered, verified against `owner_identity` (the control plane's word).
    pub async fn connect_lease(
        &self,
        lease: &str,
        alpn: &str,
        owner_identity: &VerifyingKey,
    ) -> Result<(MuxStream, x25519_dalek::PublicKey), ClientError> {
        let max = self.opts.max_frame_bytes;
        let mut stream = self.mux.open().await?;
        let exchange = async {
            let msg = ClientFrame::new(client_frame::Msg::Connect(Connect {
                lease: lease.into(),
                alpn: alpn.into(),
            }));
            write_frame(&mut stream, &msg, max).await?;
            Ok::<_, ClientError>(read_frame::<RelayFrame, _>(&mut stream, max).await?)
        };
        let answer = tokio::time::timeout(self.opts.request_timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout("connecting to a lease"))??;
        let result: ConnectResult = match answer.msg {
            Some(relay_frame::Msg::ConnectResult(r)) => r,
            _ => return Err(relay_error(answer)),
        };
        if result.code() != ConnectCode::Ok {
            return Err(ClientError::Connect {
                code: result.code(),
                message: result.message,
            });
        }
        let key = crate::identity::verify_static_key(
            owner_identity,
            lease,
            &result.e2ee_static_key,
            &result.static_key_signature,
        )
        .ok_or_else(|| ClientError::KeyMismatch(lease.into()))?;
        Ok((stream, key))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_relay_urls() {
        let u = RelayUrl::parse("ws://127.0.0.1:7000").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 7000));
        assert_eq!(u.to_string(), "ws://127.0.0.1:7000/v1/tunnel");
        let u = RelayUrl::parse("wss://relay.example.com").unwrap();
        assert_eq!((u.tls, u.port), (true, 443));
        let u = RelayUrl::parse("ws://[::1]:9/v1/tunnel").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert!(RelayUrl::parse("http://x").is_err());
        assert!(RelayUrl::parse("ws://:80").is_err());
        assert!(RelayUrl::parse("ws://h:notaport").is_err());
    }
}
