//! The browser side of single sign-on: the provider's callback
//! (`/_synapse/client/oidc/callback`, the path Synapse uses, so a provider set up for Synapse
//! needs no change), back-channel logout (`/_synapse/client/oidc/backchannel_logout`), the
//! `m.login.sso` fallback page of user-interactive auth, the cookie that binds an
//! authorization to the browser that started it, and the small HTML pages a browser sees
//! (provider choice, confirmation, completion, errors). Errors answer an HTML page to
//! browsers (that ask for `text/html`) and Matrix error JSON to anything else.

use axum::{
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};

use super::AppState;
use crate::{
    Error,
    api::request::context_of,
    service::{
        oidc::{CallbackParams, Started},
        sso::{CallbackOutcome, LoginStart},
    },
};

/// The cookie binding an authorization in flight to the browser that started it.
pub const BROWSER_COOKIE: &str = "conduit_sso_session";
/// The cookie's path: it is needed at the callback only.
const COOKIE_PATH: &str = "/_synapse/client/oidc";
/// As long as an authorization may take.
const COOKIE_MAX_AGE_SECS: u64 = 15 * 60;

pub use crate::matrix::html::escape;

/// A page: `body` is HTML already escaped. Never cached, never framed (a confirmation page
/// in another site's frame could be clicked through), no referrer sent on.
pub fn page(status: StatusCode, title: &str, body: &str, script: Option<&str>) -> Response {
    let script_source = if script.is_some() { "'unsafe-inline'" } else { "'none'" };
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;\
         line-height:1.5}}a.button{{display:inline-block;padding:.6em 1.2em;background:#0b7a5a;color:#fff;\
         border-radius:6px;text-decoration:none}}</style></head>\n<body>\n<h1>{title}</h1>\n{body}\n{script}</body></html>\n",
        title = escape(title),
        script = script.map(|s| format!("<script>{s}</script>\n")).unwrap_or_default(),
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src {script_source}; frame-ancestors 'none'"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// The error as a browser or an API client wants it.
pub fn answer_error(headers: &HeaderMap, error: Error) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html { super::error::error_page(error) } else { error.into_response() }
}

/// The value of cookie `name`, if the request carries it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The browser cookie's value, if the request carries one.
pub fn browser_cookie(headers: &HeaderMap) -> Option<String> {
    cookie(headers, BROWSER_COOKIE)
}

/// A redirect to the provider, setting the browser cookie.
pub fn redirect_to_provider(services: &AppState, started: &Started) -> Response {
    let mut response = found(&started.location);
    set_browser_cookie(services, &mut response, &started.browser);
    response
}

fn set_browser_cookie(services: &AppState, response: &mut Response, value: &str) {
    set_cookie(services, response, BROWSER_COOKIE, value, COOKIE_PATH, COOKIE_MAX_AGE_SECS);
}

/// Set an HttpOnly, `SameSite=Lax` cookie for `path`, `Secure` when the server is reached
/// over https; a `max_age` of 0 deletes it.
pub fn set_cookie(
    services: &AppState,
    response: &mut Response,
    name: &str,
    value: &str,
    path: &str,
    max_age: u64,
) {
    let secure = if services.config.public_base_url().starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
}

fn found(location: &str) -> Response {
    redirect(StatusCode::FOUND, location)
}

/// A redirect (`302`, or `303` after a form) that no cache keeps.
pub fn redirect(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => {
            let mut response = status.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => Error::internal("a redirect location is not a header value").into_response(),
    }
}

/// The answer to `/login/sso/redirect[/{idpId}]` once the service decided.
pub fn login_start(
    services: &AppState,
    headers: &HeaderMap,
    start: crate::Result<LoginStart>,
    redirect_url: &str,
) -> Response {
    match start {
        Ok(LoginStart::Redirect(started)) => redirect_to_provider(services, &started),
        Ok(LoginStart::Choose(providers)) => {
            let items: String = providers
                .iter()
                .map(|(id, name)| {
                    let href = format!(
                        "/_matrix/client/v3/login/sso/redirect/{}?redirectUrl={}",
                        url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>(),
                        url::form_urlencoded::byte_serialize(redirect_url.as_bytes()).collect::<String>(),
                    );
                    format!("<li><a class=\"button\" href=\"{}\">{}</a></li>\n", escape(&href), escape(name))
                })
                .collect();
            page(StatusCode::OK, "Choose how to sign in", &format!("<ul>\n{items}</ul>"), None)
        }
        Err(error) => answer_error(headers, error),
    }
}

/// `GET /_synapse/client/oidc/callback`: the provider sends the browser back here.
pub async fn callback(State(services): State<AppState>, parts: Parts, RawQuery(query): RawQuery) -> Response {
    let context = context_of(&parts);
    let mut params = CallbackParams::default();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match key.as_ref() {
            "state" => &mut params.state,
            "code" => &mut params.code,
            "iss" => &mut params.iss,
            "error" => &mut params.error,
            "error_description" => &mut params.error_description,
            _ => continue,
        };
        // RFC 6749 §3.1: a parameter may not be repeated.
        if slot.replace(value.into_owned()).is_some() {
            return answer_error(&parts.headers, Error::invalid_param(format!("Repeated parameter {key}")));
        }
    }
    let browser = browser_cookie(&parts.headers);
    match services.sso.callback(params, browser.as_deref(), &context).await {
        Ok(CallbackOutcome::Redirect { url }) => found(&url),
        Ok(CallbackOutcome::Confirm { url, client, user_id }) => page(
            StatusCode::OK,
            "Continue to your account",
            &format!(
                "<p>You are about to sign in as <b>{user}</b> to <b>{client}</b>.</p>\n\
                 <p><a class=\"button\" id=\"continue\" href=\"{url}\">Continue</a></p>\n\
                 <p>If you did not start signing in there, close this page: someone may be trying \
                 to get into your account.</p>",
                user = escape(user_id.as_str()),
                client = escape(&client),
                url = escape(&url),
            ),
            None,
        ),
        Ok(CallbackOutcome::UiAuthDone) => ui_auth_done(),
        Ok(CallbackOutcome::SignedIn { user_id, session, then }) => {
            super::oauth::signed_in_through_provider(&services, &parts, &user_id, session, &then)
        }
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// The fallback completion page: the script the spec gives tells the client.
fn ui_auth_done() -> Response {
    page(
        StatusCode::OK,
        "Thank you",
        "<p>You may now close this window and return to the application.</p>",
        Some(
            "if (window.onAuthDone) { window.onAuthDone(); } \
             else if (window.opener && window.opener.postMessage) { window.opener.postMessage(\"authDone\", \"*\"); }",
        ),
    )
}

/// `POST /_synapse/client/oidc/backchannel_logout`: a provider ends sessions. Answers 200
/// with no body, or 400 for a token that does not validate (OpenID Connect Back-Channel
/// Logout 1.0 §2.8).
pub async fn backchannel_logout(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let context = context_of(&parts);
    let token = url::form_urlencoded::parse(&body)
        .find(|(key, _)| key == "logout_token")
        .map(|(_, v)| v.into_owned());
    let Some(token) = token else {
        return Error::missing_param("Missing logout_token").into_response();
    };
    let ended = services.sso.backchannel_logout(&token, &context).await.and_then(|(_, request)| {
        services.oauth.end_provider_sessions(
            &request.idp_id,
            request.subject.as_deref(),
            request.sid.as_deref(),
        )
    });
    match ended {
        Ok(_) => {
            let mut response = StatusCode::OK.into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(),
    }
}

/// `GET /_matrix/client/v3/auth/{auth_type}/fallback/web?session=`: for `m.login.sso`, a page
/// that says what the client is doing and sends the user to their identity provider. Other
/// stages have no fallback page here.
pub async fn ui_auth_fallback(
    State(services): State<AppState>,
    Path(auth_type): Path<String>,
    parts: Parts,
    RawQuery(query): RawQuery,
) -> Response {
    if auth_type != "m.login.sso" {
        return answer_error(
            &parts.headers,
            Error::unrecognized(format!("No fallback page for {auth_type}")),
        );
    }
    let session = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "session")
        .map(|(_, v)| v.into_owned());
    let Some(session) = session else {
        return answer_error(&parts.headers, Error::missing_param("Missing session"));
    };
    let browser = browser_cookie(&parts.headers);
    match services.sso.start_ui_auth(&session, browser.as_deref()).await {
        Ok(start) => {
            let mut response = page(
                StatusCode::OK,
                "Confirm it's you",
                &format!(
                    "<p>{action} To confirm, sign in again with {idp}.</p>\n\
                     <p><a class=\"button\" id=\"continue\" href=\"{url}\">Continue with {idp}</a></p>\n\
                     <p>If you did not expect this, your account may be compromised: do not continue.</p>",
                    action = escape(&start.action),
                    idp = escape(&start.idp_name),
                    url = escape(&start.started.location),
                ),
                None,
            );
            set_browser_cookie(&services, &mut response, &start.started.browser);
            response
        }
        Err(error) => answer_error(&parts.headers, error),
    }
}
