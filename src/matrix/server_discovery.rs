//! Server-name resolution's rules (server-server API, "Resolving server names"), as pure
//! functions: which step applies to a name, what a `/.well-known/matrix/server` answer
//! delegates to and for how long it may be cached, the order SRV records are tried in, and
//! the `Host` header, TLS name and port each step gives. The service does the lookups (HTTP,
//! DNS) and feeds their results back here.

// `core::net`: the address value type only (this module does no I/O).
use core::net::IpAddr;

/// The port when neither the name, the delegation nor an SRV record gives one.
pub const DEFAULT_PORT: u16 = 8448;

/// How long a `/.well-known` answer without cache headers is kept (the spec's default).
pub const WELL_KNOWN_DEFAULT_MS: u64 = 24 * 3600 * 1000;
/// The longest any `/.well-known` answer is kept (the spec's recommended cap).
pub const WELL_KNOWN_MAX_MS: u64 = 48 * 3600 * 1000;
/// How long a failed `/.well-known` lookup is remembered (the spec's "up to an hour").
pub const WELL_KNOWN_ERROR_MS: u64 = 3600 * 1000;
/// The largest `/.well-known` body read.
pub const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
/// Redirects followed at most when fetching `/.well-known/matrix/server` (the spec asks
/// them followed, minding loops).
pub const WELL_KNOWN_MAX_REDIRECTS: usize = 5;

/// A server name (or delegated name) split into its host and optional port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameParts {
    /// The host: a DNS name, or an IP address (IPv6 without its brackets).
    pub host: String,
    pub port: Option<u16>,
    /// The host as an IP literal, if it is one.
    pub ip: Option<IpAddr>,
}

/// Split `name` as the server-name grammar writes it: `host[:port]`, IPv6 in brackets.
pub fn split(name: &str) -> Option<NameParts> {
    let (host, port) = if let Some(rest) = name.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (v6.to_owned(), port)
    } else {
        match name.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port.parse::<u16>().ok()?)),
            None => (name.to_owned(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let ip = host.parse::<IpAddr>().ok();
    if name.starts_with('[') && !matches!(ip, Some(IpAddr::V6(_))) {
        return None;
    }
    Some(NameParts { host: host.to_ascii_lowercase(), port, ip })
}

/// Where requests to a server go: the name the URL carries (the TLS name, or an IP literal,
/// which gets no SNI), the port, the `Host` header, and, after an SRV lookup, the host whose
/// addresses are connected to instead of the URL's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub tls_name: String,
    pub port: u16,
    pub host_header: String,
    pub srv_target: Option<String>,
}

impl Destination {
    /// The base URL of the server's federation API.
    pub fn base_url(&self) -> String {
        let host =
            if self.tls_name.contains(':') { format!("[{}]", self.tls_name) } else { self.tls_name.clone() };
        format!("https://{host}:{}", self.port)
    }
}

/// What to do first with a server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstStep {
    /// Steps 1 and 2: an IP literal or an explicit port needs no lookup of delegation.
    Direct(Destination),
    /// Step 3: ask `https://<host>/.well-known/matrix/server`.
    WellKnown(String),
}

/// The first step for `parts` (a server name).
pub fn first_step(name: &str, parts: &NameParts) -> FirstStep {
    if parts.ip.is_none() && parts.port.is_none() {
        return FirstStep::WellKnown(parts.host.clone());
    }
    FirstStep::Direct(Destination {
        tls_name: parts.host.clone(),
        port: parts.port.unwrap_or(DEFAULT_PORT),
        host_header: name.to_owned(),
        srv_target: None,
    })
}

/// After the delegation (or its failure): either a destination, or the host whose SRV
/// records decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterDelegation {
    Direct(Destination),
    /// Steps 3.3–3.5 and 4–6: look up `_matrix-fed._tcp.<host>`, then `_matrix._tcp.<host>`,
    /// then fall back to `<host>:8448`.
    Srv(String),
}

/// Step 3's sub-steps for a delegated name (`m.server`), or steps 4–6 for the server's own
/// host when there is none.
pub fn after_delegation(hostname: &str, delegated: Option<&str>) -> Option<AfterDelegation> {
    let Some(delegated) = delegated else { return Some(AfterDelegation::Srv(hostname.to_owned())) };
    let parts = split(delegated)?;
    Some(match (parts.ip, parts.port) {
        (Some(_), port) => AfterDelegation::Direct(Destination {
            tls_name: parts.host.clone(),
            port: port.unwrap_or(DEFAULT_PORT),
            host_header: delegated.to_owned(),
            srv_target: None,
        }),
        (None, Some(port)) => AfterDelegation::Direct(Destination {
            tls_name: parts.host.clone(),
            port,
            host_header: delegated.to_owned(),
            srv_target: None,
        }),
        (None, None) => AfterDelegation::Srv(parts.host),
    })
}

/// One SRV record as the lookup gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// The target host, without the trailing dot.
    pub target: String,
}

/// The destination SRV records give for `host` (whose certificate and `Host` header stay
/// the host's): the record with the lowest priority, the heaviest among equals (a
/// deterministic reading of RFC 2782's weighting, so repeated lookups reuse one connection),
/// a target of `.` meaning "no service here". `None` when no record is usable.
pub fn from_srv(host: &str, records: &[SrvRecord]) -> Option<Destination> {
    let mut usable: Vec<&SrvRecord> =
        records.iter().filter(|r| !r.target.is_empty() && r.target != ".").collect();
    usable.sort_by(|a, b| {
        a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)).then(a.target.cmp(&b.target))
    });
    let best = usable.first()?;
    Some(Destination {
        tls_name: host.to_owned(),
        port: best.port,
        host_header: host.to_owned(),
        srv_target: Some(best.target.trim_end_matches('.').to_ascii_lowercase()),
    })
}

/// Step 6 (and 3.5): the host itself on 8448.
pub fn fallback(host: &str) -> Destination {
    Destination {
        tls_name: host.to_owned(),
        port: DEFAULT_PORT,
        host_header: host.to_owned(),
        srv_target: None,
    }
}

/// The `m.server` of a `/.well-known/matrix/server` body, if the body is valid: a JSON object
/// whose `m.server` is a server name.
pub fn parse_well_known(body: &[u8]) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let server =
        value.get("m.server").and_then(|v| v.as_str()).ok_or_else(|| "no `m.server` string".to_owned())?;
    if ruma::ServerName::parse(server).is_err() || split(server).is_none() {
        return Err(format!("`m.server` is not a server name: {server:?}"));
    }
    Ok(server.to_owned())
}

/// How long a `/.well-known` answer may be kept, from its `Cache-Control` header: `no-store`
/// or `no-cache` not at all, `max-age` as given up to the cap, the default otherwise.
pub fn well_known_lifetime_ms(cache_control: Option<&str>) -> u64 {
    let Some(header) = cache_control else { return WELL_KNOWN_DEFAULT_MS };
    let mut lifetime = WELL_KNOWN_DEFAULT_MS;
    for directive in header.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if directive == "no-store" || directive == "no-cache" {
            return 0;
        }
        if let Some(secs) =
            directive.strip_prefix("max-age=").and_then(|s| s.trim_matches('"').parse::<u64>().ok())
        {
            lifetime = secs.saturating_mul(1000);
        }
    }
    lifetime.min(WELL_KNOWN_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(name: &str) -> NameParts {
        split(name).unwrap()
    }

    #[test]
    fn names_split_into_host_and_port() {
        assert_eq!(parts("example.org"), NameParts { host: "example.org".into(), port: None, ip: None });
        assert_eq!(parts("Example.org:8000").port, Some(8000));
        assert_eq!(parts("1.2.3.4:5").ip, Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parts("[::1]:8448").ip, Some("::1".parse().unwrap()));
        assert_eq!(parts("[::1]").port, None);
        assert!(split("example.org:notaport").is_none());
        assert!(split("[example.org]").is_none());
        assert!(split(":80").is_none());
    }

    #[test]
    fn ip_literals_and_explicit_ports_go_direct() {
        let d = |name: &str| match first_step(name, &parts(name)) {
            FirstStep::Direct(d) => d,
            other => panic!("{other:?}"),
        };
        let ip = d("127.0.0.1");
        assert_eq!(
            (ip.tls_name.as_str(), ip.port, ip.host_header.as_str()),
            ("127.0.0.1", 8448, "127.0.0.1")
        );
        let ip_port = d("127.0.0.1:9000");
        assert_eq!((ip_port.port, ip_port.host_header.as_str()), (9000, "127.0.0.1:9000"));
        assert_eq!(ip_port.base_url(), "https://127.0.0.1:9000");
        let v6 = d("[::1]:9000");
        assert_eq!((v6.tls_name.as_str(), v6.base_url().as_str()), ("::1", "https://[::1]:9000"));
        let named = d("matrix.example.org:443");
        assert_eq!((named.tls_name.as_str(), named.port), ("matrix.example.org", 443));
        assert_eq!(
            first_step("example.org", &parts("example.org")),
            FirstStep::WellKnown("example.org".into())
        );
    }

    #[test]
    fn delegations_follow_step_three() {
        use AfterDelegation::*;
        assert_eq!(after_delegation("example.org", None), Some(Srv("example.org".into())));
        let Some(Direct(ip)) = after_delegation("example.org", Some("10.0.0.1")) else { panic!() };
        assert_eq!((ip.port, ip.host_header.as_str()), (8448, "10.0.0.1"));
        let Some(Direct(port)) = after_delegation("example.org", Some("matrix.example.org:443")) else {
            panic!()
        };
        assert_eq!(
            (port.tls_name.as_str(), port.port, port.host_header.as_str()),
            ("matrix.example.org", 443, "matrix.example.org:443")
        );
        assert_eq!(
            after_delegation("example.org", Some("matrix.example.org")),
            Some(Srv("matrix.example.org".into()))
        );
        assert_eq!(after_delegation("example.org", Some("bad:port")), None);
    }

    #[test]
    fn srv_records_are_taken_by_priority_then_weight() {
        let rec = |priority, weight, port, target: &str| SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        };
        let records = [
            rec(20, 100, 1, "late.example."),
            rec(10, 1, 2, "light.example."),
            rec(10, 50, 3, "heavy.example."),
        ];
        let d = from_srv("example.org", &records).unwrap();
        assert_eq!(d.srv_target.as_deref(), Some("heavy.example"));
        assert_eq!((d.port, d.tls_name.as_str(), d.host_header.as_str()), (3, "example.org", "example.org"));
        assert_eq!(from_srv("example.org", &[rec(0, 0, 0, ".")]), None);
        assert_eq!(from_srv("example.org", &[]), None);
        assert_eq!(fallback("example.org").base_url(), "https://example.org:8448");
    }

    #[test]
    fn well_known_bodies_are_checked() {
        assert_eq!(
            parse_well_known(br#"{"m.server": "matrix.example.org:443"}"#).unwrap(),
            "matrix.example.org:443"
        );
        assert!(parse_well_known(b"<html>").is_err());
        assert!(parse_well_known(br#"{"m.server": 5}"#).is_err());
        assert!(parse_well_known(br#"{"m.server": "bad name with spaces"}"#).is_err());
        assert!(parse_well_known(br#"{}"#).is_err());
    }

    #[test]
    fn well_known_lifetimes_respect_cache_control_within_the_cap() {
        assert_eq!(well_known_lifetime_ms(None), WELL_KNOWN_DEFAULT_MS);
        assert_eq!(well_known_lifetime_ms(Some("public, max-age=600")), 600_000);
        assert_eq!(well_known_lifetime_ms(Some("max-age=999999999")), WELL_KNOWN_MAX_MS);
        assert_eq!(well_known_lifetime_ms(Some("no-store")), 0);
        assert_eq!(well_known_lifetime_ms(Some("private")), WELL_KNOWN_DEFAULT_MS);
    }
}
