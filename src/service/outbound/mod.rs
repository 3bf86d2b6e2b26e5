//! Requests this server makes to addresses that users or clients name (URL previews, push
//! gateways; federation later): one HTTP client shape whose only name resolver is the SSRF
//! guard. The resolver vets every address a name resolves to and hands the client only
//! those, so the connection goes to exactly the address that was checked (no second lookup
//! an attacker's DNS could answer differently); addresses written literally in URLs are
//! checked by [`check_url`] before the request. Callers follow redirects themselves (or not
//! at all) and bound bodies and time.

pub mod ip_guard;

use std::{
    collections::HashMap,
    error::Error as StdError,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};

use ip_guard::{Policy, Refusal};

type BoxError = Box<dyn StdError + Send + Sync>;

/// A refusal by the guard, carried through the HTTP client's error chain.
#[derive(Debug)]
struct Blocked(Refusal);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl StdError for Blocked {}

/// The HTTP client's only way from a name to addresses: resolve, then refuse the name if any
/// address it has is not allowed (a name that also points inside is not trusted at all).
struct GuardedResolver {
    policy: Arc<Policy>,
    targets: Option<Arc<HostTargets>>,
}

/// Names whose addresses are those of another host: federation's SRV records, which keep
/// the server's name for TLS and the `Host` header but point the connection elsewhere. The
/// target's addresses pass the same guard.
#[derive(Default)]
pub struct HostTargets(RwLock<HashMap<String, String>>);

impl HostTargets {
    /// Connect to `target`'s addresses when a URL names `name`.
    pub fn set(&self, name: &str, target: &str) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), target.to_owned());
    }

    fn target_of(&self, name: &str) -> Option<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = target_of(self.targets.as_deref(), name.as_str());
        Box::pin(async move {
            let addrs = vetted_addresses(&policy, &host, 0).await?;
            Ok::<Addrs, BoxError>(Box::new(addrs.into_iter()))
        })
    }
}

/// The host whose addresses a connection to `name` uses: its SRV target, if any.
fn target_of(targets: Option<&HostTargets>, name: &str) -> String {
    targets.and_then(|t| t.target_of(name)).unwrap_or_else(|| name.to_owned())
}

/// `host`'s addresses (with `port`), refused as a whole when the guard refuses any of them
/// (a name that also points inside is not trusted at all).
async fn vetted_addresses(policy: &Policy, host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(BoxError::from(format!("{host} has no addresses")));
    }
    if !policy.trusts(host) {
        for addr in &addrs {
            policy.check_ip(addr.ip()).map_err(|r| Box::new(Blocked(r)) as BoxError)?;
        }
    }
    Ok(addrs)
}

/// The address a proxy tunnel to `host:port` goes to ([`crate::net::tunnel`]): resolved here,
/// through the SRV `targets` and the guard, as a direct connection would be.
pub fn tunnel_vetter(policy: &Arc<Policy>, targets: Option<Arc<HostTargets>>) -> crate::net::tunnel::Vet {
    let policy = Arc::clone(policy);
    Arc::new(move |host: String, port: u16| {
        let (policy, host) = (Arc::clone(&policy), target_of(targets.as_deref(), &host));
        Box::pin(async move { Ok(vetted_addresses(&policy, &host, port).await?[0]) })
    })
}

/// A failure in words with each of its causes, or the guard's refusal when that is what
/// stopped it (for clients other than reqwest; [`blocked_cause`] is reqwest's).
pub fn describe_error(error: &(dyn StdError + 'static)) -> String {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
    let mut text = String::new();
    while let Some(e) = cause {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return format!("the address is refused ({})", blocked.0);
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// An HTTP client that connects only where `policy` allows, follows no redirects, uses no
/// proxy (a proxy would connect somewhere the guard never saw) and gives up connecting after
/// `connect_timeout`.
pub fn guarded_client(
    policy: &Arc<Policy>,
    connect_timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client, reqwest::Error> {
    guarded_client_builder(policy, connect_timeout, user_agent, None).build()
}

/// [`guarded_client`]'s builder, for callers that add trusted CAs, with `targets` for names
/// whose connections go to another host (resolved and checked the same way).
pub fn guarded_client_builder(
    policy: &Arc<Policy>,
    connect_timeout: Duration,
    user_agent: &str,
    targets: Option<Arc<HostTargets>>,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver { policy: Arc::clone(policy), targets }))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .user_agent(user_agent)
}

/// Why a URL may not be requested before any connection: not http(s), no host, a host the
/// lists refuse, or a literal address the guard refuses.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlRefusal {
    Scheme,
    NoHost,
    Guard(Refusal),
}

impl std::fmt::Display for UrlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Scheme => f.write_str("only http and https are allowed"),
            Self::NoHost => f.write_str("the URL has no host"),
            Self::Guard(refusal) => refusal.fmt(f),
        }
    }
}

/// The checks a URL passes before any connection: scheme, host lists, and the address
/// itself when it is written as one.
pub fn check_url(policy: &Policy, url: &Url) -> Result<(), UrlRefusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlRefusal::Scheme);
    }
    match url.host() {
        Some(host) if policy.trusts(host.to_string().trim_start_matches('[').trim_end_matches(']')) => Ok(()),
        Some(url::Host::Domain(domain)) => policy.check_host(domain).map_err(UrlRefusal::Guard),
        Some(url::Host::Ipv4(ip)) => policy.check_ip(ip.into()).map_err(UrlRefusal::Guard),
        Some(url::Host::Ipv6(ip)) => policy.check_ip(ip.into()).map_err(UrlRefusal::Guard),
        None => Err(UrlRefusal::NoHost),
    }
}

/// The guard's refusal behind a client error, if that is what stopped it.
pub fn blocked_cause(error: &reqwest::Error) -> Option<&Refusal> {
    let mut cause: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = cause {
        if let Some(Blocked(refusal)) = e.downcast_ref::<Blocked>() {
            return Some(refusal);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_at_trusted_hosts_pass_even_when_internal() {
        let policy = Policy {
            trusted_hosts: vec!["127.0.0.1".into(), "[::1]".into(), "::1".into()],
            ..Policy::default()
        };
        let check = |url: &str| check_url(&policy, &Url::parse(url).unwrap());
        assert_eq!(check("http://127.0.0.1:8080/.well-known/openid-configuration"), Ok(()));
        assert_eq!(check("http://[::1]/jwks"), Ok(()));
        assert!(matches!(
            check("http://10.255.255.1/token"),
            Err(UrlRefusal::Guard(Refusal::InternalAddress(_)))
        ));
        assert!(matches!(
            check("http://127.0.0.2/token"),
            Err(UrlRefusal::Guard(Refusal::InternalAddress(_)))
        ));
    }
}
