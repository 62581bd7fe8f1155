//! Lease grants: the control plane's signed statement that an identity key may listen on (or
//! dial) the leases matching a pattern in a workspace, until an expiry.
//!
//! The relay verifies grants with the control plane's public keys alone. [`mint`] is the
//! control-plane side, used by `postern grant mint` for development and by tests.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::VerifyingKey;
use prost::Message;

use crate::identity::{verify_signature, Identity};
use crate::lease_name::pattern_matches;
use crate::protocol::{LeaseGrant, SignedGrant};

const GRANT_CONTEXT: &[u8] = b"postern/1 grant\0";
/// Largest encoded grant accepted.
pub const MAX_GRANT_BYTES: usize = 1024;

/// Why a grant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("grant is malformed")]
    Malformed,
    #[error("grant signature is not from a trusted control-plane key")]
    BadSignature,
    #[error("grant expired")]
    Expired,
    #[error("grant is for another identity key")]
    WrongIdentity,
    #[error("grant does not cover lease {0:?}")]
    NotCovered(String),
    #[error("grant does not permit this operation")]
    NotPermitted,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn signed_bytes(grant: &[u8]) -> Vec<u8> {
    [GRANT_CONTEXT, grant].concat()
}

/// Signs a grant with the control plane's key.
pub fn mint(control_plane: &Identity, grant: &LeaseGrant) -> SignedGrant {
    let bytes = grant.encode_to_vec();
    let signature = control_plane
        .sign(&signed_bytes(&bytes))
        .to_bytes()
        .to_vec();
    SignedGrant {
        grant: bytes,
        signature,
    }
}

/// Checks signature and expiry; returns the decoded grant.
pub fn verify(
    signed: &SignedGrant,
    trusted: &[VerifyingKey],
    now_unix: u64,
) -> Result<LeaseGrant, GrantError> {
    if signed.grant.len() > MAX_GRANT_BYTES {
        return Err(GrantError::Malformed);
    }
    let msg = signed_bytes(&signed.grant);
    if !trusted
        .iter()
        .any(|k| verify_signature(k, &msg, &signed.signature))
    {
        return Err(GrantError::BadSignature);
    }
    let grant = LeaseGrant::decode(signed.grant.as_slice()).map_err(|_| GrantError::Malformed)?;
    if grant.expires_at_unix <= now_unix {
        return Err(GrantError::Expired);
    }
    Ok(grant)
}

impl LeaseGrant {
    /// Whether this grant lets `identity` do `permission` on `lease`.
    pub fn check(&self, identity: &[u8], lease: &str, permission: u32) -> Result<(), GrantError> {
        if self.identity_key != identity {
            return Err(GrantError::WrongIdentity);
        }
        if self.permissions & permission == 0 {
            return Err(GrantError::NotPermitted);
        }
        if !pattern_matches(&self.lease_pattern, lease) {
            return Err(GrantError::NotCovered(lease.to_owned()));
        }
        Ok(())
    }
}

/// Encodes grants for a grant file: one base64 line each.
pub fn to_file_text(grants: &[SignedGrant]) -> String {
    let mut out = String::from("# postern lease grants (base64 SignedGrant, one per line)\n");
    for g in grants {
        out.push_str(&B64.encode(g.encode_to_vec()));
        out.push('\n');
    }
    out
}

/// Reads a grant file.
pub fn load_file(path: &Path) -> Result<Vec<SignedGrant>, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    parse_file_text(&text).map_err(|line| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}:{line}: not a base64 postern grant", path.display()),
        )
    })
}

/// Parses grant file text; on error returns the 1-based line number.
pub fn parse_file_text(text: &str) -> Result<Vec<SignedGrant>, usize> {
    let mut grants = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = B64.decode(line).map_err(|_| i + 1)?;
        grants.push(SignedGrant::decode(bytes.as_slice()).map_err(|_| i + 1)?);
    }
    Ok(grants)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::protocol::permission;

    fn grant_for(id: &Identity, pattern: &str, expires: u64) -> LeaseGrant {
        LeaseGrant {
            workspace: "ws".into(),
            lease_pattern: pattern.into(),
            identity_key: id.verifying_key().to_bytes().to_vec(),
            issued_at_unix: 0,
            expires_at_unix: expires,
            permissions: permission::LISTEN,
        }
    }

    #[test]
    fn minted_grant_verifies_and_covers_its_pattern() {
        let cp = Identity::generate();
        let owner = Identity::generate();
        let signed = mint(&cp, &grant_for(&owner, "svc-*", unix_now() + 60));
        let grant = verify(&signed, &[cp.verifying_key()], unix_now()).unwrap();
        let me = owner.verifying_key().to_bytes();
        assert!(grant.check(&me, "svc-a", permission::LISTEN).is_ok());
        assert_eq!(
            grant.check(&me, "other", permission::LISTEN),
            Err(GrantError::NotCovered("other".into()))
        );
        assert_eq!(
            grant.check(&me, "svc-a", permission::DIAL),
            Err(GrantError::NotPermitted)
        );
        let stranger = Identity::generate().verifying_key().to_bytes();
        assert_eq!(
            grant.check(&stranger, "svc-a", permission::LISTEN),
            Err(GrantError::WrongIdentity)
        );
    }

    #[test]
    fn forged_and_expired_grants_are_refused() {
        let cp = Identity::generate();
        let forger = Identity::generate();
        let owner = Identity::generate();
        let forged = mint(&forger, &grant_for(&owner, "*", unix_now() + 60));
        assert_eq!(
            verify(&forged, &[cp.verifying_key()], unix_now()),
            Err(GrantError::BadSignature)
        );
        let expired = mint(&cp, &grant_for(&owner, "*", unix_now() - 1));
        assert_eq!(
            verify(&expired, &[cp.verifying_key()], unix_now()),
            Err(GrantError::Expired)
        );
        let mut tampered = mint(&cp, &grant_for(&owner, "a", unix_now() + 60));
        let last = tampered.grant.len() - 1;
        tampered.grant[last] ^= 1;
        assert!(verify(&tampered, &[cp.verifying_key()], unix_now()).is_err());
    }

    #[test]
    fn grant_file_round_trips() {
        let cp = Identity::generate();
        let owner = Identity::generate();
        let g = mint(&cp, &grant_for(&owner, "x", 99));
        let text = to_file_text(&[g.clone(), g.clone()]);
        assert_eq!(parse_file_text(&text).unwrap(), vec![g.clone(), g]);
        assert_eq!(parse_file_text("# c\n!!!\n"), Err(2));
    }
}
