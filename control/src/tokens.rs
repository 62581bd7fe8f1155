//! Admin credentials: the bootstrap token and personal access tokens (PATs).
//!
//! A token is `pat_<43 base64url characters>` (256 random bits). Only its SHA-256 is stored:
//! a token has the entropy of a key, so a fast hash is enough (there is nothing to guess), and
//! a lookup by digest is one indexed query. The digest comparison happens in the database's
//! unique index, on a digest the caller cannot choose, so it leaks nothing about a stored
//! token. A token is shown once, when it is made.
//!
//! Admin tokens never mix with API keys: an API key (`pst_…`) is not a token here, and a token
//! is never accepted by the gateway's data path.
//!
//! This module owns minting and resolving tokens to a [`Principal`]; it never decides what a
//! principal may do (that is [`crate::roles`]).

use base64::Engine as _;
use rand::RngCore;

use crate::chain::sha256_hex;
use crate::roles::Role;
use crate::store::{now_ms, AdminToken, Store, StoreError};

/// What every admin token starts with.
pub const PREFIX: &str = "pat_";

/// Who is calling the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id: what the audit log names (never the token).
    pub token_id: String,
    /// `None`: every workspace (the bootstrap token).
    pub workspace_id: Option<String>,
    pub role: Role,
    pub bootstrap: bool,
}

impl Principal {
    /// Whether this principal may act in `workspace` at all (its role decides the rest).
    pub fn reaches(&self, workspace: &str) -> bool {
        self.workspace_id.as_deref().is_none_or(|w| w == workspace)
    }
}

/// A new token (`secret`, shown once) and the record that stores its digest.
#[derive(Debug)]
pub struct NewToken {
    pub secret: String,
    pub record: AdminToken,
}

/// Mints a token for `role` in `workspace` (`None` with `bootstrap` only).
pub fn mint(workspace: Option<&str>, role: Role, name: &str, bootstrap: bool) -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let mut id_bytes = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut id_bytes);
    let id = format!("tok_{}", crate::chain::sha256_hex(&id_bytes).split_at(16).0);
    NewToken {
        record: AdminToken {
            id,
            workspace_id: workspace.map(str::to_owned),
            role: role.as_str().to_owned(),
            name: name.to_owned(),
            digest: sha256_hex(secret.as_bytes()),
            bootstrap,
            created_at: now_ms(),
            expires_unix: None,
            revoked_at: None,
        },
        secret,
    }
}

/// Why a presented token was not accepted. Every variant answers 401 the same way: the
/// caller is not told which check failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("no admin token")]
    Missing,
    #[error("invalid admin token")]
    Invalid,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves an `Authorization: Bearer pat_…` value. `keep_bootstrap` false refuses the
/// bootstrap token (once an identity provider is configured, unless explicitly kept).
pub async fn authenticate(
    store: &dyn Store,
    authorization: Option<&str>,
    keep_bootstrap: bool,
) -> Result<Principal, TokenError> {
    let value = authorization.ok_or(TokenError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(TokenError::Invalid)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !token.starts_with(PREFIX) || token.len() > 128 {
        return Err(TokenError::Invalid);
    }
    let record = store
        .admin_token_by_digest(&sha256_hex(token.as_bytes()))
        .await?
        .ok_or(TokenError::Invalid)?;
    let now_unix = now_ms() / 1000;
    if record.revoked_at.is_some()
        || record.expires_unix.is_some_and(|t| t <= now_unix)
        || (record.bootstrap && !keep_bootstrap)
    {
        return Err(TokenError::Invalid);
    }
    let role = Role::parse(&record.role).ok_or(TokenError::Invalid)?;
    Ok(Principal {
        token_id: record.id,
        workspace_id: record.workspace_id,
        role,
        bootstrap: record.bootstrap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_long_random_and_stored_as_its_digest() {
        let a = mint(Some("ws"), Role::Viewer, "ci", false);
        let b = mint(Some("ws"), Role::Viewer, "ci", false);
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(PREFIX) && a.secret.len() == PREFIX.len() + 43);
        assert_eq!(a.record.digest, sha256_hex(a.secret.as_bytes()));
        assert!(!a.record.digest.contains(&a.secret));
    }

    #[test]
    fn a_scoped_principal_reaches_its_workspace_only() {
        let p = Principal {
            token_id: "t".into(),
            workspace_id: Some("a".into()),
            role: Role::Admin,
            bootstrap: false,
        };
        assert!(p.reaches("a") && !p.reaches("b"));
    }
}
