//! Postern SDK: the client library used by services (to listen on a lease) and by the gateway
//! (to dial one), plus the `postern` CLI.
//!
//! Layers, bottom up: [`websocket`] turns a WebSocket into a byte stream; [`mux`] runs yamux
//! over it; [`frame`] and [`protocol`] are the control messages; [`noise`] and [`record`] are
//! the end-to-end encryption the relay cannot see through; [`listener`] and [`dialer`] are the
//! public API built from them.

pub mod backoff;
pub mod dh;
pub mod dialer;
pub mod e2ee;
pub mod expose;
pub mod frame;
pub mod grant;
pub mod hop_by_hop;
pub mod identity;
pub mod lease_name;
pub mod listener;
pub mod mux;
pub mod noise;
pub mod protocol;
pub mod record;
pub mod relay_client;
pub mod signal;
pub mod tls;
pub mod websocket;

pub use dialer::{DialError, Dialer, DialerConfig, LeaseTarget};
pub use identity::Identity;
pub use listener::{LeaseSpec, Listener, ListenerConfig, ListenerStatus, PeerInfo, PosternStream};
pub use relay_client::{ClientOptions, RelayUrl};
