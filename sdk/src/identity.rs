//! Identity keys: an Ed25519 key that names a lease owner (or a dialer) to the control plane,
//! and the X25519 static key derived from it that answers Noise handshakes.
//!
//! The X25519 key is derived from the Ed25519 seed with HKDF under its own label, so one key
//! file is enough; it is published only together with an Ed25519 signature binding it to a
//! lease name ([`static_key_message`]), which is what a dialer checks against the identity key
//! the control plane granted. Key files are written with mode 0600 and refused when group or
//! others can read them. Secrets are never printed or logged.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::noise::StaticKeypair;

const FILE_TAG: &str = "postern-identity-v1";
const STATIC_KEY_LABEL: &[u8] = b"postern/1 e2ee static key";
const STATIC_KEY_SIG_CONTEXT: &[u8] = b"postern/1 e2ee static key binding\0";
const AUTH_CONTEXT: &[u8] = b"postern/1 authenticate\0";

/// Problems with keys and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a postern identity key file (expected a `{FILE_TAG} <base64>` line)")]
    Format { path: String },
    #[error("{path}: readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("invalid public key: {0}")]
    PublicKey(String),
}

/// An Ed25519 identity and its derived E2EE static key.
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    e2ee: StaticKeypair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public_base64())
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        Self::from_seed(seed)
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        let seed = Zeroizing::new(seed);
        let signing = SigningKey::from_bytes(&seed);
        let mut x = [0u8; 32];
        // 32 bytes is always a valid HKDF-SHA256 output length.
        let _ = Hkdf::<Sha256>::new(None, seed.as_ref()).expand(STATIC_KEY_LABEL, &mut x);
        Self {
            signing,
            e2ee: StaticKeypair::from_secret_bytes(x),
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The Ed25519 signing key itself, for a signer that lives in the same process as this
    /// identity: the control plane signs its audit checkpoints with its own identity (the
    /// messages carry a domain prefix of their own, so they never read as a grant).
    pub fn signing_key(&self) -> SigningKey {
        self.signing.clone()
    }

    pub fn public_base64(&self) -> String {
        B64.encode(self.verifying_key().as_bytes())
    }

    /// The X25519 key pair this identity answers (or starts) Noise handshakes with.
    pub fn e2ee_keypair(&self) -> &StaticKeypair {
        &self.e2ee
    }

    /// Signature binding the E2EE static key to `lease`.
    pub fn sign_static_key(&self, lease: &str) -> Signature {
        self.signing
            .sign(&static_key_message(lease, self.e2ee.public().as_bytes()))
    }

    /// Signature over the relay's session nonce, proving possession of this identity.
    pub fn sign_session_nonce(&self, nonce: &[u8]) -> Signature {
        self.signing.sign(&auth_message(nonce))
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    /// Reads a key file written by [`Identity::save`] (or `postern keygen`).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io_err = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(io_err)?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: shown.clone(),
                    mode,
                });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io_err)?);
        let format = || KeyError::Format {
            path: shown.clone(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(format)?;
        let encoded = line.strip_prefix(FILE_TAG).ok_or_else(format)?.trim();
        let seed = Zeroizing::new(B64.decode(encoded).map_err(|_| format())?);
        let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| format())?;
        Ok(Self::from_seed(seed))
    }

    /// Loads the key file at `path`, or creates it (mode 0600) if there is none; the flag says
    /// whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let id = Self::generate();
        id.save(path)?;
        Ok((id, true))
    }

    /// Writes the key to a new file with mode 0600; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io_err = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(io_err)?;
        let seed = Zeroizing::new(B64.encode(self.signing.to_bytes()));
        let text = Zeroizing::new(format!(
            "# postern identity key; public key {}\n# keep this file secret\n{FILE_TAG} {}\n",
            self.public_base64(),
            seed.as_str()
        ));
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }
}

/// The bytes an identity signs to bind an E2EE static key to a lease name.
pub fn static_key_message(lease: &str, static_key: &[u8; 32]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(STATIC_KEY_SIG_CONTEXT.len() + 2 + lease.len() + 32);
    msg.extend_from_slice(STATIC_KEY_SIG_CONTEXT);
    msg.extend_from_slice(&(lease.len() as u16).to_be_bytes());
    msg.extend_from_slice(lease.as_bytes());
    msg.extend_from_slice(static_key);
    msg
}

/// The bytes an identity signs to authenticate a relay session.
pub fn auth_message(nonce: &[u8]) -> Vec<u8> {
    [AUTH_CONTEXT, nonce].concat()
}

/// Checks that `identity` bound `static_key` to `lease`. This is how a dialer pins the
/// responder: the identity key comes from the control plane, never from the relay.
pub fn verify_static_key(
    identity: &VerifyingKey,
    lease: &str,
    static_key: &[u8],
    signature: &[u8],
) -> Option<x25519_dalek::PublicKey> {
    let key: [u8; 32] = static_key.try_into().ok()?;
    let sig = Signature::from_slice(signature).ok()?;
    identity
        .verify_strict(&static_key_message(lease, &key), &sig)
        .ok()?;
    Some(x25519_dalek::PublicKey::from(key))
}

/// Parses a base64 Ed25519 public key.
pub fn parse_verifying_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| KeyError::PublicKey(e.to_string()))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::PublicKey(format!("{} bytes, expected 32", bytes.len())))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| KeyError::PublicKey(e.to_string()))
}

/// Verifies an Ed25519 signature given as raw bytes.
pub fn verify_signature(key: &VerifyingKey, msg: &[u8], signature: &[u8]) -> bool {
    Signature::from_slice(signature)
        .and_then(|sig| key.verify(msg, &sig))
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let id = Identity::generate();
        id.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.verifying_key(), id.verifying_key());
        assert_eq!(
            back.e2ee_keypair().public().as_bytes(),
            id.e2ee_keypair().public().as_bytes()
        );
        assert!(id.save(&path).is_err(), "must not overwrite");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        Identity::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(KeyError::Permissions { .. })
        ));
    }

    #[test]
    fn static_key_binding_is_per_lease_and_per_identity() {
        let id = Identity::generate();
        let other = Identity::generate();
        let key = id.e2ee_keypair().public();
        let sig = id.sign_static_key("alpha").to_bytes();
        assert!(verify_static_key(&id.verifying_key(), "alpha", key.as_bytes(), &sig).is_some());
        assert!(verify_static_key(&id.verifying_key(), "beta", key.as_bytes(), &sig).is_none());
        assert!(verify_static_key(&other.verifying_key(), "alpha", key.as_bytes(), &sig).is_none());
        assert!(verify_static_key(&id.verifying_key(), "alpha", &[0u8; 31], &sig).is_none());
    }

    #[test]
    fn debug_output_never_contains_the_secret() {
        let id = Identity::generate();
        let secret = B64.encode(id.signing.to_bytes());
        assert!(!format!("{id:?}").contains(&secret));
    }
}
