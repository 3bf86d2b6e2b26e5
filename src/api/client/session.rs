//! Sessions: login flows, login, single sign-on redirects, login tokens, token refresh,
//! logout.

use axum::{
    extract::{Path, RawQuery, State},
    http::HeaderMap,
    response::Response,
};
use ruma::api::client::session::{
    get_login_token,
    get_login_types::{
        self,
        v3::{
            IdentityProvider, IdentityProviderBrand, LoginType, PasswordLoginType, SsoLoginType,
            TokenLoginType,
        },
    },
    login::{
        self,
        v3::{DiscoveryInfo, HomeserverInfo},
    },
    logout, logout_all, refresh_token,
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma, sso},
};

/// `GET /_matrix/client/v3/login`, in Synapse's order: `org.matrix.login.jwt` when JWT login
/// is on, `m.login.sso` with the identity providers, `m.login.token` (with single sign-on, or `get_login_token` when
/// `login/get_token` is on), `m.login.password` (unless `sso_only`), and
/// `m.login.application_service` when appservices are registered.
pub async fn get_login_types(
    services: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    let config = &services.config;
    let mut types = Vec::new();
    // Listed first when on, as Synapse lists it.
    if services.jwt.enabled() {
        let jwt = LoginType::new("org.matrix.login.jwt", serde_json::Map::new())
            .map_err(|e| Error::internal(format!("JWT login type: {e}")))?;
        types.push(jwt);
    }
    if config.sso_enabled() {
        let mut sso = SsoLoginType::new();
        sso.identity_providers = services
            .oidc
            .providers()
            .map(|p| {
                let mut idp = IdentityProvider::new(p.id.clone(), p.display_name().to_owned());
                idp.icon = p.icon.clone();
                idp.brand = p.brand.as_deref().map(IdentityProviderBrand::from);
                idp
            })
            .collect();
        types.push(LoginType::Sso(sso));
    }
    let get_token = config.login_via_existing_session.enabled;
    if config.sso_enabled() || get_token {
        let mut token = TokenLoginType::new();
        token.get_login_token = get_token;
        types.push(LoginType::Token(token));
    }
    if !config.sso_only {
        types.push(LoginType::Password(PasswordLoginType::new()));
    }
    if services.appservices.any() {
        types.push(LoginType::ApplicationService(Default::default()));
    }
    Ok(get_login_types::v3::Response::new(types))
}

/// ruma writes an identity provider's missing `icon` and `brand` as `null`; Synapse leaves
/// them out, as the spec's optional fields are.
pub fn fill_login_types(json: &mut serde_json::Value) {
    let Some(flows) = json.get_mut("flows").and_then(serde_json::Value::as_array_mut) else { return };
    for flow in flows {
        let providers = flow.get_mut("identity_providers").and_then(serde_json::Value::as_array_mut);
        for provider in providers.into_iter().flatten() {
            if let Some(provider) = provider.as_object_mut() {
                provider.retain(|_, value| !value.is_null());
            }
        }
    }
}

/// The `redirectUrl` query parameter.
fn redirect_url(query: Option<String>) -> Result<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "redirectUrl")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| Error::missing_param("Missing redirectUrl"))
}

/// `GET /_matrix/client/v3/login/sso/redirect[/{idpId}]?redirectUrl=`: to the provider named
/// (or the one there is), or a page to choose one. A plain handler: it answers a redirect
/// with a cookie, or a page.
pub async fn sso_login(
    State(services): State<AppState>,
    idp_id: Option<Path<String>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let redirect = match redirect_url(query) {
        Ok(url) => url,
        Err(error) => return sso::answer_error(&headers, error),
    };
    let browser = sso::browser_cookie(&headers);
    let idp_id = idp_id.map(|Path(id)| id);
    let start = services.sso.start_login(idp_id.as_deref(), &redirect, browser.as_deref()).await;
    sso::login_start(&services, &headers, start, &redirect)
}

/// `POST /_matrix/client/v1/login/get_token`
pub async fn get_login_token(
    services: AppState,
    req: Ruma<get_login_token::v1::Request>,
) -> Result<get_login_token::v1::Response> {
    let who = req.identity.device_identity()?;
    let (token, lifetime) =
        services.accounts.get_login_token(&who, &req.context, req.body.auth.as_ref()).await?;
    Ok(get_login_token::v1::Response::new(lifetime, token))
}

/// `POST /_matrix/client/v3/login`. With a client base URL configured the answer carries it as
/// `well_known`, as Synapse's does, so a client that found the server by another name
/// (Element X after typing the server name) reconfigures itself.
pub async fn login(services: AppState, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    let mut response = services.accounts.login(req.body, req.identity.as_ref(), &req.context).await?;
    response.well_known =
        services.config.well_known.client.clone().map(|url| DiscoveryInfo::new(HomeserverInfo::new(url)));
    Ok(response)
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh_token(
    services: AppState,
    req: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let issued = services.devices.refresh(&req.body.refresh_token)?;
    let mut response = refresh_token::v3::Response::new(issued.access_token);
    response.refresh_token = issued.refresh_token;
    response.expires_in_ms = issued.expires_in;
    Ok(response)
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(services: AppState, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    services.accounts.logout(&req.context, &req.identity.user_id, req.identity.device()?)?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(
    services: AppState,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    services.accounts.logout_all(&req.context, &req.identity.user_id)?;
    Ok(logout_all::v3::Response::new())
}
