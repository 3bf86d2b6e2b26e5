//! Which addresses and hosts a URL preview may reach: the SSRF guard's decisions, as pure
//! functions (no DNS, no sockets). The preview fetcher resolves names itself, asks this
//! module about every address, and connects only to addresses it approved.
//!
//! Built in, and refused unless an operator allows a range explicitly: every address that is
//! not plainly a public unicast address on the internet — loopback, private (RFC 1918),
//! shared (CGNAT), link-local, unique-local, multicast, unspecified, broadcast, benchmarking,
//! documentation, reserved and the IETF's special-purpose blocks — and IPv6 forms that embed
//! an IPv4 address (mapped, compatible, NAT64, 6to4) judged by the address they embed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address or host was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address is internal or otherwise not on the public internet.
    InternalAddress(IpAddr),
    /// An operator listed the address's range.
    DeniedRange(IpAddr),
    /// An operator listed the host, or listed others and not it.
    DeniedHost,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InternalAddress(ip) => write!(f, "{ip} is not a public address"),
            Self::DeniedRange(ip) => write!(f, "{ip} is in a range the server refuses"),
            Self::DeniedHost => write!(f, "the server does not preview this host"),
        }
    }
}

/// The operator's lists on top of the built-in ranges.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Ranges refused in addition to the built-in ones.
    pub deny_ranges: Vec<IpNet>,
    /// Ranges allowed even though built in or denied above (tests allow loopback this way).
    pub allow_ranges: Vec<IpNet>,
    /// Host patterns never fetched.
    pub deny_hosts: Vec<String>,
    /// When not empty, the only host patterns fetched.
    pub allow_hosts: Vec<String>,
    /// Hosts the operator configured as services of their own (an identity provider's
    /// issuer): every address they resolve to is allowed, internal ones included. Other
    /// hosts, such as those a provider's documents name, are vetted as usual.
    pub trusted_hosts: Vec<String>,
}

impl Policy {
    /// Whether the fetcher may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allow_ranges.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        if self.deny_ranges.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::DeniedRange(ip));
        }
        if is_internal(ip) {
            return Err(Refusal::InternalAddress(ip));
        }
        Ok(())
    }

    /// Whether the operator named `host` as their own service ([`Self::trusted_hosts`]).
    pub fn trusts(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.trusted_hosts.iter().any(|t| t.trim_end_matches('.').eq_ignore_ascii_case(host))
    }

    /// Whether the fetcher may ask for `host` (a DNS name, lower-cased by the URL parser).
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.deny_hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(Refusal::DeniedHost);
        }
        if !self.allow_hosts.is_empty() && !self.allow_hosts.iter().any(|p| host_matches(p, &host)) {
            return Err(Refusal::DeniedHost);
        }
        Ok(())
    }
}

/// `example.com` matches exactly that host; `*.example.com` matches its subdomains at any
/// depth, not the bare domain.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(domain) => host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => host == pattern,
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address for every purpose here: a range of either
/// family then covers both spellings.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is anything but a public unicast address.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    match a {
        0 => true,                             // "this network", unspecified (RFC 791)
        10 => true,                            // private (RFC 1918)
        100 if (64..128).contains(&b) => true, // shared address space, CGNAT (RFC 6598)
        127 => true,                           // loopback
        169 if b == 254 => true,               // link-local (RFC 3927)
        172 if (16..32).contains(&b) => true,  // private (RFC 1918)
        192 if b == 0 && c == 0 => true,       // IETF protocol assignments (RFC 6890)
        192 if b == 0 && c == 2 => true,       // TEST-NET-1 documentation (RFC 5737)
        192 if b == 88 && c == 99 => true,     // 6to4 relay anycast (RFC 7526)
        192 if b == 168 => true,               // private (RFC 1918)
        198 if b == 18 || b == 19 => true,     // benchmarking (RFC 2544)
        198 if b == 51 && c == 100 => true,    // TEST-NET-2
        203 if b == 0 && c == 113 => true,     // TEST-NET-3
        224..=239 => true,                     // multicast
        240..=255 => true,                     // reserved, and 255.255.255.255 broadcast
        _ => false,
    }
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Forms that carry an IPv4 address are as internal as that address.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    if s[..6] == [0; 6] {
        // `::`, `::1` and the deprecated IPv4-compatible `::a.b.c.d`: nothing public.
        return true;
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 (RFC 6052) reaches the embedded IPv4 address.
        return is_internal_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4 (RFC 3056) routes to the IPv4 address in bits 16..48.
        return is_internal_v4(embedded_v4(s[1], s[2]));
    }
    let [s0, s1, s2, s3, ..] = s;
    (s0 == 0x0064 && s1 == 0xff9b && s2 == 1)      // local-use NAT64 64:ff9b:1::/48 (RFC 8215)
        || (s0 == 0x0100 && s1 == 0 && s2 == 0 && s3 == 0) // discard-only 100::/64 (RFC 6666)
        || (s0 == 0x2001 && s1 < 0x0200)          // IETF protocol assignments 2001::/23, Teredo
        || (s0 == 0x2001 && s1 == 0x0db8)         // documentation 2001:db8::/32
        || (s0 == 0x3fff && s1 < 0x1000)          // documentation 3fff::/20 (RFC 9637)
        || s0 & 0xfe00 == 0xfc00                  // unique local fc00::/7
        || s0 & 0xffc0 == 0xfe80                  // link-local fe80::/10
        || s0 & 0xffc0 == 0xfec0                  // site-local fec0::/10 (deprecated)
        || s0 & 0xff00 == 0xff00 // multicast ff00::/8
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(s: &str) -> bool {
        is_internal(s.parse().unwrap())
    }

    #[test]
    fn internal_ipv4_ranges_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.8.9.10",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(internal(ip), "{ip} should be internal");
        }
    }

    #[test]
    fn public_ipv4_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "93.184.216.34",
        ] {
            assert!(!internal(ip), "{ip} should be public");
        }
    }

    #[test]
    fn internal_ipv6_ranges_are_refused() {
        for ip in [
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(internal(ip), "{ip} should be internal");
        }
    }

    #[test]
    fn public_ipv6_addresses_pass() {
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!internal(ip), "{ip} should be public");
        }
    }

    #[test]
    fn operator_ranges_allow_and_deny() {
        let policy = Policy {
            deny_ranges: vec!["8.8.8.0/24".parse().unwrap()],
            allow_ranges: vec!["127.0.0.1/32".parse().unwrap()],
            ..Policy::default()
        };
        assert_eq!(policy.check_ip("127.0.0.1".parse().unwrap()), Ok(()));
        // The mapped spelling of an allowed address is the same address.
        assert_eq!(policy.check_ip("::ffff:127.0.0.1".parse().unwrap()), Ok(()));
        assert!(matches!(policy.check_ip("127.0.0.2".parse().unwrap()), Err(Refusal::InternalAddress(_))));
        assert!(matches!(policy.check_ip("8.8.8.8".parse().unwrap()), Err(Refusal::DeniedRange(_))));
        assert!(matches!(policy.check_ip("::ffff:8.8.8.8".parse().unwrap()), Err(Refusal::DeniedRange(_))));
        assert_eq!(policy.check_ip("1.1.1.1".parse().unwrap()), Ok(()));
        assert!(Policy::default().check_ip("::1".parse().unwrap()).is_err());
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("example.com", "example.com"));
        assert!(!host_matches("example.com", "www.example.com"));
        assert!(host_matches("*.example.com", "www.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        let policy = Policy {
            deny_hosts: vec!["*.corp.example".into()],
            allow_hosts: vec!["*.example".into()],
            ..Policy::default()
        };
        assert_eq!(policy.check_host("news.example"), Ok(()));
        assert_eq!(policy.check_host("NEWS.example."), Ok(()));
        assert_eq!(policy.check_host("wiki.corp.example"), Err(Refusal::DeniedHost));
        assert_eq!(policy.check_host("other.org"), Err(Refusal::DeniedHost));
        assert_eq!(Policy::default().check_host("other.org"), Ok(()));
    }

    #[test]
    fn trusted_hosts_match_whole_names_in_any_case() {
        let policy =
            Policy { trusted_hosts: vec!["sso.corp.example".into(), "10.0.0.5".into()], ..Policy::default() };
        assert!(policy.trusts("SSO.corp.example."));
        assert!(policy.trusts("10.0.0.5"));
        assert!(!policy.trusts("evil.sso.corp.example"));
        assert!(!policy.trusts("corp.example"));
        // Trust is for names; the address check itself is unchanged.
        assert!(policy.check_ip("10.0.0.5".parse().unwrap()).is_err());
    }
}
