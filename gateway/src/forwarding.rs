//! What the origin receives: the request as the client sent it, minus what is the gateway's
//! alone, plus the fields only the gateway may set.
//!
//! * Hop-by-hop fields go ([`postern_sdk::hop_by_hop`]); a request that is not an upgrade asks
//!   the agent to close the inner stream after it (Pingora 0.9.1 cannot reuse it; saying so
//!   lets Pingora shut it down at once instead of parking it in a pool where the next reuse
//!   check fails on it).
//! * The caller's credentials are for the gateway only: whatever [`crate::auth`] would read
//!   as a key does not go on.
//! * The gateway is the edge, the first hop an origin can trust: forwarding fields a client
//!   sent (`Forwarded`, `X-Forwarded-*`, `X-Real-IP` and the like, also spelled with `_`) are
//!   replaced, never extended, so an origin reading `X-Forwarded-For` gets the address the
//!   gateway saw, not one the client chose. `X-Forwarded-For/-Proto/-Host` and `X-Request-Id`
//!   are set.

use std::net::IpAddr;

use pingora::http::RequestHeader;
use postern_sdk::hop_by_hop;

use crate::auth;
use crate::respond::REQUEST_ID_FIELD;

/// What the gateway knows of the client that the origin is told.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub ip: Option<IpAddr>,
    pub tls: bool,
    pub host: Option<&'a str>,
    pub request_id: &'a str,
}

/// Rewrites the upstream request head as the module docs say.
pub fn rewrite(
    upstream: &mut RequestHeader,
    upgrade: bool,
    client: Client<'_>,
) -> pingora::Result<()> {
    for name in hop_by_hop::fields(&upstream.headers, upgrade) {
        upstream.remove_header(&name);
    }
    if !upgrade {
        upstream.insert_header(http::header::CONNECTION, "close")?;
    }
    for name in auth::credential_fields(&upstream.headers) {
        upstream.remove_header(name);
    }
    let spoofable: Vec<http::HeaderName> = upstream
        .headers
        .keys()
        .filter(|name| {
            is_forwarding_field(name.as_str()) || is_underscore_spelling_of_ours(name.as_str())
        })
        .cloned()
        .collect();
    for name in spoofable {
        upstream.remove_header(&name);
    }
    if let Some(ip) = client.ip {
        upstream.insert_header("x-forwarded-for", ip.to_canonical().to_string())?;
    }
    upstream.insert_header(
        "x-forwarded-proto",
        if client.tls { "https" } else { "http" },
    )?;
    if let Some(host) = client.host {
        upstream.insert_header("x-forwarded-host", host)?;
    }
    upstream.insert_header(REQUEST_ID_FIELD, client.request_id)?;
    Ok(())
}

/// Whether a field tells an origin who the client is, how it connected or under which name;
/// only the gateway sets these (`X-Forwarded-*` and the usual client-address fields).
fn is_forwarding_field(name: &str) -> bool {
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "forwarded"
                | "x-real-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-cluster-client-ip"
                | "x-original-forwarded-for"
        )
}

/// Whether a field name with `_` is, read with `-` for `_`, one the gateway sets or keeps from
/// the origin: a forwarding field, `X-Request-Id` or the `X-API-Key` credential.
///
/// CGI, WSGI and PHP origins see `X-Forwarded-For` and `X_Forwarded_For` as one variable
/// (`HTTP_X_FORWARDED_FOR`), so a client could otherwise choose the address such an origin
/// trusts, or hand it an API key under a name the gateway does not strip. nginx drops every
/// name with `_` for the same reason (`underscores_in_headers off`); the gateway drops only
/// these, so an origin's own `_` fields still arrive.
fn is_underscore_spelling_of_ours(name: &str) -> bool {
    if !name.contains('_') {
        return false;
    }
    let dashed = name.replace('_', "-");
    is_forwarding_field(&dashed) || dashed == REQUEST_ID_FIELD || dashed == auth::API_KEY_FIELD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_fields_are_recognised() {
        for name in [
            "x-forwarded-for",
            "x-forwarded-port",
            "x-forwarded-prefix",
            "forwarded",
        ] {
            assert!(is_forwarding_field(name), "{name}");
        }
        for name in ["true-client-ip", "cf-connecting-ip", "x-real-ip"] {
            assert!(is_forwarding_field(name), "{name}");
        }
        for name in ["x-forwarded", "x-request-id", "authorization", "host"] {
            assert!(!is_forwarding_field(name), "{name}");
        }
    }

    #[test]
    fn underscore_spellings_of_gateway_fields_are_recognised() {
        for name in [
            "x_forwarded_for",
            "x-forwarded_for",
            "x_real_ip",
            "true_client_ip",
            "x_request_id",
            "x_api_key",
            "x-api_key",
        ] {
            assert!(is_underscore_spelling_of_ours(name), "{name}");
        }
        for name in ["x-forwarded-for", "x-api-key", "x_custom_field", "my_token"] {
            assert!(!is_underscore_spelling_of_ours(name), "{name}");
        }
    }
}
