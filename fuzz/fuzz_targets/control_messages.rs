//! Every protobuf control message, grant verification, grant files and lease names.
//!
//! Properties: no decoder panics; nothing built from fuzz bytes verifies as a grant under a
//! key the fuzzer does not hold; a grant minted with the trusted key verifies back to itself
//! (or is refused as expired / oversized) and stops verifying after any bit flip; `normalize`
//! is idempotent, bounded and its output matches itself as a pattern.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postern_sdk::grant::{self, GrantError, MAX_GRANT_BYTES};
use postern_sdk::lease_name::{normalize, pattern_matches};
use postern_sdk::protocol::{
    ClientFrame, ConnectResult, HandshakePayload, LeaseGrant, RegisterLease, RelayFrame,
    SignedGrant, MAX_LEASE_NAME_BYTES,
};
use postern_sdk::Identity;
use prost::Message;

fn control_plane() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::from_seed([7; 32]))
}

fn forged_grant_is_refused(signed: &SignedGrant) {
    let trusted = [control_plane().verifying_key()];
    let err = grant::verify(signed, &trusted, 0).expect_err("fuzz bytes verified as a grant");
    assert!(
        matches!(err, GrantError::BadSignature | GrantError::Malformed),
        "{err:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let _ = ClientFrame::decode(data);
    let _ = RelayFrame::decode(data);
    let _ = HandshakePayload::decode(data);
    let _ = ConnectResult::decode(data);
    let _ = RegisterLease::decode(data);
    if let Ok(signed) = SignedGrant::decode(data) {
        forged_grant_is_refused(&signed);
    }

    // A grant with fuzz-chosen content, properly signed by the trusted key.
    if let Ok(lease_grant) = LeaseGrant::decode(data) {
        let id = control_plane();
        let trusted = [id.verifying_key()];
        let mut signed = grant::mint(id, &lease_grant);
        let now = 1_700_000_000;
        match grant::verify(&signed, &trusted, now) {
            Ok(back) => {
                assert_eq!(back, lease_grant);
                let lease = String::from_utf8_lossy(data);
                let _ = back.check(&lease_grant.identity_key, &lease, lease_grant.permissions);
            }
            Err(GrantError::Expired) => assert!(lease_grant.expires_at_unix <= now),
            Err(GrantError::Malformed) => assert!(signed.grant.len() > MAX_GRANT_BYTES),
            Err(e) => panic!("minted grant refused: {e:?}"),
        }
        let total_bits = (signed.grant.len() + signed.signature.len()) * 8;
        let bit = data
            .iter()
            .fold(0usize, |a, &b| a.wrapping_mul(31).wrapping_add(b as usize));
        let bit = bit % total_bits;
        if bit / 8 < signed.grant.len() {
            signed.grant[bit / 8] ^= 1 << (bit % 8);
        } else {
            signed.signature[bit / 8 - signed.grant.len()] ^= 1 << (bit % 8);
        }
        forged_grant_is_refused(&signed);
    }

    let text = String::from_utf8_lossy(data);
    if let Ok(grants) = grant::parse_file_text(&text) {
        grants.iter().for_each(forged_grant_is_refused);
    }

    let (pattern, name) = text.split_once('\n').unwrap_or((&text, &text));
    let _ = pattern_matches(pattern, name);
    assert!(pattern_matches("*", name));
    for s in [pattern, name] {
        if let Ok(n) = normalize(s) {
            assert!(!n.is_empty() && n.len() <= MAX_LEASE_NAME_BYTES);
            assert_eq!(
                normalize(&n).as_ref(),
                Ok(&n),
                "normalize is not idempotent"
            );
            assert!(pattern_matches(&n, &n), "{n:?} does not match itself");
        }
    }
});
