//! What the relay knows about an authenticated client: its session id, identity key, the
//! grants the control plane signed for that key, and the frame size agreed at hello.
//!
//! `session` makes a [`Client`] once authentication succeeds; `splice` only reads it. This
//! module holds no connection and does no I/O.

use postern_sdk::grant::unix_now;
use postern_sdk::protocol::LeaseGrant;

use crate::lease::SessionId;

/// An authenticated client of one session.
#[derive(Debug)]
pub(crate) struct Client {
    pub id: SessionId,
    pub identity_key: [u8; 32],
    pub grants: Vec<LeaseGrant>,
    /// The largest control frame on this session, as announced in the server hello; fixed for
    /// the session's life even if a reload changes `limits.max_frame_bytes`.
    pub max_frame: usize,
}

impl Client {
    /// The grant that lets this client do `permission` on `lease`, if any.
    pub fn grant_for(&self, lease: &str, permission: u32) -> Option<&LeaseGrant> {
        let now = unix_now();
        self.grants.iter().find(|g| {
            g.expires_at_unix > now && g.check(&self.identity_key, lease, permission).is_ok()
        })
    }
}
