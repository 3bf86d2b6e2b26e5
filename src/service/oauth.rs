//! `OAuthServer`: the built-in OAuth 2.0 authorization server of the spec's OAuth 2.0 API
//! (MSC3861, MSC2964–2967), which Element X signs in with. It publishes the server metadata,
//! registers public clients dynamically (RFC 7591, deduplicated), runs the authorization code
//! grant with PKCE `S256` (the user signs in on this server's page with their password —
//! local or the directory's — or through an identity provider of [`Sso`], then consents),
//! exchanges codes for a device's tokens (each grant's `urn:matrix:client:device:` scope is a
//! device; access tokens expire, refresh tokens rotate with a short grace for a lost answer),
//! revokes tokens (RFC 7009: the device goes), and keeps the browser signed in for the
//! account page. Owns the `oauth_clients` and `browser_sessions` tables; authorizations in
//! flight and unspent codes live in memory, bounded and expiring on the server's clock.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Value as JsonValue, json};
use sha2::{Digest as _, Sha256};

use super::{
    accounts::Accounts,
    audit::{self, Audit},
    clock::Clock,
    context::RequestContext,
    devices::{DeviceView, Devices},
    passwords::random_string,
    rate_limits::{Limiter, RateLimits},
    users::Users,
};
use crate::{
    Error, Result,
    config::Config,
    matrix::oauth::{self as protocol, ClientMetadata},
    storage::{
        KvStore, Table,
        tables::{
            BROWSER_SESSIONS, BrowserSessionRecord, OAUTH_CLIENTS, OAuthClientRecord, SsoSessionRecord,
            TokenHash,
        },
    },
};

/// Where this server's OAuth 2.0 endpoints and pages are.
pub const AUTHORIZE_PATH: &str = "/_conduit/oauth2/authorize";
pub const TOKEN_PATH: &str = "/_conduit/oauth2/token";
pub const REVOKE_PATH: &str = "/_conduit/oauth2/revoke";
pub const REGISTER_PATH: &str = "/_conduit/oauth2/register";
pub const CONSENT_PATH: &str = "/_conduit/oauth2/consent";
pub const SIGN_IN_PATH: &str = "/_conduit/sign-in";
pub const ACCOUNT_PATH: &str = "/_conduit/account";
/// The prefix every `then` of a sign-in must start with: a sign-in only ever leads on to
/// this server's own pages.
const PAGES_PREFIX: &str = "/_conduit/";

/// How long an authorization may take from the client's request to the consent, and how
/// long a code lives before the client exchanges it.
const AUTHORIZATION_LIFETIME_MS: u64 = 15 * 60 * 1000;
const CODE_LIFETIME_MS: u64 = 10 * 60 * 1000;
/// Most authorizations and codes held; past it the oldest are forgotten.
const MAX_IN_FLIGHT: usize = 10_000;
/// The longest state and cookie values accepted.
const MAX_STATE_LEN: usize = 512;
const MAX_COOKIE_LEN: usize = 128;
/// Characters of a code, a cookie and an authorization ID: about 190 bits.
const SECRET_LEN: usize = 32;

/// The account management actions the account page supports: the spec's names, then
/// MSC4191's first names for the same three device actions, which clients built before the
/// rename still send.
pub const ACCOUNT_ACTIONS: &[&str] = &[
    "org.matrix.profile",
    "org.matrix.devices_list",
    "org.matrix.device_view",
    "org.matrix.device_delete",
    "org.matrix.cross_signing_reset",
    "org.matrix.sessions_list",
    "org.matrix.session_view",
    "org.matrix.session_end",
];

/// The authorization request's parameters (RFC 6749 §4.1.1, RFC 7636 §4.3), as given.
#[derive(Debug, Default)]
pub struct AuthorizationParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub response_mode: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
}

/// How an authorization request is answered.
#[derive(Debug)]
pub enum AuthorizationStart {
    /// Valid: on to sign-in and consent, at `consent_path` (the sign-in page first when the
    /// browser is not signed in).
    Proceed { consent_path: String },
    /// The client or redirect URI cannot be trusted: an error page, never a redirect.
    Refused(Error),
    /// Anything else wrong: back to the client with `error` in its redirect URI.
    RedirectError { location: String },
}

/// An authorization waiting for the user.
#[derive(Clone, Debug)]
struct Authorization {
    client_id: String,
    client: ClientMetadata,
    redirect_uri: String,
    fragment: bool,
    scope: protocol::Scope,
    state: Option<String>,
    code_challenge: String,
    expires_ms: u64,
}

/// A code given to a client, until it exchanges it.
#[derive(Clone, Debug)]
struct Grant {
    client_id: String,
    client_name: String,
    redirect_uri: String,
    code_challenge: String,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
    scope: String,
    sso: Option<SsoSessionRecord>,
    expires_ms: u64,
}

/// What is kept in memory, each map with its insertion order for eviction.
#[derive(Default)]
struct InFlight {
    authorizations: HashMap<String, Authorization>,
    authorization_order: VecDeque<String>,
    codes: HashMap<TokenHash, Grant>,
    code_order: VecDeque<TokenHash>,
}

/// What the consent page shows.
#[derive(Debug)]
pub struct ConsentView {
    pub client_name: String,
    pub client_uri: String,
    pub tos_uri: Option<String>,
    pub policy_uri: Option<String>,
    pub user_id: OwnedUserId,
    pub device_id: String,
    /// Whether the device exists already (the client signs in again as it).
    pub known_device: bool,
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct BrowserSession {
    pub user_id: OwnedUserId,
    /// The value forms on this session's pages must echo: it proves the form came from a page
    /// this server showed to this browser.
    pub csrf: String,
    sso: Option<SsoSessionRecord>,
}

/// A token endpoint answer (RFC 6749 §5.1).
#[derive(Debug)]
pub struct TokenAnswer {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_secs: Option<u64>,
    pub scope: Option<String>,
}

fn hash(secret: &str) -> TokenHash {
    TokenHash(Sha256::digest(secret.as_bytes()).into())
}

/// The CSRF value of a browser session: derived from its cookie, which no other site knows.
fn csrf_of(cookie: &str) -> String {
    let digest = Sha256::digest(format!("conduit-csrf:{cookie}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn invalid_request(description: impl Into<String>) -> Error {
    Error::oauth("invalid_request", description)
}

fn invalid_grant(description: impl Into<String>) -> Error {
    Error::oauth("invalid_grant", description)
}

/// A sign-in may lead on only to this server's own pages: a path, never another site.
pub fn check_then(then: &str) -> Result<()> {
    let local = then.starts_with(PAGES_PREFIX) && !then.contains("//") && !then.contains('\\');
    if !local || then.len() > 2048 {
        return Err(Error::invalid_param("Not a page of this server"));
    }
    Ok(())
}

pub struct OAuthServer {
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    accounts: Arc<Accounts>,
    devices: Arc<Devices>,
    users: Arc<Users>,
    audit: Arc<Audit>,
    rate_limits: Arc<RateLimits>,
    clients: Table<String, OAuthClientRecord>,
    sessions: Table<TokenHash, BrowserSessionRecord>,
    in_flight: Mutex<InFlight>,
}

impl OAuthServer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        accounts: Arc<Accounts>,
        devices: Arc<Devices>,
        users: Arc<Users>,
        audit: Arc<Audit>,
        rate_limits: Arc<RateLimits>,
    ) -> Self {
        Self {
            config,
            clock,
            accounts,
            devices,
            users,
            audit,
            rate_limits,
            clients: OAUTH_CLIENTS.open(store),
            sessions: BROWSER_SESSIONS.open(store),
            in_flight: Mutex::new(InFlight::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.oauth.enabled
    }

    fn ensure_enabled(&self) -> Result<()> {
        if !self.enabled() {
            return Err(Error::unrecognized("The OAuth 2.0 API is not enabled on this server"));
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.public_base_url())
    }

    /// `GET /_matrix/client/v1/auth_metadata` (RFC 8414 with the spec's extensions).
    pub fn metadata(&self) -> Result<JsonValue> {
        self.ensure_enabled()?;
        Ok(json!({
            "issuer": format!("{}/", self.config.public_base_url()),
            "authorization_endpoint": self.url(AUTHORIZE_PATH),
            "token_endpoint": self.url(TOKEN_PATH),
            "revocation_endpoint": self.url(REVOKE_PATH),
            "registration_endpoint": self.url(REGISTER_PATH),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query", "fragment"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "scopes_supported": [protocol::SCOPE_API, format!("{}*", protocol::SCOPE_DEVICE)],
            "account_management_uri": self.url(ACCOUNT_PATH),
            "account_management_actions_supported": ACCOUNT_ACTIONS,
        }))
    }

    /// Dynamic client registration (RFC 7591): the client ID and the metadata as registered.
    /// The same metadata registered again gets the same ID.
    pub fn register_client(&self, context: &RequestContext, body: &JsonValue) -> Result<JsonValue> {
        self.ensure_enabled()?;
        let metadata =
            protocol::parse_client_metadata(body).map_err(|v| Error::oauth(v.code, v.description))?;
        let client_id = metadata.client_id();
        if self.clients.get(&client_id)?.is_none() {
            // New clients are counted as registrations of the address they come from, so no
            // one fills the table.
            self.rate_limits.check(Limiter::Registration, &context.client_ip, None)?;
            let record =
                OAuthClientRecord { metadata: metadata.to_json(""), registered_ms: self.clock.now_ms() };
            self.clients.insert(&client_id, &record)?;
            let entry = audit::Entry::success("oauth2.client_register").params(json!({
                "client_id": client_id,
                "client_name": metadata.client_name,
                "client_uri": metadata.client_uri,
                "redirect_uris": metadata.redirect_uris,
            }));
            self.audit.record_or_log(context, entry);
        }
        Ok(metadata.to_json(&client_id))
    }

    fn client(&self, client_id: &str) -> Result<Option<ClientMetadata>> {
        if client_id.len() > 64 {
            return Ok(None);
        }
        let Some(record) = self.clients.get(&client_id.to_owned())? else { return Ok(None) };
        let metadata = protocol::parse_client_metadata(&record.metadata)
            .map_err(|v| Error::internal(format!("stored client {client_id}: {}", v.description)))?;
        Ok(Some(metadata))
    }

    /// `GET /_conduit/oauth2/authorize`: check the request (RFC 6749 §4.1.2.1: problems with
    /// the client or its redirect URI are shown to the user, anything else goes back to the
    /// client) and hold it while the user signs in and consents.
    pub fn start_authorization(&self, params: AuthorizationParams) -> Result<AuthorizationStart> {
        self.ensure_enabled()?;
        let refused = |message: &str| Ok(AuthorizationStart::Refused(Error::invalid_param(message)));
        let Some(client_id) = params.client_id else {
            return refused("The request names no client (client_id)");
        };
        let Some(client) = self.client(&client_id)? else {
            return refused(
                "This app is not registered with this server; start signing in again from the app",
            );
        };
        let Some(redirect_uri) = params.redirect_uri else {
            return refused("The request names no redirect URI");
        };
        if !client.redirect_uri_matches(&redirect_uri) {
            return refused("The redirect URI is not one this app registered");
        }
        let fragment = match params.response_mode.as_deref() {
            None | Some("query") => false,
            Some("fragment") => true,
            Some(_) => {
                return Ok(self.redirect_error(
                    &redirect_uri,
                    false,
                    params.state.as_deref(),
                    "invalid_request",
                    "Unsupported response_mode",
                ));
            }
        };
        let state = params.state;
        let back = |code: &str, description: &str| {
            Ok(self.redirect_error(&redirect_uri, fragment, state.as_deref(), code, description))
        };
        if state.as_ref().is_some_and(|s| s.len() > MAX_STATE_LEN) {
            return back("invalid_request", "state is too long");
        }
        if params.response_type.as_deref() != Some("code") {
            return back("unsupported_response_type", "Only response_type=code is supported");
        }
        if !client.grant_types.iter().any(|g| g == "authorization_code") {
            return back(
                "unauthorized_client",
                "This client did not register for the authorization code grant",
            );
        }
        let (Some(challenge), Some("S256")) =
            (params.code_challenge, params.code_challenge_method.as_deref())
        else {
            return back("invalid_request", "PKCE with code_challenge_method=S256 is required");
        };
        if !protocol::valid_code_challenge(&challenge) {
            return back("invalid_request", "code_challenge is not an S256 challenge");
        }
        let scope = match protocol::parse_scope(params.scope.as_deref().unwrap_or_default()) {
            Ok(scope) => scope,
            Err(v) => return back(v.code, &v.description),
        };
        if params.prompt.as_deref().is_some_and(|p| p.split(' ').any(|v| v == "create")) {
            return back("invalid_request", "Accounts are not made here: sign in with your company account");
        }
        let id = random_string(SECRET_LEN);
        let authorization = Authorization {
            client_id,
            client,
            redirect_uri,
            fragment,
            scope,
            state,
            code_challenge: challenge,
            expires_ms: self.clock.now_ms().saturating_add(AUTHORIZATION_LIFETIME_MS),
        };
        let mut in_flight = self.lock()?;
        self.sweep(&mut in_flight);
        in_flight.authorizations.insert(id.clone(), authorization);
        in_flight.authorization_order.push_back(id.clone());
        Ok(AuthorizationStart::Proceed { consent_path: format!("{CONSENT_PATH}?authorization={id}") })
    }

    fn redirect_error(
        &self,
        redirect_uri: &str,
        fragment: bool,
        state: Option<&str>,
        code: &str,
        description: &str,
    ) -> AuthorizationStart {
        let mut params = vec![("error", code), ("error_description", description)];
        if let Some(state) = state {
            params.push(("state", state));
        }
        let issuer = format!("{}/", self.config.public_base_url());
        params.push(("iss", &issuer));
        AuthorizationStart::RedirectError {
            location: protocol::authorization_redirect(redirect_uri, fragment, &params),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, InFlight>> {
        self.in_flight.lock().map_err(|_| Error::internal("OAuth state lock poisoned"))
    }

    /// Forget what expired, and the oldest past the bound.
    fn sweep(&self, in_flight: &mut InFlight) {
        let now = self.clock.now_ms();
        let InFlight { authorizations, authorization_order, codes, code_order } = in_flight;
        authorizations.retain(|_, a| a.expires_ms > now);
        authorization_order.retain(|id| authorizations.contains_key(id));
        while authorization_order.len() >= MAX_IN_FLIGHT {
            if let Some(oldest) = authorization_order.pop_front() {
                authorizations.remove(&oldest);
            }
        }
        codes.retain(|_, g| g.expires_ms > now);
        code_order.retain(|code| codes.contains_key(code));
        while code_order.len() >= MAX_IN_FLIGHT {
            if let Some(oldest) = code_order.pop_front() {
                codes.remove(&oldest);
            }
        }
    }

    fn authorization(&self, id: &str) -> Result<Authorization> {
        let now = self.clock.now_ms();
        self.lock()?.authorizations.get(id).filter(|a| a.expires_ms > now).cloned().ok_or_else(|| {
            Error::forbidden("This sign-in has expired or was already used. Start again from your app.")
        })
    }

    /// The consent page's content for a signed-in browser.
    pub fn consent_view(&self, authorization: &str, session: &BrowserSession) -> Result<ConsentView> {
        let authorization = self.authorization(authorization)?;
        let known_device =
            self.devices.get(&session.user_id, authorization.scope.device_id.as_str().into())?.is_some();
        Ok(ConsentView {
            client_name: authorization.client.display_name(),
            client_uri: authorization.client.client_uri.clone(),
            tos_uri: authorization.client.tos_uri.clone(),
            policy_uri: authorization.client.policy_uri.clone(),
            user_id: session.user_id.clone(),
            device_id: authorization.scope.device_id.clone(),
            known_device,
        })
    }

    /// The user's answer on the consent page: a code (or `access_denied`) back to the client.
    /// The authorization is spent either way.
    pub fn decide(
        &self,
        context: &RequestContext,
        authorization: &str,
        session: &BrowserSession,
        csrf: &str,
        allow: bool,
    ) -> Result<String> {
        if csrf != session.csrf {
            return Err(Error::forbidden(
                "This form is stale or came from another site. Start again from your app.",
            ));
        }
        let authorization = {
            let mut in_flight = self.lock()?;
            let now = self.clock.now_ms();
            in_flight.authorizations.remove(authorization).filter(|a| a.expires_ms > now).ok_or_else(
                || {
                    Error::forbidden(
                        "This sign-in has expired or was already used. Start again from your app.",
                    )
                },
            )?
        };
        let issuer = format!("{}/", self.config.public_base_url());
        let mut params: Vec<(&str, &str)> = Vec::new();
        if let Some(state) = &authorization.state {
            params.push(("state", state));
        }
        params.push(("iss", &issuer));
        if !allow {
            params.push(("error", "access_denied"));
            params.push(("error_description", "The user declined"));
            let entry = audit::Entry::failure("oauth2.authorize")
                .target(&session.user_id)
                .params(json!({ "client_id": authorization.client_id, "reason": "declined" }));
            self.audit.record_or_log(context, entry);
            return Ok(protocol::authorization_redirect(
                &authorization.redirect_uri,
                authorization.fragment,
                &params,
            ));
        }
        Users::ensure_may_log_in(self.users.get(&session.user_id)?.as_ref())?;
        let code = random_string(SECRET_LEN);
        let grant = Grant {
            client_id: authorization.client_id.clone(),
            client_name: authorization.client.display_name(),
            redirect_uri: authorization.redirect_uri.clone(),
            code_challenge: authorization.code_challenge.clone(),
            user_id: session.user_id.clone(),
            device_id: authorization.scope.device_id.as_str().into(),
            scope: authorization.scope.granted.clone(),
            sso: session.sso.clone(),
            expires_ms: self.clock.now_ms().saturating_add(CODE_LIFETIME_MS),
        };
        {
            let mut in_flight = self.lock()?;
            self.sweep(&mut in_flight);
            in_flight.codes.insert(hash(&code), grant);
            in_flight.code_order.push_back(hash(&code));
        }
        let entry = audit::Entry::success("oauth2.authorize").target(&session.user_id).params(json!({
            "client_id": authorization.client_id,
            "device_id": authorization.scope.device_id,
        }));
        self.audit.record_or_log(context, entry);
        params.push(("code", &code));
        Ok(protocol::authorization_redirect(&authorization.redirect_uri, authorization.fragment, &params))
    }

    /// `POST /_conduit/oauth2/token`, by grant type.
    pub fn token(&self, context: &RequestContext, form: &HashMap<String, String>) -> Result<TokenAnswer> {
        // Not limited: a refused refresh (any 4xx) logs the client out; codes and refresh
        // tokens are too long to guess.
        self.ensure_enabled()?;
        let field = |name: &str| form.get(name).map(String::as_str);
        match field("grant_type") {
            Some("authorization_code") => self.exchange_code(context, form),
            Some("refresh_token") => {
                let refresh_token =
                    field("refresh_token").ok_or_else(|| invalid_request("Missing refresh_token"))?;
                let client_id = field("client_id").ok_or_else(|| invalid_request("Missing client_id"))?;
                let issued = self.devices.refresh_oauth(refresh_token, client_id).map_err(|_| {
                    invalid_grant("The refresh token is not valid (spent, revoked, or another client's)")
                })?;
                Ok(TokenAnswer {
                    access_token: issued.access_token,
                    refresh_token: issued.refresh_token,
                    expires_in_secs: issued.expires_in.map(|d| d.as_secs()),
                    scope: None,
                })
            }
            Some(_) => {
                Err(Error::oauth("unsupported_grant_type", "Supported: authorization_code, refresh_token"))
            }
            None => Err(invalid_request("Missing grant_type")),
        }
    }

    fn exchange_code(&self, context: &RequestContext, form: &HashMap<String, String>) -> Result<TokenAnswer> {
        let field = |name: &str| form.get(name).map(String::as_str);
        let code = field("code").ok_or_else(|| invalid_request("Missing code"))?;
        let client_id = field("client_id").ok_or_else(|| invalid_request("Missing client_id"))?;
        let verifier = field("code_verifier").ok_or_else(|| invalid_request("Missing code_verifier"))?;
        let redirect_uri = field("redirect_uri").ok_or_else(|| invalid_request("Missing redirect_uri"))?;
        if code.len() > 256 {
            return Err(invalid_grant("Unknown code"));
        }
        // A code is spent by its first exchange, right or wrong.
        let grant = {
            let mut in_flight = self.lock()?;
            in_flight.codes.remove(&hash(code))
        };
        let now = self.clock.now_ms();
        let grant = grant
            .filter(|g| g.expires_ms > now)
            .ok_or_else(|| invalid_grant("Unknown, spent or expired code"))?;
        if grant.client_id != client_id {
            return Err(invalid_grant("The code was given to another client"));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(invalid_grant("redirect_uri differs from the authorization request's"));
        }
        if !protocol::pkce_matches(verifier, &grant.code_challenge) {
            return Err(invalid_grant("code_verifier does not match the code challenge"));
        }
        let issued = self.accounts.oauth_session(
            context,
            &grant.user_id,
            grant.device_id.clone(),
            &grant.client_id,
            &grant.client_name,
            grant.sso.as_ref(),
        )?;
        tracing::info!(user_id = %grant.user_id, device_id = %issued.device_id, client_id = %grant.client_id, "OAuth 2.0 session started");
        Ok(TokenAnswer {
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_in_secs: issued.expires_in.map(|d| d.as_secs()),
            scope: Some(grant.scope),
        })
    }

    /// `POST /_conduit/oauth2/revoke` (RFC 7009): the token's session ends; an unknown token
    /// is no error.
    pub fn revoke(&self, context: &RequestContext, form: &HashMap<String, String>) -> Result<()> {
        self.ensure_enabled()?;
        let token = form.get("token").ok_or_else(|| invalid_request("Missing token"))?;
        if let Some(hint) = form.get("token_type_hint")
            && hint != "access_token"
            && hint != "refresh_token"
        {
            return Err(Error::oauth(
                "unsupported_token_type",
                "token_type_hint must be access_token or refresh_token",
            ));
        }
        if token.len() > 256 {
            return Ok(());
        }
        self.accounts.revoke_oauth_token(context, token, form.get("client_id").map(String::as_str))?;
        Ok(())
    }

    // Browser sessions.

    /// The browser session a cookie names, if it is live and its user may still sign in.
    pub fn browser_session(&self, cookie: Option<&str>) -> Result<Option<BrowserSession>> {
        let Some(cookie) = cookie.filter(|c| !c.is_empty() && c.len() <= MAX_COOKIE_LEN) else {
            return Ok(None);
        };
        let Some(record) = self.sessions.get(&hash(cookie))? else { return Ok(None) };
        if record.expires_ms <= self.clock.now_ms() {
            return Ok(None);
        }
        if Users::ensure_may_log_in(self.users.get(&record.user_id)?.as_ref()).is_err() {
            return Ok(None);
        }
        Ok(Some(BrowserSession { user_id: record.user_id, csrf: csrf_of(cookie), sso: record.sso }))
    }

    /// A browser signed in as `user_id` (`sso`: through that provider session): the cookie
    /// to give it.
    pub fn open_browser_session(
        &self,
        context: &RequestContext,
        user_id: &UserId,
        sso: Option<SsoSessionRecord>,
    ) -> Result<String> {
        self.ensure_enabled()?;
        let cookie = random_string(SECRET_LEN);
        let now = self.clock.now_ms();
        let record = BrowserSessionRecord {
            user_id: user_id.to_owned(),
            created_ms: now,
            expires_ms: now.saturating_add(self.config.oauth.browser_session_lifetime.as_millis()),
            sso: sso.clone(),
        };
        self.sessions.insert(&hash(&cookie), &record)?;
        let via = sso.map(|s| s.idp_id).unwrap_or_else(|| "password".to_owned());
        let entry =
            audit::Entry::success("browser_session.open").target(user_id).params(json!({ "via": via }));
        self.audit.record_or_log(context, entry);
        Ok(cookie)
    }

    /// Forget the browser sessions `gone` picks; returns how many.
    fn remove_sessions_where(&self, gone: impl Fn(&BrowserSessionRecord) -> bool) -> Result<usize> {
        Ok(self.sessions.remove_where(gone)?)
    }

    /// Delete browser sessions that expired (the upkeep's sweep).
    pub fn remove_expired_sessions(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        self.remove_sessions_where(|record| record.expires_ms <= now)
    }

    /// A provider ended a session (back-channel logout): the browser sessions it signed in
    /// end too, so that browser cannot authorize more apps without the provider.
    pub fn end_provider_sessions(
        &self,
        idp_id: &str,
        subject: Option<&str>,
        sid: Option<&str>,
    ) -> Result<usize> {
        self.remove_sessions_where(|record| {
            record.sso.as_ref().is_some_and(|sso| {
                sso.idp_id == idp_id
                    && subject.is_none_or(|subject| sso.subject == subject)
                    && sid.is_none_or(|sid| sso.sid == sid)
            })
        })
    }

    /// Sign a browser out.
    pub fn close_browser_session(&self, cookie: &str) -> Result<()> {
        if cookie.len() <= MAX_COOKIE_LEN {
            self.sessions.remove(&hash(cookie))?;
        }
        Ok(())
    }

    /// The sign-in page's password form: the user as the directory or this server knows
    /// them, then a browser session.
    pub async fn sign_in_with_password(
        &self,
        context: &RequestContext,
        username: &str,
        password: &str,
    ) -> Result<(OwnedUserId, String)> {
        self.ensure_enabled()?;
        self.rate_limits.check(Limiter::LoginAddress, &context.client_ip, None)?;
        let user_id = self.accounts.browser_sign_in(username, password, context).await?;
        let cookie = self.open_browser_session(context, &user_id, None)?;
        Ok((user_id, cookie))
    }

    /// Whether the sign-in page offers a password form.
    pub fn password_sign_in_offered(&self) -> bool {
        !self.config.sso_only
    }

    // The account page.

    /// The user's devices, newest sighting first.
    pub fn devices_of(&self, session: &BrowserSession) -> Result<Vec<DeviceView>> {
        let mut devices = self.devices.list_visible(&session.user_id)?;
        devices.sort_by_key(|d| std::cmp::Reverse(d.last_seen_ms));
        Ok(devices)
    }

    /// Sign a device out from the account page.
    pub fn delete_device(
        &self,
        context: &RequestContext,
        session: &BrowserSession,
        csrf: &str,
        device_id: &str,
    ) -> Result<()> {
        if csrf != session.csrf {
            return Err(Error::forbidden("This form is stale or came from another site"));
        }
        let device_id: OwnedDeviceId = device_id.into();
        if self.devices.get(&session.user_id, &device_id)?.is_none_or(|d| d.hidden) {
            return Err(Error::not_found("No such device"));
        }
        self.accounts.logout(context, &session.user_id, &device_id)
    }

    /// Approve an identity reset from the account page: uploads of new cross-signing keys
    /// need no further auth for a few minutes.
    pub fn approve_cross_signing_reset(
        &self,
        context: &RequestContext,
        session: &BrowserSession,
        csrf: &str,
    ) -> Result<u64> {
        if csrf != session.csrf {
            return Err(Error::forbidden("This form is stale or came from another site"));
        }
        self.accounts.allow_cross_signing_reset(context, &session.user_id)
    }

    /// The user's display name, for the profile section.
    pub fn display_name(&self, session: &BrowserSession) -> Result<Option<String>> {
        Ok(self.users.profile(&session.user_id)?.and_then(|p| p.displayname))
    }
}
