//! Postern gateway: the authenticated front door to the end-to-end-encrypted tunnel.
//!
//! A request's path through the gateway, in order (see `proxy.rs`, the table of contents):
//! route (which lease) → authenticate (API key) → authorize (lease ACL, scopes, client IP) →
//! upstream (a new inner stream of the per-lease E2EE session, through Pingora's custom L4
//! connector) → response. Each step lives in its own module.

pub mod acl;
pub mod auth;
pub mod problem;
pub mod route;
