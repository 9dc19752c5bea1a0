//! Who a request counts against when its authentication fails: the
//! peer's address (an IPv6 /64 as one), or behind a trusted proxy the
//! client it forwards; and the bounded table of those counts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The window failed authentications are counted in.
const AUTH_WINDOW: Duration = Duration::from_secs(60);

/// Peers whose failed authentications are counted at once; past it, the
/// counts whose window ended go first, then the oldest.
const MAX_COUNTED_PEERS: usize = 10_000;

/// What failed authentications count against: an IPv4 address, or the
/// /64 an IPv6 address is in (one host holds a whole /64).
fn counted(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("mapped")),
        v4 => v4,
    }
}
/// The client a request from `peer` is for: `peer` itself, unless it is a
/// trusted proxy; then the last address its `X-Forwarded-For` names that
/// is not a trusted proxy (the ones before it are the client's to write).
pub(super) fn forwarded_for(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let named: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse().ok())
        .collect();
    named
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

/// Failed authentications by peer, each counted in its own window, for at
/// most [`MAX_COUNTED_PEERS`] peers.
#[derive(Default)]
pub(super) struct Failures(HashMap<IpAddr, (u32, Instant)>);

impl Failures {
    /// Whether `ip` is past `limit` in its window.
    pub(super) fn refused(&self, ip: IpAddr, limit: u32) -> bool {
        self.0
            .get(&counted(ip))
            .is_some_and(|(count, since)| *count >= limit && since.elapsed() < AUTH_WINDOW)
    }

    /// Counts one against `ip`. A new peer past the bound makes room:
    /// the counts whose window ended go first, then the oldest.
    pub(super) fn count(&mut self, ip: IpAddr) {
        let ip = counted(ip);
        if self.0.len() >= MAX_COUNTED_PEERS && !self.0.contains_key(&ip) {
            self.0.retain(|_, (_, since)| since.elapsed() < AUTH_WINDOW);
            if self.0.len() >= MAX_COUNTED_PEERS
                && let Some(oldest) = self
                    .0
                    .iter()
                    .min_by_key(|(_, (_, since))| *since)
                    .map(|(ip, _)| *ip)
            {
                self.0.remove(&oldest);
            }
        }
        let entry = self.0.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= AUTH_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_against_the_forwarded_client_and_an_ipv6_slash_64() {
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let mut headers = http::HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7".parse().expect("h"),
        );
        headers.append("x-forwarded-for", "10.0.0.1".parse().expect("h"));
        // From the trusted proxy: the last address not a trusted proxy.
        assert_eq!(
            forwarded_for(proxy, &headers, &[proxy]),
            "203.0.113.7".parse::<IpAddr>().expect("ip")
        );
        // From anyone else, the header is the client's to write: ignored.
        let other: IpAddr = "198.51.100.2".parse().expect("ip");
        assert_eq!(forwarded_for(other, &headers, &[proxy]), other);
        assert_eq!(
            forwarded_for(proxy, &http::HeaderMap::new(), &[proxy]),
            proxy
        );
        assert_eq!(
            counted("2001:db8:1:2:aaaa::1".parse().expect("ip")),
            counted("2001:db8:1:2:ffff::9".parse().expect("ip"))
        );
        assert_ne!(
            counted("2001:db8:1:2::1".parse().expect("ip")),
            counted("2001:db8:1:3::1".parse().expect("ip"))
        );
        assert_eq!(
            counted("::ffff:192.0.2.1".parse().expect("ip")),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn the_failed_authentication_table_is_bounded() {
        let mut failures = Failures::default();
        let first: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            failures.count(first);
        }
        assert!(failures.refused(first, 3));
        // An attacker with many addresses fills the table: it stays
        // bounded, and the newest counts are kept.
        for n in 0..(MAX_COUNTED_PEERS as u32 + 500) {
            failures.count(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n)));
        }
        assert_eq!(failures.0.len(), MAX_COUNTED_PEERS);
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_COUNTED_PEERS as u32 + 499,
        ));
        assert!(failures.refused(newest, 1));
        // Every address of one IPv6 /64 is one peer.
        let mut failures = Failures::default();
        for n in 0..5u16 {
            failures.count(IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, 0, n, n, n, n,
            )));
        }
        assert_eq!(failures.0.len(), 1);
        assert!(failures.refused("2001:db8::ffff:1".parse().expect("ip"), 5));
    }
}
