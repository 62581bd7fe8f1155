//! The unit a client is counted by — for connection caps, failed-key quotas and per-IP rate
//! limits: its IPv4 address, or its IPv6 /64 (one subscriber's usual allocation, so that
//! rotating through a /64 does not multiply anyone's budget).

use std::net::IpAddr;

/// The bucket `ip` is counted in. IPv4-mapped IPv6 addresses count as IPv4.
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_eq!(bucket(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(bucket(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
