//! Postern gateway: the authenticated front door to the end-to-end-encrypted tunnel.
//!
//! A request's path through the gateway, in order (see [`proxy`], the table of contents):
//! route (which lease) → authenticate (API key) → authorize (lease ACL, scopes, client IP) →
//! upstream (a new inner stream of the per-lease E2EE session, through Pingora's custom L4
//! connector, [`connector`]) → response. Each step lives in its own module.

pub mod acl;
pub mod auth;
pub mod connector;
pub mod downstream;
pub mod header_deadline;
pub mod problem;
pub mod proxy;
pub mod route;
pub mod server;
pub mod state;
pub mod up;

/// Why the gateway could not start.
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
