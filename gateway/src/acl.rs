//! Authorization: may this verified key make this request to this lease from this address?
//!
//! Runs after `auth` has resolved the key. The order of the checks is the policy:
//! 1. the global IP policy: a global deny wins over everything, then a non-empty global allow
//!    list must contain the client;
//! 2. the key's own IP lists, in the same way (deny wins, a non-empty allow must match);
//! 3. the key's lease globs (`*` matches any run of characters);
//! 4. the key's scopes: `read` permits `GET`, `HEAD` and `OPTIONS`; `write` permits every method
//!    and protocol upgrades (a WebSocket opened with a `GET` carries data both ways). A request
//!    that asks for another method in any spelling an origin framework honours — the
//!    `X-HTTP-Method-Override`, `X-HTTP-Method` or `X-Method-Override` field (any case, `_` for
//!    `-`), or a `_method` query parameter — is a write unless every method it names is a read:
//!    Rails, Express (`method-override`), Laravel and Symfony origins turn such a `GET` or
//!    `POST` into a `DELETE`.
//!
//! Every refusal here is a 403; this module never decides 401 or 404. IPv4-mapped IPv6
//! addresses (`::ffff:a.b.c.d`, from dual-stack listeners) are compared as IPv4.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use ipnet::IpNet;
use postern_config::{IpPolicy, Scope};
use postern_sdk::lease_name::pattern_matches;

use crate::auth::ApiKey;

/// Which rule refused the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("the key is not allowed for this lease")]
    Lease,
    #[error("the key's scopes do not allow this method")]
    Scope,
    #[error("the client address is not allowed")]
    Ip,
}

/// What a request does to a lease, as far as scopes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `GET`, `HEAD` or `OPTIONS`, not upgraded.
    Read,
    /// Any other method, or a protocol upgrade.
    Write,
}

impl Access {
    pub fn of(method: &Method, upgrade: bool) -> Self {
        if is_read(method) && !upgrade {
            Access::Read
        } else {
            Access::Write
        }
    }

    /// The access a whole request asks for: its method, upgrade, and any method override it
    /// carries (module docs).
    pub fn of_request(
        method: &Method,
        headers: &HeaderMap,
        query: Option<&str>,
        upgrade: bool,
    ) -> Self {
        let access = Self::of(method, upgrade);
        if access == Access::Write {
            return access;
        }
        let field_overrides = headers
            .iter()
            .filter(|(name, _)| is_method_override_field(name.as_str()))
            .map(|(_, value)| value.to_str().ok());
        let query_overrides = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let name = name.to_ascii_lowercase();
                (name == "_method" || name == "%5fmethod").then_some(Some(value))
            });
        let writes = field_overrides
            .chain(query_overrides)
            .any(|value| !value.is_some_and(names_only_reads));
        if writes {
            Access::Write
        } else {
            Access::Read
        }
    }
}

fn is_read(method: &Method) -> bool {
    [Method::GET, Method::HEAD, Method::OPTIONS].contains(method)
}

/// Whether a field (lowercase, as `http` stores names) asks the origin for another method.
fn is_method_override_field(name: &str) -> bool {
    let dashed = name.replace('_', "-");
    matches!(
        dashed.as_str(),
        "x-http-method-override" | "x-http-method" | "x-method-override"
    )
}

/// Whether an override value names only read methods (a list, as some frameworks accept).
fn names_only_reads(value: &str) -> bool {
    value.split(',').all(|m| {
        Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).is_ok_and(|m| is_read(&m))
    })
}

/// Checks a verified key against a request.
pub fn authorize(
    key: &ApiKey,
    lease: &str,
    access: Access,
    client_ip: IpAddr,
    global: &IpPolicy,
) -> Result<(), Denied> {
    if !ip_allowed(global, client_ip) || !lists_allow(&key.allow_ips, &key.deny_ips, client_ip) {
        return Err(Denied::Ip);
    }
    if !key.leases.iter().any(|glob| pattern_matches(glob, lease)) {
        return Err(Denied::Lease);
    }
    if !key.scopes.iter().any(|scope| scope_allows(*scope, access)) {
        return Err(Denied::Scope);
    }
    Ok(())
}

/// The global policy alone, for filtering connections before any request is read.
pub fn ip_allowed(global: &IpPolicy, ip: IpAddr) -> bool {
    lists_allow(&global.allow, &global.deny, ip)
}

fn lists_allow(allow: &[IpNet], deny: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    let hit = |nets: &[IpNet]| nets.iter().any(|net| net.contains(&ip));
    !hit(deny) && (allow.is_empty() || hit(allow))
}

fn scope_allows(scope: Scope, access: Access) -> bool {
    match scope {
        Scope::Write => true,
        Scope::Read => access == Access::Read,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_method_override_in_any_spelling_is_a_write() {
        let get = Method::GET;
        let mut headers = HeaderMap::new();
        assert_eq!(
            Access::of_request(&get, &headers, None, false),
            Access::Read
        );
        for name in [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x_http_method_override",
        ] {
            for value in [
                "DELETE",
                "delete",
                " Put ",
                "GET, DELETE",
                "",
                "NOT A METHOD",
            ] {
                let mut h = HeaderMap::new();
                h.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(value).unwrap(),
                );
                assert_eq!(
                    Access::of_request(&get, &h, None, false),
                    Access::Write,
                    "{name}: {value:?}"
                );
            }
        }
        headers.insert("x-http-method-override", "HEAD".parse().unwrap());
        assert_eq!(
            Access::of_request(&get, &headers, None, false),
            Access::Read
        );
        let h = HeaderMap::new();
        for query in [
            "_method=DELETE",
            "a=1&_METHOD=put",
            "%5Fmethod=patch",
            "_method",
        ] {
            assert_eq!(
                Access::of_request(&get, &h, Some(query), false),
                Access::Write,
                "{query}"
            );
        }
        assert_eq!(
            Access::of_request(&get, &h, Some("method=DELETE&x_method=1"), false),
            Access::Read
        );
        assert_eq!(
            Access::of_request(&Method::POST, &h, None, false),
            Access::Write
        );
    }

    fn key(leases: &[&str], scopes: &[Scope]) -> ApiKey {
        ApiKey {
            id: "abcd1234".into(),
            name: "test".into(),
            leases: leases.iter().map(|l| l.to_string()).collect(),
            scopes: scopes.to_vec(),
            allow_ips: vec![],
            deny_ips: vec![],
            expires_at: None,
            rate_limit: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ANY: IpPolicy = IpPolicy {
        allow: vec![],
        deny: vec![],
    };

    #[test]
    fn lease_globs_decide_which_leases_a_key_reaches() {
        let k = key(&["team-*", "exact"], &[Scope::Write]);
        let at = |lease| {
            authorize(
                &k,
                lease,
                Access::of(&Method::POST, false),
                ip("10.0.0.1"),
                &ANY,
            )
        };
        assert_eq!(at("team-a"), Ok(()));
        assert_eq!(at("exact"), Ok(()));
        assert_eq!(at("exactly"), Err(Denied::Lease));
        assert_eq!(at("other"), Err(Denied::Lease));
        let all = key(&["*"], &[Scope::Write]);
        assert_eq!(
            authorize(
                &all,
                "caf\u{e9}",
                Access::of(&Method::GET, false),
                ip("::1"),
                &ANY
            ),
            Ok(())
        );
    }

    #[test]
    fn read_scope_allows_only_safe_methods() {
        let k = key(&["*"], &[Scope::Read]);
        for (method, ok) in [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::POST, false),
            (Method::PUT, false),
            (Method::DELETE, false),
            (Method::PATCH, false),
            (Method::from_bytes(b"PROPFIND").unwrap(), false),
        ] {
            let got = authorize(&k, "a", Access::of(&method, false), ip("10.0.0.1"), &ANY);
            assert_eq!(got.is_ok(), ok, "{method}");
            if !ok {
                assert_eq!(got, Err(Denied::Scope));
            }
        }
        // An upgrade (WebSocket) writes to the lease even though it starts as a GET.
        assert_eq!(
            authorize(
                &k,
                "a",
                Access::of(&Method::GET, true),
                ip("10.0.0.1"),
                &ANY
            ),
            Err(Denied::Scope)
        );
        let both = key(&["*"], &[Scope::Read, Scope::Write]);
        assert_eq!(
            authorize(
                &both,
                "a",
                Access::of(&Method::DELETE, false),
                ip("10.0.0.1"),
                &ANY
            ),
            Ok(())
        );
    }

    #[test]
    fn global_deny_wins_then_global_allow_then_key_lists() {
        let global = IpPolicy {
            allow: nets(&["10.0.0.0/8"]),
            deny: nets(&["10.9.0.0/16"]),
        };
        let mut k = key(&["*"], &[Scope::Write]);
        k.allow_ips = nets(&["10.9.0.0/16", "10.1.0.0/16"]);
        k.deny_ips = nets(&["10.1.2.0/24"]);
        let from = |addr| authorize(&k, "a", Access::of(&Method::GET, false), ip(addr), &global);
        assert_eq!(
            from("10.9.0.1"),
            Err(Denied::Ip),
            "global deny beats key allow"
        );
        assert_eq!(from("192.0.2.1"), Err(Denied::Ip), "outside global allow");
        assert_eq!(from("10.2.0.1"), Err(Denied::Ip), "outside key allow");
        assert_eq!(
            from("10.1.2.3"),
            Err(Denied::Ip),
            "key deny beats key allow"
        );
        assert_eq!(from("10.1.3.3"), Ok(()));
        assert_eq!(
            from("::ffff:10.1.3.3"),
            Ok(()),
            "mapped IPv4 compares as IPv4"
        );
    }

    #[test]
    fn ip_is_checked_before_lease_and_scope() {
        let mut k = key(&["a"], &[Scope::Read]);
        k.deny_ips = nets(&["0.0.0.0/0"]);
        assert_eq!(
            authorize(
                &k,
                "b",
                Access::of(&Method::POST, false),
                ip("192.0.2.1"),
                &ANY
            ),
            Err(Denied::Ip)
        );
    }

    #[test]
    fn connection_filter_uses_the_global_policy_only() {
        assert!(ip_allowed(&ANY, ip("203.0.113.7")));
        let global = IpPolicy {
            allow: nets(&["2001:db8::/32"]),
            deny: nets(&["2001:db8:bad::/48"]),
        };
        assert!(ip_allowed(&global, ip("2001:db8::1")));
        assert!(!ip_allowed(&global, ip("2001:db8:bad::1")));
        assert!(!ip_allowed(&global, ip("203.0.113.7")));
    }
}
