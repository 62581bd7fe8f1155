//! The API key format, `pst_<id>_<secret>`, and minting new keys.
//!
//! `id` is 8–32 characters of `[a-z0-9]` and names the record (it is an identifier, not a
//! secret); `secret` is 32–64 characters of `[A-Za-z0-9]`. Only an argon2id hash of the whole
//! key is ever stored. The gateway parses presented keys with these same bounds
//! (`postern_gateway::auth`); this module owns the format so that the control plane, which
//! mints keys, and the gateway, which checks them, cannot disagree.

use std::ops::RangeInclusive;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use rand::Rng;

/// What every key starts with.
pub const PREFIX: &str = "pst_";
/// Lengths an id may have.
pub const ID_CHARS: RangeInclusive<usize> = 8..=32;
/// Lengths a secret may have.
pub const SECRET_CHARS: RangeInclusive<usize> = 32..=64;
/// Length of secrets made by [`generate`]: about 238 bits.
const GENERATED_SECRET_CHARS: usize = 40;

/// Makes a new key; returns `(key, id, argon2id PHC hash)`. The key is shown once, then only
/// the id and the hash are stored. `id_len` is clamped to [`ID_CHARS`].
pub fn generate(id_len: usize) -> Result<(String, String, String), argon2::password_hash::Error> {
    const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let id: String = (0..id_len.clamp(*ID_CHARS.start(), *ID_CHARS.end()))
        .map(|_| char::from(ID_ALPHABET[rng.gen_range(0..ID_ALPHABET.len())]))
        .collect();
    let secret: String = (&mut rng)
        .sample_iter(rand::distributions::Alphanumeric)
        .take(GENERATED_SECRET_CHARS)
        .map(char::from)
        .collect();
    let key = format!("{PREFIX}{id}_{secret}");
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let phc = Argon2::default()
        .hash_password(key.as_bytes(), &salt)?
        .to_string();
    Ok((key, id, phc))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use argon2::password_hash::PasswordHash;
    use argon2::PasswordVerifier;

    #[test]
    fn a_minted_key_matches_its_hash_and_the_format() {
        let (key, id, phc) = generate(16).unwrap();
        assert_eq!(id.len(), 16);
        let secret = key.strip_prefix(PREFIX).unwrap().strip_prefix(&id).unwrap();
        assert_eq!(secret.len(), GENERATED_SECRET_CHARS + 1);
        let hash = PasswordHash::new(&phc).unwrap();
        assert!(Argon2::default()
            .verify_password(key.as_bytes(), &hash)
            .is_ok());
        assert_eq!(generate(1).unwrap().1.len(), *ID_CHARS.start());
    }
}
