//! The evidence chain's format — pure functions, no I/O.
//!
//! An entry is the RFC 8785 (JCS) canonical JSON of the event object with two members added:
//! `seq` (1, 2, 3, … without gaps) and `prev` (the SHA-256, lowercase hex, of the entry before
//! it; 64 zeros for the first). An entry's hash is the SHA-256 of its canonical bytes. So:
//! * altering an entry changes its hash, which no longer matches its row, nor the next entry's
//!   `prev`;
//! * removing or reordering entries breaks the `seq` run or a `prev` link;
//! * removing the tail leaves a valid shorter chain, which only a signed checkpoint past the
//!   new end reveals: a checkpoint says "the chain up to `seq` ends in `hash`", signed with
//!   the control plane's Ed25519 key.
//!
//! [`verify`] walks rows in order and names the first that breaks the chain.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::store::{AuditRow, Checkpoint};

/// `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why an event cannot become an entry.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("an audit event must be a JSON object")]
    NotAnObject,
    #[error("canonical JSON: {0}")]
    Canonical(String),
}

/// Makes the row that follows `prev` (`(seq, hash)` of the last entry, `None` for the first).
pub fn seal(prev: Option<(i64, &str)>, event: &serde_json::Value) -> Result<AuditRow, SealError> {
    let mut object = event.as_object().cloned().ok_or(SealError::NotAnObject)?;
    let (seq, prev_hash) = match prev {
        Some((seq, hash)) => (seq + 1, hash.to_owned()),
        None => (1, GENESIS.to_owned()),
    };
    object.insert("seq".into(), seq.into());
    object.insert("prev".into(), prev_hash.into());
    let entry = serde_jcs::to_string(&serde_json::Value::Object(object))
        .map_err(|e| SealError::Canonical(e.to_string()))?;
    let hash = sha256_hex(entry.as_bytes());
    Ok(AuditRow { seq, entry, hash })
}

/// SHA-256, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The bytes a checkpoint signs.
pub fn checkpoint_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("postern-audit-checkpoint\0{seq}\0{hash}").into_bytes()
}

/// A checkpoint for `row`, signed now with `key`.
pub fn sign_checkpoint(key: &SigningKey, row: &AuditRow, now_ms: i64) -> Checkpoint {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let signature = key.sign(&checkpoint_message(row.seq, &row.hash));
    Checkpoint {
        seq: row.seq,
        hash: row.hash.clone(),
        signed_at: now_ms,
        public_key: b64.encode(key.verifying_key().to_bytes()),
        signature: b64.encode(signature.to_bytes()),
    }
}

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The entry stored at `seq` is not what was sealed there (its text or hash changed).
    #[error("entry {seq}: altered (its hash does not match its content)")]
    Altered { seq: i64 },
    /// The entry at `seq` does not follow the one before it: something between was removed,
    /// or entries were reordered.
    #[error(
        "entry {seq}: does not follow entry {expected_prev_seq} (removed or reordered entries)"
    )]
    Unlinked { seq: i64, expected_prev_seq: i64 },
    /// The entry text does not parse or lacks `seq`/`prev`.
    #[error("entry {seq}: malformed ({why})")]
    Malformed { seq: i64, why: String },
    /// A checkpoint names an entry that is missing: the tail was cut.
    #[error("checkpoint at entry {seq}: the log ends at entry {last} (the tail was removed)")]
    Truncated { seq: i64, last: i64 },
    /// A checkpoint disagrees with the entry it names.
    #[error("checkpoint at entry {seq}: the entry's hash differs (altered after it was signed)")]
    CheckpointMismatch { seq: i64 },
    /// A checkpoint's signature does not verify with the trusted key.
    #[error("checkpoint at entry {seq}: bad signature or untrusted key")]
    BadSignature { seq: i64 },
}

/// A running check of rows fed in `seq` order (`ORDER BY seq`).
#[derive(Debug)]
pub struct Walker {
    last: Option<(i64, String)>,
    count: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Self::new()
    }
}

impl Walker {
    pub fn new() -> Self {
        Self {
            last: None,
            count: 0,
        }
    }

    /// Checks the next row.
    pub fn next(&mut self, row: &AuditRow) -> Result<(), ChainBreak> {
        let seq = row.seq;
        let value: serde_json::Value =
            serde_json::from_str(&row.entry).map_err(|e| ChainBreak::Malformed {
                seq,
                why: e.to_string(),
            })?;
        let inner_seq = value.get("seq").and_then(serde_json::Value::as_i64);
        let prev = value.get("prev").and_then(serde_json::Value::as_str);
        let (Some(inner_seq), Some(prev)) = (inner_seq, prev) else {
            return Err(ChainBreak::Malformed {
                seq,
                why: "no seq or prev".into(),
            });
        };
        // The stored text must be exactly what was sealed: canonical, and hashing to the row.
        let canonical = serde_jcs::to_string(&value).map_err(|e| ChainBreak::Malformed {
            seq,
            why: e.to_string(),
        })?;
        if canonical != row.entry || sha256_hex(row.entry.as_bytes()) != row.hash {
            return Err(ChainBreak::Altered { seq });
        }
        let (expected_seq, expected_prev) = match &self.last {
            Some((s, h)) => (s + 1, h.as_str()),
            None => (1, GENESIS),
        };
        if inner_seq != seq || seq != expected_seq || prev != expected_prev {
            return Err(ChainBreak::Unlinked {
                seq,
                expected_prev_seq: expected_seq - 1,
            });
        }
        self.last = Some((seq, row.hash.clone()));
        self.count += 1;
        Ok(())
    }

    /// The last entry checked, `(seq, hash)`.
    pub fn last(&self) -> Option<(i64, &str)> {
        self.last.as_ref().map(|(s, h)| (*s, h.as_str()))
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Checks a checkpoint's signature against `trusted`.
pub fn checkpoint_signed_by(cp: &Checkpoint, trusted: &VerifyingKey) -> bool {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(sig) = b64.decode(&cp.signature) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    trusted
        .verify(&checkpoint_message(cp.seq, &cp.hash), &sig)
        .is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: usize) -> Vec<AuditRow> {
        let mut rows: Vec<AuditRow> = Vec::new();
        for i in 0..n {
            let prev = rows.last().map(|r| (r.seq, r.hash.as_str()));
            rows.push(seal(prev, &json!({"action": "test", "i": i, "z": "é"})).unwrap());
        }
        rows
    }

    fn walk(rows: &[AuditRow]) -> Result<(), ChainBreak> {
        let mut w = Walker::new();
        rows.iter().try_for_each(|r| w.next(r))
    }

    #[test]
    fn entries_are_canonical_and_linked() {
        let rows = chain(3);
        assert_eq!(rows[0].seq, 1);
        assert!(rows[0].entry.contains(GENESIS));
        assert!(rows[1].entry.contains(&rows[0].hash));
        // Canonical: members sorted, no spaces.
        assert!(rows[0]
            .entry
            .starts_with(r#"{"action":"test","i":0,"prev":"#));
        walk(&rows).unwrap();
    }

    #[test]
    fn each_kind_of_tampering_names_its_entry() {
        let rows = chain(5);
        let mut altered = rows.clone();
        altered[2].entry = altered[2].entry.replace("\"i\":2", "\"i\":9");
        assert_eq!(walk(&altered), Err(ChainBreak::Altered { seq: 3 }));

        // Altered and rehashed: the next entry's link breaks.
        let mut rehashed = altered.clone();
        rehashed[2].hash = sha256_hex(rehashed[2].entry.as_bytes());
        assert_eq!(
            walk(&rehashed),
            Err(ChainBreak::Unlinked {
                seq: 4,
                expected_prev_seq: 3
            })
        );

        let mut removed = rows.clone();
        removed.remove(1);
        assert_eq!(
            walk(&removed),
            Err(ChainBreak::Unlinked {
                seq: 3,
                expected_prev_seq: 1
            })
        );

        let mut swapped = rows.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            walk(&swapped),
            Err(ChainBreak::Unlinked { seq: 3, .. })
        ));

        let mut not_canonical = rows.clone();
        not_canonical[0].entry = not_canonical[0].entry.replacen('{', "{ ", 1);
        not_canonical[0].hash = sha256_hex(not_canonical[0].entry.as_bytes());
        assert_eq!(walk(&not_canonical), Err(ChainBreak::Altered { seq: 1 }));
    }

    #[test]
    fn checkpoints_verify_only_with_the_signing_key() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let rows = chain(2);
        let cp = sign_checkpoint(&key, &rows[1], 1);
        assert!(checkpoint_signed_by(&cp, &key.verifying_key()));
        assert!(!checkpoint_signed_by(&cp, &other.verifying_key()));
        let mut moved = cp.clone();
        moved.seq = 1;
        assert!(!checkpoint_signed_by(&moved, &key.verifying_key()));
    }

    #[test]
    fn a_non_object_event_is_refused() {
        assert!(matches!(
            seal(None, &json!([1])),
            Err(SealError::NotAnObject)
        ));
    }
}
