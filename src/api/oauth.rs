//! The OAuth 2.0 API over HTTP: the server metadata, client registration, the token and
//! revocation endpoints (form bodies in, RFC 6749 JSON out), and the browser's side — the
//! authorization request, the sign-in page (password form and identity providers), the
//! consent page and the account page (devices, identity reset approval) — with the cookies
//! that keep a browser signed in. Forms carry a CSRF value: the sign-in form's matches a
//! cookie set with it (double submit); a signed-in page's is derived from the session.

use std::collections::HashMap;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde_json::json;

use super::{
    AppState,
    request::context_of,
    sso::{answer_error, cookie, escape, page, redirect, redirect_to_provider, set_cookie},
};
use crate::{
    Error,
    service::{
        oauth::{
            ACCOUNT_PATH, AuthorizationParams, AuthorizationStart, BrowserSession, CONSENT_PATH,
            SIGN_IN_PATH, TokenAnswer, check_then,
        },
        passwords::random_string,
    },
};

/// The cookie of a signed-in browser, sent to this server's pages only.
const SESSION_COOKIE: &str = "conduit_session";
const SESSION_COOKIE_PATH: &str = "/_conduit/";
/// The sign-in form's double-submit cookie.
const SIGN_IN_COOKIE: &str = "conduit_sign_in";
/// Longest form body read.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A redirect after a form (303: the browser follows with GET).
fn see_other(location: &str) -> Response {
    redirect(StatusCode::SEE_OTHER, location)
}

/// Parse a form body or a query, refusing repeated parameters (RFC 6749 §3.1).
fn form(bytes: &[u8]) -> Result<HashMap<String, String>, Error> {
    if bytes.len() > MAX_FORM_BYTES {
        return Err(Error::oauth("invalid_request", "The request is too large"));
    }
    let mut fields = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(bytes) {
        if fields.insert(key.to_string(), value.into_owned()).is_some() {
            return Err(Error::oauth("invalid_request", format!("Repeated parameter {key}")));
        }
    }
    Ok(fields)
}

fn session_of(services: &AppState, headers: &HeaderMap) -> Result<Option<BrowserSession>, Error> {
    services.oauth.browser_session(cookie(headers, SESSION_COOKIE).as_deref())
}

/// The request's context with the signed-in user as its actor (audit records).
fn acting(
    context: crate::service::context::RequestContext,
    session: &BrowserSession,
) -> crate::service::context::RequestContext {
    crate::service::context::RequestContext {
        actor: crate::service::context::Actor::User { user_id: session.user_id.clone(), device_id: None },
        ..context
    }
}

fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// `GET /_matrix/client/v1/auth_metadata`: 404 `M_UNRECOGNIZED` while the OAuth 2.0 API is
/// off, as the spec asks.
pub async fn auth_metadata(State(services): State<AppState>) -> Response {
    match services.oauth.metadata() {
        Ok(metadata) => Json(metadata).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /_conduit/oauth2/register`: dynamic client registration, 201 with the client.
pub async fn register(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let context = context_of(&parts);
    let body: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(_) => return Error::oauth("invalid_client_metadata", "The body is not JSON").into_response(),
    };
    match services.oauth.register_client(&context, &body) {
        Ok(client) => (StatusCode::CREATED, Json(client)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `POST /_conduit/oauth2/token`.
pub async fn token(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let context = context_of(&parts);
    let answer = form(&body).and_then(|fields| services.oauth.token(&context, &fields));
    match answer {
        Ok(TokenAnswer { access_token, refresh_token, expires_in_secs, scope }) => {
            let mut body = json!({ "access_token": access_token, "token_type": "Bearer" });
            if let Some(refresh_token) = refresh_token {
                body["refresh_token"] = json!(refresh_token);
            }
            if let Some(expires_in) = expires_in_secs {
                body["expires_in"] = json!(expires_in);
            }
            if let Some(scope) = scope {
                body["scope"] = json!(scope);
            }
            let mut response = Json(body).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(),
    }
}

/// `POST /_conduit/oauth2/revoke`: 200 with an empty object, known token or not.
pub async fn revoke(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let context = context_of(&parts);
    match form(&body).and_then(|fields| services.oauth.revoke(&context, &fields)) {
        Ok(()) => Json(json!({})).into_response(),
        Err(error) => error.into_response(),
    }
}

/// `GET /_conduit/oauth2/authorize`: the client's authorization request.
pub async fn authorize(
    State(services): State<AppState>,
    parts: Parts,
    RawQuery(query): RawQuery,
) -> Response {
    let fields = match form(query.unwrap_or_default().as_bytes()) {
        Ok(fields) => fields,
        Err(error) => return answer_error(&parts.headers, Error::invalid_param(error.to_string())),
    };
    let take = |name: &str| fields.get(name).cloned();
    let params = AuthorizationParams {
        client_id: take("client_id"),
        redirect_uri: take("redirect_uri"),
        response_type: take("response_type"),
        response_mode: take("response_mode"),
        scope: take("scope"),
        state: take("state"),
        code_challenge: take("code_challenge"),
        code_challenge_method: take("code_challenge_method"),
        prompt: take("prompt"),
    };
    match services.oauth.start_authorization(params) {
        Ok(AuthorizationStart::Proceed { consent_path }) => see_other(&consent_path),
        Ok(AuthorizationStart::Refused(error)) | Err(error) => answer_error(&parts.headers, error),
        Ok(AuthorizationStart::RedirectError { location }) => see_other(&location),
    }
}

/// To the sign-in page, and back to `then` once signed in.
fn to_sign_in(then: &str) -> Response {
    see_other(&format!("{SIGN_IN_PATH}?then={}", encode(then)))
}

/// `GET /_conduit/oauth2/consent?authorization=`: what the app asks, to allow or deny.
pub async fn consent(State(services): State<AppState>, parts: Parts, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let authorization =
        form(query.as_bytes()).ok().and_then(|f| f.get("authorization").cloned()).unwrap_or_default();
    let session = match session_of(&services, &parts.headers) {
        Ok(Some(session)) => session,
        Ok(None) => return to_sign_in(&format!("{CONSENT_PATH}?{query}")),
        Err(error) => return answer_error(&parts.headers, error),
    };
    let view = match services.oauth.consent_view(&authorization, &session) {
        Ok(view) => view,
        Err(error) => return answer_error(&parts.headers, error),
    };
    let device = if view.known_device {
        format!("It signs in again as your existing session <code>{}</code>.", escape(&view.device_id))
    } else {
        format!("It becomes a new session of your account, <code>{}</code>.", escape(&view.device_id))
    };
    let links: String = [("Terms of service", &view.tos_uri), ("Privacy policy", &view.policy_uri)]
        .iter()
        .filter_map(|(label, uri)| {
            uri.as_ref().map(|uri| format!(" <a href=\"{}\">{label}</a>", escape(uri)))
        })
        .collect();
    let body = format!(
        "<p><b>{name}</b> (<a href=\"{uri}\">{uri}</a>) wants to use your account <b>{user}</b>: read and send your \
         messages, and manage your encryption keys, as the app does.{links}</p>\n<p>{device}</p>\n\
         <form method=\"post\" action=\"{CONSENT_PATH}\">\
         <input type=\"hidden\" name=\"authorization\" value=\"{authorization}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button class=\"button\" id=\"allow\" name=\"decision\" value=\"allow\" type=\"submit\">Allow</button> \
         <button id=\"deny\" name=\"decision\" value=\"deny\" type=\"submit\">Deny</button></form>\n\
         <p><small>Not you? <a href=\"{ACCOUNT_PATH}\">Your account</a></small></p>",
        name = escape(&view.client_name),
        uri = escape(&view.client_uri),
        user = escape(view.user_id.as_str()),
        authorization = escape(&authorization),
        csrf = escape(&session.csrf),
    );
    page(StatusCode::OK, "Allow access to your account?", &body, None)
}

/// `POST /_conduit/oauth2/consent`: the user's answer; back to the app.
pub async fn decide(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let context = context_of(&parts);
    let fields = match form(&body) {
        Ok(fields) => fields,
        Err(error) => return answer_error(&parts.headers, Error::invalid_param(error.to_string())),
    };
    let session = match session_of(&services, &parts.headers) {
        Ok(Some(session)) => session,
        Ok(None) => {
            return answer_error(
                &parts.headers,
                Error::forbidden("You are not signed in; start again from your app."),
            );
        }
        Err(error) => return answer_error(&parts.headers, error),
    };
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    let allow = match field("decision") {
        "allow" => true,
        "deny" => false,
        _ => return answer_error(&parts.headers, Error::invalid_param("Allow or deny")),
    };
    let context = acting(context, &session);
    match services.oauth.decide(&context, field("authorization"), &session, field("csrf"), allow) {
        Ok(location) => see_other(&location),
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// The sign-in page, with an error to show when a try failed.
fn sign_in_page(services: &AppState, then: &str, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = random_string(32);
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!("<p id=\"error\" style=\"color:#b00\">{}</p>\n", escape(error)));
    }
    if services.oauth.password_sign_in_offered() {
        body.push_str(&format!(
            "<form method=\"post\" action=\"{SIGN_IN_PATH}\">\
             <p><label>Username<br><input id=\"username\" name=\"username\" autocomplete=\"username\" required></label></p>\
             <p><label>Password<br><input id=\"password\" name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required></label></p>\
             <input type=\"hidden\" name=\"then\" value=\"{then}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <p><button class=\"button\" id=\"sign-in\" type=\"submit\">Sign in</button></p></form>\n",
            then = escape(then),
        ));
    }
    for provider in &services.config.identity_providers {
        let href = format!("{SIGN_IN_PATH}/idp/{}?then={}", encode(&provider.id), encode(then));
        body.push_str(&format!(
            "<p><a class=\"button\" id=\"idp-{id}\" href=\"{href}\">Continue with {name}</a></p>\n",
            id = escape(&provider.id),
            href = escape(&href),
            name = escape(provider.display_name()),
        ));
    }
    let mut response = page(status, &format!("Sign in to {}", services.config.server_name), &body, None);
    set_cookie(services, &mut response, SIGN_IN_COOKIE, &csrf, SIGN_IN_PATH, 3600);
    response
}

/// Where a sign-in leads on to (`then`, by default the account page), checked to be a page
/// of this server; `404` while the OAuth 2.0 server is off.
fn then_of(services: &AppState, query: Option<String>) -> Result<String, Error> {
    if !services.oauth.enabled() {
        return Err(Error::unrecognized("Unrecognized request"));
    }
    let then = form(query.unwrap_or_default().as_bytes()).ok().and_then(|f| f.get("then").cloned());
    let then = then.unwrap_or_else(|| ACCOUNT_PATH.to_owned());
    check_then(&then)?;
    Ok(then)
}

/// `GET /_conduit/sign-in?then=`.
pub async fn sign_in(State(services): State<AppState>, parts: Parts, RawQuery(query): RawQuery) -> Response {
    match then_of(&services, query) {
        Ok(then) => sign_in_page(&services, &then, None, StatusCode::OK),
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// `POST /_conduit/sign-in`: the password form.
pub async fn sign_in_with_password(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let context = context_of(&parts);
    let fields = match form(&body) {
        Ok(fields) => fields,
        Err(error) => return answer_error(&parts.headers, Error::invalid_param(error.to_string())),
    };
    let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
    let then = field("then");
    if let Err(error) = check_then(then) {
        return answer_error(&parts.headers, error);
    }
    let expected = cookie(&parts.headers, SIGN_IN_COOKIE);
    if expected.as_deref().is_none_or(|c| c.is_empty() || c != field("csrf")) {
        return sign_in_page(
            &services,
            then,
            Some("The form expired; please sign in again."),
            StatusCode::FORBIDDEN,
        );
    }
    match services.oauth.sign_in_with_password(&context, field("username"), field("password")).await {
        Ok((_, session)) => {
            let mut response = see_other(then);
            let max_age = services.config.oauth.browser_session_lifetime.as_millis() / 1000;
            set_cookie(&services, &mut response, SESSION_COOKIE, &session, SESSION_COOKIE_PATH, max_age);
            set_cookie(&services, &mut response, SIGN_IN_COOKIE, "", SIGN_IN_PATH, 0);
            response
        }
        Err(Error::Matrix { message, kind }) => {
            let status = super::error::status_for(&kind);
            sign_in_page(&services, then, Some(&message), status)
        }
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// `GET /_conduit/sign-in/idp/{idpId}?then=`: off to the identity provider.
pub async fn sign_in_with_provider(
    State(services): State<AppState>,
    Path(idp_id): Path<String>,
    parts: Parts,
    RawQuery(query): RawQuery,
) -> Response {
    let then = match then_of(&services, query) {
        Ok(then) => then,
        Err(error) => return answer_error(&parts.headers, error),
    };
    let browser = super::sso::browser_cookie(&parts.headers);
    match services.sso.start_sign_in(&idp_id, &then, browser.as_deref()).await {
        Ok(started) => redirect_to_provider(&services, &started),
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// The provider's callback for a sign-in to these pages: a browser session, then `then`.
pub fn signed_in_through_provider(
    services: &AppState,
    parts: &Parts,
    user_id: &ruma::UserId,
    sso: crate::storage::tables::SsoSessionRecord,
    then: &str,
) -> Response {
    let context = context_of(parts);
    if let Err(error) = check_then(then) {
        return answer_error(&parts.headers, error);
    }
    match services.oauth.open_browser_session(&context, user_id, Some(sso)) {
        Ok(session) => {
            let mut response = see_other(then);
            let max_age = services.config.oauth.browser_session_lifetime.as_millis() / 1000;
            set_cookie(services, &mut response, SESSION_COOKIE, &session, SESSION_COOKIE_PATH, max_age);
            response
        }
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// A time as `YYYY-MM-DD HH:MM UTC` (the civil-from-days algorithm of the proleptic
/// Gregorian calendar).
fn format_time(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "never".to_owned() };
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// `GET /_conduit/account?action=&device_id=`: the account page.
pub async fn account(State(services): State<AppState>, parts: Parts, RawQuery(query): RawQuery) -> Response {
    if !services.oauth.enabled() {
        return answer_error(&parts.headers, Error::unrecognized("Unrecognized request"));
    }
    let query = query.unwrap_or_default();
    let session = match session_of(&services, &parts.headers) {
        Ok(Some(session)) => session,
        Ok(None) if query.is_empty() => return to_sign_in(ACCOUNT_PATH),
        Ok(None) => return to_sign_in(&format!("{ACCOUNT_PATH}?{query}")),
        Err(error) => return answer_error(&parts.headers, error),
    };
    let fields = form(query.as_bytes()).unwrap_or_default();
    let action = fields.get("action").map(String::as_str).unwrap_or("org.matrix.profile");
    let device_id = fields.get("device_id").map(String::as_str);
    let result = match action {
        "org.matrix.cross_signing_reset" => Ok(cross_signing_reset_section(&session)),
        "org.matrix.device_view"
        | "org.matrix.device_delete"
        | "org.matrix.session_view"
        | "org.matrix.session_end" => devices_section(&services, &session, device_id),
        "org.matrix.devices_list" | "org.matrix.sessions_list" => devices_section(&services, &session, None),
        _ => profile_section(&services, &session),
    };
    match result {
        Ok(body) => {
            let nav = format!(
                "<p><a href=\"{ACCOUNT_PATH}?action=org.matrix.profile\">Profile</a> · \
                 <a href=\"{ACCOUNT_PATH}?action=org.matrix.devices_list\">Sessions</a> · \
                 <a href=\"{ACCOUNT_PATH}?action=org.matrix.cross_signing_reset\">Encryption identity</a></p>\n\
                 <form method=\"post\" action=\"{ACCOUNT_PATH}/sign-out\"><input type=\"hidden\" name=\"csrf\" \
                 value=\"{csrf}\"><button type=\"submit\">Sign out of this page</button></form>\n",
                csrf = escape(&session.csrf)
            );
            page(StatusCode::OK, "Your account", &format!("{nav}{body}"), None)
        }
        Err(error) => answer_error(&parts.headers, error),
    }
}

fn profile_section(services: &AppState, session: &BrowserSession) -> Result<String, Error> {
    let name = services.oauth.display_name(session)?;
    Ok(format!(
        "<h2>Profile</h2><p>Signed in as <b id=\"user-id\">{user}</b>{name}.</p>\
         <p>Change your display name and picture in your app.</p>",
        user = escape(session.user_id.as_str()),
        name = name.map(|n| format!(" ({})", escape(&n))).unwrap_or_default(),
    ))
}

fn devices_section(
    services: &AppState,
    session: &BrowserSession,
    only: Option<&str>,
) -> Result<String, Error> {
    let devices = services.oauth.devices_of(session)?;
    let rows: String = devices
        .iter()
        .filter(|d| only.is_none_or(|id| d.device_id.as_str() == id))
        .map(|d| {
            format!(
                "<li id=\"device-{id}\"><b>{name}</b> <code>{id}</code><br><small>last seen {seen}{ip}</small>\
                 <form method=\"post\" action=\"{ACCOUNT_PATH}/devices/delete\">\
                 <input type=\"hidden\" name=\"device_id\" value=\"{id}\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <button type=\"submit\" id=\"delete-{id}\">Sign out this session</button></form></li>\n",
                id = escape(d.device_id.as_str()),
                name = escape(d.display_name.as_deref().unwrap_or("Unnamed session")),
                seen = format_time(d.last_seen_ms),
                ip = d.last_seen_ip.as_ref().map(|ip| format!(" from {}", escape(ip))).unwrap_or_default(),
                csrf = escape(&session.csrf),
            )
        })
        .collect();
    if only.is_some() && rows.is_empty() {
        return Err(Error::not_found("No such session"));
    }
    Ok(format!("<h2>Sessions</h2><ul>\n{rows}</ul>"))
}

fn cross_signing_reset_section(session: &BrowserSession) -> String {
    format!(
        "<h2>Reset your encryption identity</h2>\
         <p>Do this only if you lost every other signed-in session and your recovery key. \
         After the reset, people you talk to are told your identity changed, and messages you \
         cannot recover stay unreadable.</p>\
         <form method=\"post\" action=\"{ACCOUNT_PATH}/cross-signing-reset\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button class=\"button\" id=\"approve-reset\" type=\"submit\">Allow the reset for 10 minutes</button></form>",
        csrf = escape(&session.csrf)
    )
}

/// The signed-in session and the form of a POST to the account page.
fn account_form(
    services: &AppState,
    parts: &Parts,
    body: &Bytes,
) -> Result<(BrowserSession, HashMap<String, String>), Error> {
    let fields = form(body).map_err(|e| Error::invalid_param(e.to_string()))?;
    let session = session_of(services, &parts.headers)?
        .ok_or_else(|| Error::forbidden("You are not signed in; open your account page again."))?;
    Ok((session, fields))
}

/// `POST /_conduit/account/devices/delete`.
pub async fn delete_device(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let outcome = account_form(&services, &parts, &body).and_then(|(session, fields)| {
        let field = |name: &str| fields.get(name).map(String::as_str).unwrap_or_default();
        let context = acting(context_of(&parts), &session);
        services.oauth.delete_device(&context, &session, field("csrf"), field("device_id"))
    });
    match outcome {
        Ok(()) => see_other(&format!("{ACCOUNT_PATH}?action=org.matrix.devices_list")),
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// `POST /_conduit/account/cross-signing-reset`.
pub async fn approve_cross_signing_reset(
    State(services): State<AppState>,
    parts: Parts,
    body: Bytes,
) -> Response {
    let outcome = account_form(&services, &parts, &body).and_then(|(session, fields)| {
        let csrf = fields.get("csrf").map(String::as_str).unwrap_or_default();
        let context = acting(context_of(&parts), &session);
        services.oauth.approve_cross_signing_reset(&context, &session, csrf)
    });
    match outcome {
        Ok(_) => page(
            StatusCode::OK,
            "Reset allowed",
            "<p id=\"reset-allowed\">You may reset your encryption identity in your app for the next 10 minutes. \
             Return to the app to finish.</p>",
            None,
        ),
        Err(error) => answer_error(&parts.headers, error),
    }
}

/// `POST /_conduit/account/sign-out`: the browser session ends (the app sessions stay).
pub async fn sign_out(State(services): State<AppState>, parts: Parts, body: Bytes) -> Response {
    let outcome = account_form(&services, &parts, &body).and_then(|(session, fields)| {
        if fields.get("csrf") != Some(&session.csrf) {
            return Err(Error::forbidden("This form is stale or came from another site"));
        }
        match cookie(&parts.headers, SESSION_COOKIE) {
            Some(cookie) => services.oauth.close_browser_session(&cookie),
            None => Ok(()),
        }
    });
    match outcome {
        Ok(()) => {
            let mut response =
                page(StatusCode::OK, "Signed out", "<p>You are signed out of this page.</p>", None);
            set_cookie(&services, &mut response, SESSION_COOKIE, "", SESSION_COOKIE_PATH, 0);
            response
        }
        Err(error) => answer_error(&parts.headers, error),
    }
}
