//! `FederationClient`: requests to other Matrix servers. A server name is resolved as the
//! spec says (`matrix::server_discovery` holds the rules; this file does the `/.well-known`
//! fetch, with its answers cached for as long as they allow, and the SRV lookups); every
//! connection goes through the outbound address guard (`ip_range_denylist`,
//! `ip_range_allowlist`, IP-literal names included) and TLS verified against the public roots
//! plus `federation_ca_file`; `federation_domain_allowlist`/`denylist` decide which servers
//! are talked to at all. Requests are signed with X-Matrix (origin, destination, our current
//! key); connections are pooled per destination by the HTTP client.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use hickory_resolver::TokioResolver;
use http::HeaderValue;
use ruma::{
    OwnedServerName, ServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    config::Config,
    matrix::server_discovery::{
        self as discovery, AfterDelegation, Destination, FirstStep, SrvRecord, WELL_KNOWN_ERROR_MS,
        WELL_KNOWN_MAX_BYTES, WELL_KNOWN_MAX_REDIRECTS,
    },
    net::tunnel::{ProxySettings, TunnelClient},
    service::{
        clock::Clock,
        outbound::{
            self, HostTargets,
            ip_guard::{Policy, host_matches},
        },
        server_keys::ServerKeys,
    },
};

/// How this server names itself in its requests.
const USER_AGENT: &str = concat!("conduit/", env!("CARGO_PKG_VERSION"));
/// Largest answer read from another server.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// How long a resolved destination is reused when no `/.well-known` answer bounds it.
const DESTINATION_TTL_MS: u64 = 3600 * 1000;

/// A cached `/.well-known` answer: the delegated name (none after an error), until when.
#[derive(Clone, Debug)]
struct WellKnownEntry {
    delegated: Option<String>,
    expires_ms: u64,
}

pub struct FederationClient {
    enabled: bool,
    server_name: OwnedServerName,
    keys: Arc<ServerKeys>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    /// Set with `federation_proxy`: every request goes through the proxy instead of `http`.
    tunnel: Option<TunnelClient>,
    policy: Arc<Policy>,
    targets: Arc<HostTargets>,
    allow_domains: Vec<String>,
    deny_domains: Vec<String>,
    timeout: Duration,
    well_known: Mutex<HashMap<String, WellKnownEntry>>,
    destinations: Mutex<HashMap<OwnedServerName, (Destination, u64)>>,
    dns: OnceLock<Option<TokioResolver>>,
}

/// The answer of another server that is not a success: its status and body.
#[derive(Debug)]
pub struct RemoteRefusal {
    pub status: u16,
    pub body: JsonValue,
}

impl FederationClient {
    pub fn new(config: &Config, keys: Arc<ServerKeys>, clock: Arc<dyn Clock>) -> Result<Self> {
        let policy = Arc::new(Policy {
            deny_ranges: config.ip_range_denylist.clone(),
            allow_ranges: config.ip_range_allowlist.clone(),
            ..Policy::default()
        });
        let targets = Arc::new(HostTargets::default());
        let timeout = Duration::from_secs(config.federation_timeout_secs);
        let mut builder = outbound::guarded_client_builder(
            &policy,
            timeout.min(Duration::from_secs(10)),
            USER_AGENT,
            Some(Arc::clone(&targets)),
        )
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90));
        let mut ca_pem = None;
        if let Some(path) = &config.federation_ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| Error::internal(format!("federation_ca_file {}: {e}", path.display())))?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::internal(format!("federation_ca_file {}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(Error::internal(format!(
                    "federation_ca_file {} holds no certificate",
                    path.display()
                )));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
            ca_pem = Some(pem);
        }
        let http = builder.build().map_err(|e| Error::internal(format!("federation HTTP client: {e}")))?;
        let tunnel = match &config.federation_proxy {
            Some(url) => {
                let proxy = ProxySettings::parse(url)
                    .map_err(|e| Error::internal(format!("federation_proxy: {e}")))?;
                Some(TunnelClient::new(
                    proxy,
                    outbound::tunnel_vetter(&policy, Some(Arc::clone(&targets))),
                    tunnel_tls(ca_pem.as_deref())?,
                    timeout.min(Duration::from_secs(10)),
                ))
            }
            None => None,
        };
        Ok(Self {
            enabled: config.allow_federation,
            server_name: config.server_name.clone(),
            keys,
            clock,
            http,
            tunnel,
            policy,
            targets,
            allow_domains: config.federation_domain_allowlist.clone(),
            deny_domains: config.federation_domain_denylist.clone(),
            timeout,
            well_known: Mutex::new(HashMap::new()),
            destinations: Mutex::new(HashMap::new()),
            dns: OnceLock::new(),
        })
    }

    /// Whether federation is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether this server may talk to `server` at all: federation on, and the domain lists
    /// allow its host. Inbound requests from a refused server are refused with the same words.
    pub fn check_server(&self, server: &ServerName) -> Result<()> {
        if !self.enabled {
            return Err(Error::forbidden("This server does not federate"));
        }
        let host = discovery::split(server.as_str()).map_or_else(|| server.as_str().to_owned(), |p| p.host);
        let denied = self.deny_domains.iter().any(|p| host_matches(p, &host))
            || (!self.allow_domains.is_empty() && !self.allow_domains.iter().any(|p| host_matches(p, &host)));
        if denied {
            return Err(Error::forbidden(format!("This server does not federate with {server}")));
        }
        Ok(())
    }

    /// Where requests to `server` go, per the spec's resolution steps.
    pub async fn resolve(&self, server: &ServerName) -> Result<Destination> {
        let now = self.clock.now_ms();
        if let Some((destination, expires)) = self.lock_destinations().get(server).cloned()
            && now < expires
        {
            return Ok(destination);
        }
        let parts = discovery::split(server.as_str())
            .ok_or_else(|| Error::invalid_param(format!("{server} is not a server name")))?;
        let (destination, ttl) = match discovery::first_step(server.as_str(), &parts) {
            FirstStep::Direct(destination) => (destination, DESTINATION_TTL_MS),
            FirstStep::WellKnown(host) => {
                let (delegated, ttl) = self.well_known(&host).await;
                let next = discovery::after_delegation(&host, delegated.as_deref())
                    .unwrap_or_else(|| AfterDelegation::Srv(host.clone()));
                let destination = match next {
                    AfterDelegation::Direct(destination) => destination,
                    AfterDelegation::Srv(name) => self.srv_destination(&name).await,
                };
                (destination, ttl.clamp(60_000, DESTINATION_TTL_MS))
            }
        };
        if let Some(target) = &destination.srv_target {
            self.targets.set(&destination.tls_name, target);
        }
        self.lock_destinations().insert(server.to_owned(), (destination.clone(), now + ttl));
        Ok(destination)
    }

    fn lock_destinations(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedServerName, (Destination, u64)>> {
        self.destinations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The delegation `https://<host>/.well-known/matrix/server` names (none after an error),
    /// from the cache while its answer is fresh; and how long it stays so.
    async fn well_known(&self, host: &str) -> (Option<String>, u64) {
        let now = self.clock.now_ms();
        if let Some(fresh) = self.fresh_well_known(host, now) {
            return fresh;
        }
        let (delegated, ttl) = match self.fetch_well_known(host).await {
            Ok((server, ttl)) => (Some(server), ttl),
            Err(reason) => {
                tracing::debug!(%host, %reason, "no usable /.well-known/matrix/server");
                (None, WELL_KNOWN_ERROR_MS)
            }
        };
        self.remember_well_known(host, delegated.clone(), now + ttl);
        (delegated, ttl)
    }

    /// The cached answer for `host` while it is fresh at `now`, with the time it has left.
    fn fresh_well_known(&self, host: &str, now: u64) -> Option<(Option<String>, u64)> {
        let cached = self.well_known.lock().unwrap_or_else(|p| p.into_inner()).get(host).cloned()?;
        (now < cached.expires_ms).then(|| (cached.delegated, cached.expires_ms - now))
    }

    fn remember_well_known(&self, host: &str, delegated: Option<String>, expires_ms: u64) {
        self.well_known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_owned(), WellKnownEntry { delegated, expires_ms });
    }

    /// `https://<host>/.well-known/matrix/server`, following redirects to other `https`
    /// URLs (each hop through the guard) up to `WELL_KNOWN_MAX_REDIRECTS`.
    async fn fetch_well_known(&self, host: &str) -> std::result::Result<(String, u64), String> {
        let mut url = reqwest::Url::parse(&format!("https://{host}/.well-known/matrix/server"))
            .map_err(|e| format!("{host}: {e}"))?;
        let mut hops = 0;
        let response = loop {
            let response = self.execute(get(url.as_str())?).await?;
            if !response.status().is_redirection() {
                break response;
            }
            hops += 1;
            if hops > WELL_KNOWN_MAX_REDIRECTS {
                return Err(format!("more than {WELL_KNOWN_MAX_REDIRECTS} redirects"));
            }
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("a redirect ({}) without a location", response.status()))?;
            let next = url.join(location).map_err(|e| format!("a redirect to {location}: {e}"))?;
            if next.scheme() != "https" {
                return Err(format!("a redirect to {next}, which is not https"));
            }
            // A literal address is connected to without the resolver, which vets names.
            outbound::check_url(&self.policy, &next)
                .map_err(|refusal| format!("a redirect to {next}: {refusal}"))?;
            url = next;
        };
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let cache_control = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(response, WELL_KNOWN_MAX_BYTES).await?;
        let server = discovery::parse_well_known(&body)?;
        Ok((server, discovery::well_known_lifetime_ms(cache_control.as_deref())))
    }

    /// Steps 3.3–3.5 and 4–6: `_matrix-fed._tcp`, then `_matrix._tcp`, then port 8448.
    async fn srv_destination(&self, host: &str) -> Destination {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let records = self.srv_records(&format!("{service}.{host}.")).await;
            if let Some(destination) = discovery::from_srv(host, &records) {
                return destination;
            }
        }
        discovery::fallback(host)
    }

    async fn srv_records(&self, name: &str) -> Vec<SrvRecord> {
        let resolver = self.dns.get_or_init(|| match TokioResolver::builder_tokio() {
            Ok(builder) => Some(builder.build()),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration for SRV lookups; federation uses port 8448");
                None
            }
        });
        let Some(resolver) = resolver else { return Vec::new() };
        match resolver.srv_lookup(name).await {
            Ok(lookup) => lookup
                .iter()
                .map(|srv| SrvRecord {
                    priority: srv.priority(),
                    weight: srv.weight(),
                    port: srv.port(),
                    target: srv.target().to_utf8(),
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A request to `server`'s federation or key API (`path_and_query` as sent), signed with
    /// X-Matrix when `signed`; the JSON answer of a success, or why not.
    pub async fn request(
        &self,
        server: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&JsonValue>,
        signed: bool,
    ) -> Result<std::result::Result<JsonValue, RemoteRefusal>> {
        let response = self.send(server, method, path_and_query, body, signed).await?;
        let status = response.status();
        let json = read_json(server, response).await?;
        if status.is_success() {
            Ok(Ok(json))
        } else {
            Ok(Err(RemoteRefusal { status: status.as_u16(), body: json }))
        }
    }

    /// A signed GET whose success is read as it arrives (media): the response, or the
    /// server's refusal.
    pub async fn get_streamed(
        &self,
        server: &ServerName,
        path_and_query: &str,
    ) -> Result<std::result::Result<reqwest::Response, RemoteRefusal>> {
        let response = self.send(server, http::Method::GET, path_and_query, None, true).await?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ok(response));
        }
        // A refusal that is not JSON (a proxy's error page) still refuses.
        let body = read_json(server, response).await.unwrap_or(JsonValue::Null);
        Ok(Err(RemoteRefusal { status: status.as_u16(), body }))
    }

    /// A plain GET of `url` through the address guard (where another server's media answer
    /// redirects to), unsigned.
    pub async fn get_redirected(&self, server: &ServerName, url: &str) -> Result<reqwest::Response> {
        // A literal address is connected to without the resolver, which vets names: checked
        // here, or another server could make this one fetch from inside its network.
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::Upstream(format!("{server}'s media location {url} is not a URL: {e}")))?;
        outbound::check_url(&self.policy, &parsed).map_err(|refusal| {
            Error::Upstream(format!("{server}'s media location {url} is refused: {refusal}"))
        })?;
        let response = self
            .execute(get(url).map_err(Error::Upstream)?)
            .await
            .map_err(|e| Error::Upstream(format!("{server}'s media could not be fetched from {url}: {e}")))?;
        if !response.status().is_success() {
            return Err(Error::Upstream(format!(
                "{server}'s media location {url} answered {}",
                response.status()
            )));
        }
        Ok(response)
    }

    /// Send a request to `server`, signed when `signed`.
    async fn send(
        &self,
        server: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&JsonValue>,
        signed: bool,
    ) -> Result<reqwest::Response> {
        self.check_server(server)?;
        if server == self.server_name {
            return Err(Error::invalid_param("A request to this server itself is not sent over federation"));
        }
        let destination = self.resolve(server).await?;
        if let Ok(ip) = destination.tls_name.parse::<IpAddr>() {
            self.policy
                .check_ip(ip)
                .map_err(|refusal| Error::Upstream(format!("{server} cannot be reached: {refusal}")))?;
        }
        let body_bytes = match body {
            Some(value) => {
                serde_json::to_vec(value).map_err(|e| Error::internal(format!("request body: {e}")))?
            }
            None => Vec::new(),
        };
        let url = format!("{}{path_and_query}", destination.base_url());
        let mut builder = http::Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(http::header::HOST, &destination.host_header);
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if signed {
            builder = builder.header(
                http::header::AUTHORIZATION,
                self.x_matrix(server, &method, path_and_query, &body_bytes)?,
            );
        }
        let request =
            builder.body(body_bytes).map_err(|e| Error::internal(format!("a request to {server}: {e}")))?;
        self.execute(request)
            .await
            .map_err(|e| Error::Upstream(format!("{server} could not be reached over federation: {e}")))
    }

    /// Send `request` directly or, with `federation_proxy`, through the proxy; a failure in
    /// words.
    async fn execute(
        &self,
        mut request: http::Request<Vec<u8>>,
    ) -> std::result::Result<reqwest::Response, String> {
        match &self.tunnel {
            Some(tunnel) => {
                request.headers_mut().insert(http::header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
                tunnel.send(request, self.timeout).await.map_err(|e| outbound::describe_error(e.as_ref()))
            }
            None => {
                let request =
                    reqwest::Request::try_from(request).map_err(|e| outbound::describe_error(&e))?;
                self.http.execute(request).await.map_err(|e| outbound::describe_error(&e))
            }
        }
    }

    /// The `Authorization` header of a request to `destination`.
    fn x_matrix(
        &self,
        destination: &ServerName,
        method: &http::Method,
        path_and_query: &str,
        body: &[u8],
    ) -> Result<HeaderValue> {
        let request = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(body)
            .map_err(|e| Error::internal(format!("signing a request: {e}")))?;
        let input =
            XMatrixSigningInput::new(self.server_name.clone(), destination.to_owned(), self.keys.key_pair());
        let header = XMatrix::sign_http_request(&request, input)
            .map_err(|e| Error::internal(format!("signing a request: {e}")))?;
        HeaderValue::from_str(&header.to_string())
            .map_err(|e| Error::internal(format!("X-Matrix header: {e}")))
    }

    /// A signed GET whose success is JSON; a remote 404 is `M_NOT_FOUND` with its words, any
    /// other refusal a 502 naming the server.
    pub async fn get_json(&self, server: &ServerName, path_and_query: &str) -> Result<JsonValue> {
        match self.request(server, http::Method::GET, path_and_query, None, true).await? {
            Ok(json) => Ok(json),
            Err(refusal) => Err(refusal_error(server, &refusal)),
        }
    }
}

/// A GET of `url` with no body.
fn get(url: &str) -> std::result::Result<http::Request<Vec<u8>>, String> {
    http::Request::get(url).body(Vec::new()).map_err(|e| format!("{url}: {e}"))
}

/// TLS through a proxy tunnel: the public roots the direct client trusts, and the
/// certificates of `federation_ca_file` (`ca_pem`).
fn tunnel_tls(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(pem) = ca_pem {
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| Error::internal(format!("federation_ca_file: {e}")))?;
            roots.add(certificate).map_err(|e| Error::internal(format!("federation_ca_file: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("federation TLS settings: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A federation answer's body as JSON (`null` when empty), read within `MAX_ANSWER_BYTES`.
async fn read_json(server: &ServerName, response: reqwest::Response) -> Result<JsonValue> {
    let status = response.status();
    let bytes = read_limited(response, MAX_ANSWER_BYTES)
        .await
        .map_err(|e| Error::Upstream(format!("{server} answered badly over federation: {e}")))?;
    if bytes.is_empty() {
        return Ok(JsonValue::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|_| Error::Upstream(format!("{server} answered something that is not JSON ({status})")))
}

/// The error for a remote server's refusal: its "not found" and "forbidden" are passed on
/// as such (as Synapse does: a client asking for a directory another server does not share,
/// or to join where that server refuses, hears why); anything else is the other server's
/// failure (`502`).
pub fn refusal_error(server: &ServerName, refusal: &RemoteRefusal) -> Error {
    let message = refusal.body.get("error").and_then(JsonValue::as_str).unwrap_or("no reason given");
    match refusal.status {
        404 => Error::not_found(format!("{server} answered: {message}")),
        403 => Error::forbidden(format!("{server} refused: {message}")),
        status => Error::Upstream(format!("{server} refused the request ({status}): {message}")),
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| outbound::describe_error(&e))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answer larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        service::clock::ManualClock,
        storage::{KvStore, memory::MemoryStore, tables::ALL_TABLES},
    };

    fn client(clock: Arc<ManualClock>, adjust: impl FnOnce(&mut Config)) -> FederationClient {
        let mut config = Config { allow_federation: true, ..Config::default() };
        adjust(&mut config);
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(ALL_TABLES));
        let keys =
            Arc::new(ServerKeys::load_or_create(&store, config.server_name.clone(), clock.clone()).unwrap());
        FederationClient::new(&config, keys, clock).unwrap()
    }

    #[tokio::test]
    async fn well_known_answers_are_cached_until_they_expire_on_the_clock() {
        let clock = Arc::new(ManualClock::new());
        let c = client(clock.clone(), |_| {});
        let now = clock.now_ms();
        c.remember_well_known("example.org", Some("matrix.example.org:443".into()), now + 600_000);
        assert_eq!(c.well_known("example.org").await, (Some("matrix.example.org:443".into()), 600_000));
        let server: OwnedServerName = "example.org".try_into().unwrap();
        let destination = c.resolve(&server).await.unwrap();
        assert_eq!(destination.base_url(), "https://matrix.example.org:443");
        assert_eq!(destination.host_header, "matrix.example.org:443");

        // Past its lifetime the answer is no longer used (the next resolution asks again).
        clock.advance_ms(599_999);
        assert_eq!(
            c.fresh_well_known("example.org", clock.now_ms()),
            Some((Some("matrix.example.org:443".into()), 1))
        );
        clock.advance_ms(1);
        assert_eq!(c.fresh_well_known("example.org", clock.now_ms()), None);
        // A remembered failure delegates nothing: SRV and the fallback decide.
        c.remember_well_known("broken.example", None, clock.now_ms() + WELL_KNOWN_ERROR_MS);
        assert_eq!(c.fresh_well_known("broken.example", clock.now_ms()), Some((None, WELL_KNOWN_ERROR_MS)));
    }

    #[tokio::test]
    async fn domain_lists_and_the_address_guard_refuse_before_any_connection() {
        let clock = Arc::new(ManualClock::new());
        let c = client(clock.clone(), |config| {
            config.federation_domain_denylist = vec!["*.evil.example".into()];
        });
        let evil: OwnedServerName = "a.evil.example".try_into().unwrap();
        assert!(c.check_server(&evil).is_err());
        let loopback: OwnedServerName = "127.0.0.1:1".try_into().unwrap();
        let error = c.get_json(&loopback, "/_matrix/federation/v1/version").await.unwrap_err();
        assert!(error.to_string().contains("not a public address"), "{error}");

        let only =
            client(clock, |config| config.federation_domain_allowlist = vec!["partner.example".into()]);
        assert!(only.check_server(&ServerName::parse("partner.example:8448").unwrap()).is_ok());
        assert!(only.check_server(&evil).is_err());
    }
}
