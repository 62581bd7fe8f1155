//! Postern gateway: the authenticated front door to the end-to-end-encrypted tunnel.
//!
//! [`proxy`] is the table of contents of a request: its phases call one policy module each, in
//! order — [`request`] (head checks), [`acl`] (client IP), [`endpoints`] (the gateway's own),
//! [`auth`] (API key), [`route`] (which lease), [`acl`] (the key's rules), [`ratelimit`],
//! [`breaker`], [`concurrency`] — then [`connector`] opens an inner stream of the lease's E2EE
//! session, [`forwarding`] writes the head the origin sees, and [`access_log`] and
//! [`metrics`] record the outcome.
//!
//! State is split in two: the [`snapshot`] (everything resolved from the config file, swapped
//! whole on reload, loaded once per request) and the [`runtime`] (dialer, connection slots,
//! key verifier, limiters, breakers, metrics: what survives reloads). [`reload`] watches the
//! file; [`server`] binds the listeners and [`downstream`] serves each connection up to the
//! first request.

pub mod access_log;
pub mod acl;
pub mod auth;
pub mod breaker;
pub mod client_ip;
pub mod concurrency;
pub mod connections;
pub mod connector;
pub mod control;
pub mod downstream;
pub mod endpoints;
pub mod forwarding;
pub mod header_deadline;
pub mod log_sink;
pub mod metrics;
pub mod problem;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod request;
pub mod respond;
pub mod route;
pub mod runtime;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;

/// Why the gateway could not start (or a reload could not be applied).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("config: {0}")]
    Config(String),
    #[error("key: {0}")]
    Key(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
