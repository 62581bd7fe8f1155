//! The gateway's certificates: loaded and checked here, with errors naming the file, before
//! anything reaches Pingora (whose `TlsSettings::build` panics on bad files), and chosen per
//! handshake by SNI from the running set.
//!
//! [`CertResolver`] is what Pingora's rustls acceptor asks for a certificate on every
//! handshake; it reads the set the last (re)load stored, so a rotated certificate is served to
//! new handshakes at once while open connections keep the one they were made with. A name
//! matches exactly, or through a `*.` wildcard one label deep; anything else gets the default
//! certificate: the entry without `server_names` if there is one (the config allows at most
//! one), else the first configured.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use postern_config::TlsCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::GatewayError;

/// Every configured certificate, by SNI name.
#[derive(Debug)]
pub struct CertSet {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertSet {
    /// Loads and checks every certificate and key file.
    pub fn load(certs: &[TlsCert]) -> Result<Self, GatewayError> {
        let mut by_name = HashMap::new();
        let (mut first, mut nameless) = (None, None);
        for tls in certs {
            let key = load_cert(tls)?;
            for name in &tls.server_names {
                by_name.insert(name.to_ascii_lowercase(), Arc::clone(&key));
            }
            if tls.server_names.is_empty() {
                nameless.get_or_insert(Arc::clone(&key));
            }
            first.get_or_insert(key);
        }
        let default = nameless.or(first);
        let default =
            default.ok_or_else(|| GatewayError::Tls("no certificate configured".into()))?;
        Ok(Self { by_name, default })
    }

    /// The certificate for `sni`.
    pub fn choose(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.by_name.get(&format!("*.{parent}"))
        };
        Arc::clone(
            self.by_name
                .get(&name)
                .or_else(wildcard)
                .unwrap_or(&self.default),
        )
    }
}

fn load_cert(tls: &TlsCert) -> Result<Arc<CertifiedKey>, GatewayError> {
    let err = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        GatewayError::Tls(format!("{}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err(&tls.cert, &e))?;
    if certs.is_empty() {
        return Err(err(&tls.cert, &"no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| err(&tls.key, &e))?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| err(&tls.key, &e))?;
    let certified = CertifiedKey::new(certs, signer);
    // The key must belong to the certificate: a mismatch would fail every handshake.
    certified.keys_match().map_err(|e| {
        err(
            &tls.key,
            &format!("does not match {}: {e}", tls.cert.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

/// Picks a certificate by SNI from the set in force.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertSet>,
}

impl CertResolver {
    pub fn new(certs: Arc<CertSet>) -> Self {
        Self {
            current: ArcSwap::new(certs),
        }
    }

    /// New handshakes get `certs` from now on.
    pub fn store(&self, certs: Arc<CertSet>) {
        self.current.store(certs);
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().choose(hello.server_name()))
    }
}
