//! The HTTP side of one OpenID provider: its discovery document and key set (fetched when
//! first needed and kept for an hour), the authorization code exchange and the userinfo
//! request. Requests go through the outbound address guard: the hosts the operator configured
//! (the issuer's, and any endpoint set in the config) are trusted wherever they resolve to,
//! since a company's provider usually lives on its own network; any other host a discovery
//! document names is vetted like an address a user names (`ip_range_denylist` and
//! `ip_range_allowlist`). No redirects are followed; every answer is read up to a bounded
//! size, within a time limit.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value as JsonValue};

use super::jose::JwkSet;
use crate::{
    Error, Result,
    config::{ClientAuthMethod, Config, IdentityProviderConfig},
    service::outbound::{self, ip_guard::Policy},
};

/// The largest answer read from a provider.
const MAX_BODY: usize = 1024 * 1024;
/// How long a discovery document or key set is used before it is fetched again.
const CACHE_MS: u64 = 3600 * 1000;
/// A key set is fetched again for a token whose key it lacks (the provider rotated its
/// keys), but not more often than this.
const KEY_REFETCH_MS: u64 = 60 * 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What this server reads of a discovery document (or the configured endpoints).
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: String,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub id_token: Option<String>,
    pub access_token: Option<String>,
}

struct Cached<T> {
    value: Arc<T>,
    fetched_ms: u64,
}

pub struct ProviderClient {
    pub config: IdentityProviderConfig,
    /// The client secret (from the config or its file).
    pub secret: Option<String>,
    http: reqwest::Client,
    policy: Arc<Policy>,
    metadata: Mutex<Option<Cached<Metadata>>>,
    keys: Mutex<Option<Cached<JwkSet>>>,
}

impl ProviderClient {
    /// The client for one configured provider: reads its secret file and CA file, so a
    /// missing file stops the server at start-up with the key's name.
    pub fn new(config: IdentityProviderConfig, global: &Config) -> Result<Self> {
        let key = |name: &str| format!("identity_providers[{}].{name}", config.id);
        let secret = match (&config.client_secret, &config.client_secret_path) {
            (Some(secret), _) => Some(secret.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::internal(format!(
                            "{}: cannot read {}: {e}",
                            key("client_secret_path"),
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let configured = std::iter::once(Some(&config.issuer)).chain(
            [
                &config.authorization_endpoint,
                &config.token_endpoint,
                &config.userinfo_endpoint,
                &config.jwks_uri,
            ]
            .map(Option::as_ref),
        );
        let trusted_hosts = configured
            .flatten()
            .filter_map(|url| url::Url::parse(url).ok())
            .filter_map(|url| {
                url.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            })
            .collect();
        let policy = Arc::new(Policy {
            deny_ranges: global.ip_range_denylist.clone(),
            allow_ranges: global.ip_range_allowlist.clone(),
            trusted_hosts,
            ..Policy::default()
        });
        let mut builder = outbound::guarded_client_builder(
            &policy,
            CONNECT_TIMEOUT,
            concat!("conduit/", env!("CARGO_PKG_VERSION")),
            None,
        )
        .timeout(REQUEST_TIMEOUT);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                Error::internal(format!("{}: cannot read {}: {e}", key("ca_file"), path.display()))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::internal(format!("{}: {e}", key("ca_file"))))?;
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http =
            builder.build().map_err(|e| Error::internal(format!("HTTP client for {}: {e}", config.id)))?;
        Ok(Self { config, secret, http, policy, metadata: Mutex::new(None), keys: Mutex::new(None) })
    }

    fn unreachable(&self, what: &str, error: impl std::fmt::Display) -> Error {
        tracing::warn!(idp = %self.config.id, error = %error, "{what} failed");
        Error::Upstream(format!(
            "The identity provider {} could not be reached ({what} failed). Try again later, or tell \
             your administrator.",
            self.config.display_name()
        ))
    }

    /// The provider's endpoints: discovered (kept for an hour; a failed refresh keeps the
    /// document it had), or as configured.
    pub async fn metadata(&self, now_ms: u64) -> Result<Arc<Metadata>> {
        let cached = self
            .metadata
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| (Arc::clone(&c.value), c.fetched_ms));
        if let Some((value, fetched)) = &cached
            && now_ms.saturating_sub(*fetched) < CACHE_MS
        {
            return Ok(Arc::clone(value));
        }
        let fetched = if self.config.discover { self.discover().await } else { self.configured() };
        match (fetched, cached) {
            (Ok(metadata), _) => {
                let value = Arc::new(metadata);
                *self.metadata.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Cached { value: Arc::clone(&value), fetched_ms: now_ms });
                Ok(value)
            }
            (Err(_), Some((stale, _))) => Ok(stale),
            (Err(e), None) => Err(e),
        }
    }

    fn configured(&self) -> Result<Metadata> {
        let missing = || Error::internal(format!("identity provider {} lacks an endpoint", self.config.id));
        Ok(Metadata {
            issuer: self.config.issuer.clone(),
            authorization_endpoint: self.config.authorization_endpoint.clone().ok_or_else(missing)?,
            token_endpoint: self.config.token_endpoint.clone().ok_or_else(missing)?,
            userinfo_endpoint: self.config.userinfo_endpoint.clone(),
            jwks_uri: self.config.jwks_uri.clone().ok_or_else(missing)?,
            code_challenge_methods_supported: Vec::new(),
        })
    }

    async fn discover(&self) -> Result<Metadata> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
        let body = self.get_body(&url, None, "discovery").await?;
        let mut metadata: Metadata = serde_json::from_slice(&body).map_err(|e| {
            self.unreachable("discovery", format!("the discovery document is not valid: {e}"))
        })?;
        // OpenID Connect Discovery 1.0 §4.3: the document names exactly the configured issuer.
        if metadata.issuer != self.config.issuer {
            return Err(self.unreachable(
                "discovery",
                format!(
                    "the document names issuer {:?}, the configuration {:?}",
                    metadata.issuer, self.config.issuer
                ),
            ));
        }
        // Configured endpoints win over discovered ones.
        let config = &self.config;
        for (configured, discovered) in [
            (&config.authorization_endpoint, &mut metadata.authorization_endpoint),
            (&config.token_endpoint, &mut metadata.token_endpoint),
            (&config.jwks_uri, &mut metadata.jwks_uri),
        ] {
            if let Some(url) = configured {
                discovered.clone_from(url);
            }
        }
        if config.userinfo_endpoint.is_some() {
            metadata.userinfo_endpoint.clone_from(&config.userinfo_endpoint);
        }
        Ok(metadata)
    }

    /// The key set; fetched again when older than an hour, or when `stale` says a token
    /// named a key it lacks (at most once a minute).
    pub async fn keys(&self, now_ms: u64, stale: bool) -> Result<Arc<JwkSet>> {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| (Arc::clone(&c.value), c.fetched_ms));
        if let Some((value, fetched)) = &cached {
            let age = now_ms.saturating_sub(*fetched);
            if age < CACHE_MS && (!stale || age < KEY_REFETCH_MS) {
                return Ok(Arc::clone(value));
            }
        }
        let metadata = self.metadata(now_ms).await?;
        let body = self.get_body(&metadata.jwks_uri, None, "fetching the signing keys").await?;
        let keys = JwkSet::parse(&body).map_err(|e| self.unreachable("fetching the signing keys", e))?;
        let value = Arc::new(keys);
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Cached { value: Arc::clone(&value), fetched_ms: now_ms });
        Ok(value)
    }

    /// Exchange an authorization code at the token endpoint. The provider refusing it
    /// (`400`, e.g. a used code or a wrong PKCE verifier) is `403`; a provider that cannot be
    /// reached or fails is `502`.
    pub async fn exchange_code(
        &self,
        metadata: &Metadata,
        code: &str,
        redirect_uri: &str,
        verifier: Option<&str>,
    ) -> Result<TokenResponse> {
        let mut form =
            vec![("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect_uri)];
        if let Some(verifier) = verifier {
            form.push(("code_verifier", verifier));
        }
        self.vet(&metadata.token_endpoint, "the token request")?;
        let secret = self.secret.as_deref().unwrap_or_default();
        let mut request =
            self.http.post(&metadata.token_endpoint).header(reqwest::header::ACCEPT, "application/json");
        match self.config.auth_method() {
            ClientAuthMethod::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts form-encoded before they are joined.
                let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let credentials = format!("{}:{}", encode(&self.config.client_id), encode(secret));
                let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
                request = request.header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"));
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id", &self.config.client_id));
                form.push(("client_secret", secret));
            }
            ClientAuthMethod::None => form.push(("client_id", &self.config.client_id)),
        }
        let response =
            request.form(&form).send().await.map_err(|e| self.unreachable("the token request", e))?;
        let status = response.status();
        let body = read_limited(response).await.map_err(|e| self.unreachable("the token request", e))?;
        if status.is_client_error() {
            #[derive(Deserialize)]
            struct OauthError {
                error: String,
                #[serde(default)]
                error_description: Option<String>,
            }
            let reason = serde_json::from_slice::<OauthError>(&body)
                .map(|e| match e.error_description {
                    Some(description) => format!("{}: {description}", e.error),
                    None => e.error,
                })
                .unwrap_or_else(|_| format!("HTTP {status}"));
            tracing::info!(idp = %self.config.id, %reason, "the provider refused the authorization code");
            return Err(Error::forbidden(format!(
                "The identity provider {} refused the sign-in ({reason}). Start again from your app.",
                self.config.display_name()
            )));
        }
        if !status.is_success() {
            return Err(self.unreachable("the token request", format!("HTTP {status}")));
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.unreachable("the token request", format!("not JSON: {e}")))
    }

    /// The userinfo endpoint's claims for an access token.
    pub async fn userinfo(&self, metadata: &Metadata, access_token: &str) -> Result<Map<String, JsonValue>> {
        let endpoint = metadata.userinfo_endpoint.as_deref().ok_or_else(|| {
            Error::internal(format!("identity provider {} has no userinfo endpoint", self.config.id))
        })?;
        let body = self.get_body(endpoint, Some(access_token), "the userinfo request").await?;
        match serde_json::from_slice(&body) {
            Ok(JsonValue::Object(claims)) => Ok(claims),
            _ => Err(self.unreachable("the userinfo request", "the answer is not a JSON object")),
        }
    }

    /// Refuse a URL the guard would not let the client reach (before any connection: the
    /// resolver vets names again when it connects).
    fn vet(&self, url: &str, what: &str) -> Result<()> {
        let parsed = url::Url::parse(url).map_err(|e| self.unreachable(what, format!("{url}: {e}")))?;
        outbound::check_url(&self.policy, &parsed).map_err(|refusal| {
            tracing::warn!(idp = %self.config.id, %url, %refusal, "{what} refused by the outbound address guard");
            Error::Upstream(format!(
                "The identity provider {} names an address this server does not connect to ({refusal}). \
                 Tell your administrator: ip_range_allowlist can allow it.",
                self.config.display_name()
            ))
        })
    }

    async fn get_body(&self, url: &str, bearer: Option<&str>, what: &str) -> Result<Vec<u8>> {
        self.vet(url, what)?;
        let mut request = self.http.get(url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.unreachable(what, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.unreachable(what, format!("HTTP {status} from {url}")));
        }
        read_limited(response).await.map_err(|e| self.unreachable(what, e))
    }
}

/// The body, up to [`MAX_BODY`] bytes.
async fn read_limited(mut response: reqwest::Response) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
