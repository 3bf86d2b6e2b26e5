//! `Oidc`: this server as an OpenID Connect relying party of the configured identity
//! providers. It starts an authorization at a provider (state, nonce and PKCE verifier kept
//! here, bounded and expiring on the server's clock, and bound to the browser that started
//! it), finishes it at the callback (the code exchanged, the ID token's signature checked
//! against the provider's keys and its `iss`, `aud`, `azp`, `exp`, `iat` and `nonce` against
//! what was asked), applies the provider's claim requirements and user mapping, and yields
//! the [`Identity`]; and it validates back-channel logout tokens. What the identity is used
//! for (a login, user-interactive auth, later the OAuth 2.0 server) is the caller's
//! [`Purpose`], carried through untouched. Owns no table: authorizations in flight live in
//! memory (a restart makes users start again).

pub mod jose;
mod provider;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use serde_json::{Map, Value as JsonValue};
use sha2::{Digest as _, Sha256};

use self::{jose::JoseError, provider::ProviderClient};
use super::{clock::Clock, passwords::random_string};
use crate::{
    Error, Result,
    config::{Config, IdentityProviderConfig, PkceMethod, UserProfileMethod},
    matrix::user_id::localpart_from_external,
};

/// Where providers send the browser back: `<public base URL>` + this.
pub const CALLBACK_PATH: &str = "/_synapse/client/oidc/callback";
/// Where providers post logout tokens.
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/_synapse/client/oidc/backchannel_logout";
/// How long an authorization may take, from the redirect to the callback.
const AUTHORIZATION_LIFETIME_MS: u64 = 15 * 60 * 1000;
/// Most authorizations in flight; past it the oldest is forgotten.
const MAX_PENDING: usize = 10_000;
/// Clock difference allowed between this server and a provider, for `exp` and `iat`.
const LEEWAY_SECS: u64 = 60;
/// How old a logout token may be (its `iat`) and still be honoured.
const LOGOUT_TOKEN_MAX_AGE_SECS: u64 = 10 * 60;
/// The `events` member of a back-channel logout token.
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What the caller will do with the identity once the provider vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Legacy single sign-on: a login token for the client at `redirect_url`.
    Login { redirect_url: String },
    /// User-interactive auth: complete the `m.login.sso` stage of this session.
    UiAuth { session_id: String },
    /// Sign in to this server's own pages (OAuth 2.0 authorization, the account page), then
    /// go on to `then`, a path on this server.
    SignIn { then: String },
}

/// An authorization started: where to send the browser, and the value of the cookie that
/// binds the authorization to it (the same one it had, or a new one).
#[derive(Debug)]
pub struct Started {
    pub location: String,
    pub browser: String,
}

/// A user as an identity provider vouched for them, mapped by its configuration.
#[derive(Clone, Debug)]
pub struct Identity {
    pub idp_id: String,
    /// The provider's name, for messages.
    pub idp_name: String,
    /// The provider's stable ID of the user (`sub`).
    pub subject: String,
    /// The provider's session (`sid`), when it names one: back-channel logout ends it.
    pub sid: Option<String>,
    /// The localpart the mapping gives (lower-cased and escaped); empty if it gave nothing.
    pub localpart: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// Every claim, as the provider gave them.
    pub claims: Map<String, JsonValue>,
}

/// A finished authorization.
#[derive(Debug)]
pub struct Finished {
    pub purpose: Purpose,
    pub identity: Identity,
}

/// A callback that failed, with what is known of it (for the audit log and the page shown).
#[derive(Debug)]
pub struct Refused {
    pub idp_id: Option<String>,
    pub purpose: Option<Purpose>,
    /// The provider's user, when the refusal came after the ID token named them (a claim
    /// requirement, the mapping).
    pub subject: Option<String>,
    pub error: Error,
}

/// The callback's query parameters.
#[derive(Debug, Default)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    /// RFC 9207's `iss`, when the provider sends it.
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// What a valid logout token asks to end.
#[derive(Debug)]
pub struct LogoutRequest {
    pub idp_id: String,
    /// The provider user; `None` when the token names only a session, or when the provider
    /// is configured to ignore it (`backchannel_logout_ignore_sub`).
    pub subject: Option<String>,
    pub sid: Option<String>,
}

struct Pending {
    idp_id: String,
    nonce: String,
    verifier: Option<String>,
    /// SHA-256 of the browser cookie that started it.
    browser_hash: [u8; 32],
    purpose: Purpose,
    expires_ms: u64,
}

#[derive(Default)]
struct PendingStore {
    by_state: HashMap<String, Pending>,
    /// States in the order they were made, for expiry and eviction.
    order: VecDeque<String>,
}

pub struct Oidc {
    providers: Vec<ProviderClient>,
    clock: Arc<dyn Clock>,
    callback_url: String,
    pending: Mutex<PendingStore>,
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn claim_str<'a>(claims: &'a Map<String, JsonValue>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(JsonValue::as_str)
}

fn claim_secs(claims: &Map<String, JsonValue>, name: &str) -> Option<u64> {
    claims.get(name).and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
}

/// Whether `aud` (a string or a list) names `client_id`, and how many audiences it names.
fn audience(claims: &Map<String, JsonValue>, client_id: &str) -> (bool, usize) {
    match claims.get("aud") {
        Some(JsonValue::String(aud)) => (aud == client_id, 1),
        Some(JsonValue::Array(auds)) => (auds.iter().any(|a| a.as_str() == Some(client_id)), auds.len()),
        _ => (false, 0),
    }
}

impl Oidc {
    pub fn new(config: &Config, clock: Arc<dyn Clock>) -> Result<Self> {
        let providers = config
            .identity_providers
            .iter()
            .cloned()
            .map(|provider| ProviderClient::new(provider, config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            providers,
            clock,
            callback_url: format!("{}{CALLBACK_PATH}", config.public_base_url()),
            pending: Mutex::new(PendingStore::default()),
        })
    }

    /// The configured providers, in configuration order.
    pub fn providers(&self) -> impl Iterator<Item = &IdentityProviderConfig> {
        self.providers.iter().map(|p| &p.config)
    }

    fn provider(&self, idp_id: &str) -> Option<&ProviderClient> {
        self.providers.iter().find(|p| p.config.id == idp_id)
    }

    /// Start an authorization at provider `idp_id` for `purpose`, bound to the browser
    /// cookie `browser` (a new one is made when the browser has none).
    pub async fn start(&self, idp_id: &str, purpose: Purpose, browser: Option<&str>) -> Result<Started> {
        let provider = self.provider(idp_id).ok_or_else(|| Error::not_found("Unknown identity provider"))?;
        let now = self.clock.now_ms();
        let metadata = provider.metadata(now).await?;
        let state = random_string(32);
        let nonce = random_string(32);
        let pkce = match provider.config.pkce_method {
            PkceMethod::Always => true,
            PkceMethod::Never => false,
            PkceMethod::Auto => metadata.code_challenge_methods_supported.iter().any(|m| m == "S256"),
        };
        let verifier = pkce.then(|| random_string(64));
        let mut url = url::Url::parse(&metadata.authorization_endpoint).map_err(|e| {
            Error::Upstream(format!("The identity provider's authorization endpoint is not a URL: {e}"))
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &provider.config.client_id)
                .append_pair("redirect_uri", &self.callback_url)
                .append_pair("scope", &provider.config.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("nonce", &nonce);
            if let Some(verifier) = &verifier {
                let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256(verifier));
                query.append_pair("code_challenge", &challenge).append_pair("code_challenge_method", "S256");
            }
        }
        let browser = match browser {
            Some(cookie)
                if (16..=128).contains(&cookie.len())
                    && cookie.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                cookie.to_owned()
            }
            _ => random_string(32),
        };
        let pending = Pending {
            idp_id: idp_id.to_owned(),
            nonce,
            verifier,
            browser_hash: sha256(&browser),
            purpose,
            expires_ms: now + AUTHORIZATION_LIFETIME_MS,
        };
        self.remember(state, pending, now);
        Ok(Started { location: url.into(), browser })
    }

    fn remember(&self, state: String, pending: Pending, now: u64) {
        let mut store = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        // Drop what expired or was used (every authorization lives as long, so the oldest
        // expire first), then the oldest when full.
        while let Some(oldest) = store.order.front() {
            let live = store.by_state.get(oldest).is_some_and(|p| p.expires_ms > now);
            if live && store.by_state.len() < MAX_PENDING {
                break;
            }
            let oldest = store.order.pop_front().unwrap_or_default();
            store.by_state.remove(&oldest);
        }
        store.order.push_back(state.clone());
        store.by_state.insert(state, pending);
    }

    /// Authorizations in flight (for tests of the bound).
    pub fn pending_authorizations(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).by_state.len()
    }

    /// Finish an authorization at the callback. The state is used up whatever happens.
    pub async fn finish(&self, params: CallbackParams, browser: Option<&str>) -> Result<Finished, Refused> {
        let refused = |error| Refused { idp_id: None, purpose: None, subject: None, error };
        let state = params
            .state
            .as_deref()
            .ok_or_else(|| refused(Error::missing_param("The provider sent no state")))?;
        let now = self.clock.now_ms();
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_state
            .remove(state)
            .filter(|p| p.expires_ms > now)
            .ok_or_else(|| {
                refused(Error::forbidden(
                    "This sign-in is unknown or has expired (or was already used). Start again from your app.",
                ))
            })?;
        let refused_as = |subject, error| Refused {
            idp_id: Some(pending.idp_id.clone()),
            purpose: Some(pending.purpose.clone()),
            subject,
            error,
        };
        let refused = |error| refused_as(None, error);
        // The browser that comes back must be the one that left (spec: "guard against
        // unsolicited authentication attempts").
        if browser.is_none_or(|b| sha256(b) != pending.browser_hash) {
            return Err(refused(Error::forbidden(
                "This sign-in was started in another browser, or its cookie was lost. Start again from your app.",
            )));
        }
        let provider = self
            .provider(&pending.idp_id)
            .ok_or_else(|| refused(Error::internal("the provider of a pending sign-in is gone")))?;
        if let Some(error) = &params.error {
            let description =
                params.error_description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
            return Err(refused(Error::forbidden(format!(
                "The identity provider {} did not sign you in ({error}{description}).",
                provider.config.display_name()
            ))));
        }
        // RFC 9207: an `iss` names the provider that answered, against mix-ups.
        if params.iss.as_deref().is_some_and(|iss| iss != provider.config.issuer) {
            return Err(refused(Error::forbidden("The answer came from another identity provider.")));
        }
        let code = params
            .code
            .as_deref()
            .ok_or_else(|| refused(Error::missing_param("The provider sent no code")))?;
        let (subject, claims) =
            self.verified_identity(provider, &pending, code, now).await.map_err(refused)?;
        match self.map(provider, subject.clone(), claims) {
            Ok(identity) => Ok(Finished { purpose: pending.purpose.clone(), identity }),
            Err(error) => Err(refused_as(Some(subject), error)),
        }
    }

    /// The subject and claims of the ID token the code is exchanged for (with the userinfo
    /// endpoint's claims, when configured), every check passed.
    async fn verified_identity(
        &self,
        provider: &ProviderClient,
        pending: &Pending,
        code: &str,
        now: u64,
    ) -> Result<(String, Map<String, JsonValue>)> {
        let metadata = provider.metadata(now).await?;
        let tokens =
            provider.exchange_code(&metadata, code, &self.callback_url, pending.verifier.as_deref()).await?;
        let id_token = tokens.id_token.ok_or_else(|| {
            Error::Upstream("The identity provider answered without an ID token.".to_owned())
        })?;
        let mut claims = self.verified_claims(provider, &id_token, now).await?;
        let invalid = |why: &str| {
            tracing::warn!(idp = %provider.config.id, why, "refused an ID token");
            Error::forbidden(format!("The identity provider's answer could not be verified: {why}."))
        };
        let (ours, count) = audience(&claims, &provider.config.client_id);
        if !ours {
            return Err(invalid("it is meant for another client"));
        }
        // OpenID Connect Core §3.1.3.7: several audiences need an `azp`, which must be us.
        match claim_str(&claims, "azp") {
            Some(azp) if azp != provider.config.client_id => {
                return Err(invalid("it was issued to another client"));
            }
            None if count > 1 => return Err(invalid("it names several audiences and no authorized party")),
            _ => {}
        }
        let now_secs = now / 1000;
        match claim_secs(&claims, "exp") {
            Some(exp) if exp + LEEWAY_SECS > now_secs => {}
            _ => return Err(invalid("it has expired")),
        }
        match claim_secs(&claims, "iat") {
            Some(iat) if iat <= now_secs + LEEWAY_SECS => {}
            _ => return Err(invalid("it has no valid issue time")),
        }
        if claim_str(&claims, "nonce") != Some(pending.nonce.as_str()) {
            return Err(invalid("its nonce is not the one this sign-in sent"));
        }
        let subject = match claim_str(&claims, "sub") {
            Some(sub) if !sub.is_empty() && sub.len() <= 255 => sub.to_owned(),
            _ => return Err(invalid("it names no subject")),
        };
        if provider.config.user_profile_method == UserProfileMethod::UserinfoEndpoint {
            let access_token = tokens.access_token.ok_or_else(|| {
                Error::Upstream("The identity provider answered without an access token.".to_owned())
            })?;
            let userinfo = provider.userinfo(&metadata, &access_token).await?;
            // OpenID Connect Core §5.3.2: the answer must be about the same user.
            if claim_str(&userinfo, "sub") != Some(subject.as_str()) {
                return Err(invalid("its userinfo answer is about another user"));
            }
            claims.extend(userinfo);
        }
        Ok((subject, claims))
    }

    /// The claims of a token whose signature and issuer check out (keys fetched again once
    /// when the token names a key the cached set lacks).
    async fn verified_claims(
        &self,
        provider: &ProviderClient,
        token: &str,
        now: u64,
    ) -> Result<Map<String, JsonValue>> {
        let invalid = |why: String| {
            tracing::warn!(idp = %provider.config.id, %why, "refused a token");
            Error::forbidden(format!("The identity provider's answer could not be verified: {why}."))
        };
        let jws = jose::decode(token).map_err(|e| invalid(e.to_string()))?;
        let secret = provider.secret.as_deref().map(str::as_bytes);
        let keys = provider.keys(now, false).await?;
        match jws.verify(&keys, secret) {
            Ok(()) => {}
            Err(JoseError::NoKey) => {
                let keys = provider.keys(now, true).await?;
                jws.verify(&keys, secret).map_err(|e| invalid(e.to_string()))?;
            }
            Err(e) => return Err(invalid(e.to_string())),
        }
        if claim_str(&jws.claims, "iss") != Some(provider.config.issuer.as_str()) {
            return Err(invalid("it comes from another issuer".to_owned()));
        }
        Ok(jws.claims)
    }

    /// The claim requirements, then the user mapping.
    fn map(
        &self,
        provider: &ProviderClient,
        subject: String,
        claims: Map<String, JsonValue>,
    ) -> Result<Identity> {
        let config = &provider.config;
        if let Some(failed) = config.attribute_requirements.iter().find(|r| !r.holds(&claims)) {
            tracing::info!(idp = %config.id, %subject, attribute = %failed.attribute, "sign-in refused by a claim requirement");
            return Err(Error::forbidden(format!(
                "Your account at {} is not allowed to use this server.",
                config.display_name()
            )));
        }
        let mapping_failed = |what: &str, e: String| {
            Error::forbidden(format!(
                "Your account at {} cannot be mapped ({what}: {e}).",
                config.display_name()
            ))
        };
        let mapping = &config.user_mapping;
        let localpart =
            mapping.localpart_template.render(&claims).map_err(|e| mapping_failed("user name", e))?;
        let display_name =
            mapping.display_name_template.render(&claims).map_err(|e| mapping_failed("display name", e))?;
        let email = match &mapping.email_template {
            Some(template) => template.render(&claims).map_err(|e| mapping_failed("email", e))?,
            None => String::new(),
        };
        let non_empty = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        Ok(Identity {
            idp_id: config.id.clone(),
            idp_name: config.display_name().to_owned(),
            subject,
            sid: claim_str(&claims, "sid").filter(|s| !s.is_empty()).map(str::to_owned),
            localpart: localpart_from_external(localpart.trim()),
            display_name: non_empty(display_name),
            email: non_empty(email),
            claims,
        })
    }

    /// Validate a back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.6):
    /// from a provider with back-channel logout on (found by the token's `iss`), signed by
    /// it, for us, recent, with the logout event, a `jti`, a `sub` or `sid`, and no `nonce`.
    pub async fn logout_request(&self, token: &str) -> Result<LogoutRequest> {
        let invalid = |why: &str| Error::invalid_param(format!("Invalid logout token: {why}"));
        let unverified = jose::decode(token).map_err(|e| invalid(&e.to_string()))?;
        let issuer = claim_str(&unverified.claims, "iss").ok_or_else(|| invalid("no issuer"))?;
        let provider = self
            .providers
            .iter()
            .find(|p| {
                p.config.backchannel_logout_enabled
                    && p.config.issuer == issuer
                    && audience(&unverified.claims, &p.config.client_id).0
            })
            .ok_or_else(|| invalid("no provider with back-channel logout matches its issuer and audience"))?;
        let now = self.clock.now_ms();
        let claims = self.verified_claims(provider, token, now).await.map_err(|e| match e {
            Error::Matrix { message, .. } => Error::invalid_param(message),
            other => other,
        })?;
        let now_secs = now / 1000;
        match claim_secs(&claims, "iat") {
            Some(iat) if iat <= now_secs + LEEWAY_SECS && iat + LOGOUT_TOKEN_MAX_AGE_SECS >= now_secs => {}
            _ => return Err(invalid("its issue time is missing or too far from now")),
        }
        if claim_secs(&claims, "exp").is_some_and(|exp| exp + LEEWAY_SECS <= now_secs) {
            return Err(invalid("it has expired"));
        }
        if !claims
            .get("events")
            .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT))
            .is_some_and(JsonValue::is_object)
        {
            return Err(invalid("it carries no back-channel logout event"));
        }
        if claims.contains_key("nonce") {
            return Err(invalid("it carries a nonce"));
        }
        if claim_str(&claims, "jti").is_none_or(str::is_empty) {
            return Err(invalid("it has no jti"));
        }
        let sub = claim_str(&claims, "sub").filter(|s| !s.is_empty()).map(str::to_owned);
        let sid = claim_str(&claims, "sid").filter(|s| !s.is_empty()).map(str::to_owned);
        if sub.is_none() && sid.is_none() {
            return Err(invalid("it names neither a subject nor a session"));
        }
        let subject = if provider.config.backchannel_logout_ignore_sub && sid.is_some() { None } else { sub };
        Ok(LogoutRequest { idp_id: provider.config.id.clone(), subject, sid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::clock::ManualClock;

    fn pending(purpose: &str, expires_ms: u64) -> Pending {
        Pending {
            idp_id: "corp".to_owned(),
            nonce: String::new(),
            verifier: None,
            browser_hash: sha256("browser"),
            purpose: Purpose::UiAuth { session_id: purpose.to_owned() },
            expires_ms,
        }
    }

    #[test]
    fn authorizations_in_flight_are_bounded_and_expire() {
        let clock = Arc::new(ManualClock::new());
        let oidc = Oidc::new(&Config::default(), clock.clone()).unwrap();
        let now = clock.now_ms();
        for i in 0..MAX_PENDING + 5 {
            oidc.remember(format!("state{i}"), pending("s", now + AUTHORIZATION_LIFETIME_MS), now);
        }
        // Past the bound the oldest went first.
        assert_eq!(oidc.pending_authorizations(), MAX_PENDING);
        let store = oidc.pending.lock().unwrap();
        assert!(
            !store.by_state.contains_key("state0")
                && store.by_state.contains_key(&format!("state{}", MAX_PENDING + 4))
        );
        drop(store);
        // Once they expired, the next one sweeps them away.
        let later = now + AUTHORIZATION_LIFETIME_MS + 1;
        oidc.remember("fresh".to_owned(), pending("s", later + AUTHORIZATION_LIFETIME_MS), later);
        assert_eq!(oidc.pending_authorizations(), 1);
    }
}
