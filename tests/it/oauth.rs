//! The OAuth 2.0 API (the built-in authorization server Element X signs in with), end to end
//! over HTTP: discovery, dynamic client registration, the authorization code grant with
//! PKCE through the sign-in and consent pages (password and identity provider), tokens,
//! refresh with its grace, expiry, revocation, the account page and the `m.oauth` stage of
//! an identity reset; and what hostile requests get.

use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    harness::{TestServer, expect_error},
    oidc_provider::{Browser, Page},
};

const METADATA: &str = "/_matrix/client/v1/auth_metadata";
const REGISTER: &str = "/_conduit/oauth2/register";
const TOKEN: &str = "/_conduit/oauth2/token";
const REVOKE: &str = "/_conduit/oauth2/revoke";
const AUTHORIZE: &str = "/_conduit/oauth2/authorize";
const ACCOUNT: &str = "/_conduit/account";
const V3: &str = "/_matrix/client/v3";
const REDIRECT: &str = "org.example.app:/callback";
const API_SCOPE: &str = "urn:matrix:client:api:*";
const DEVICE_SCOPE: &str = "urn:matrix:client:device:";

/// A server with the OAuth 2.0 API on, at a base URL its pages and metadata name.
pub async fn oauth_server(adjust: impl FnOnce(&mut conduit::config::Config)) -> TestServer {
    let reserved = TestServer::reserve().await;
    let base = reserved.base.clone();
    TestServer::boot_reserved(reserved, move |c| {
        c.well_known.client = Some(base);
        c.oauth.enabled = true;
        adjust(c);
    })
    .await
}

/// A native app's registration, as matrix-rust-sdk sends it.
fn native_client() -> Value {
    json!({
        "client_name": "Example App",
        "client_uri": "https://app.example.org/",
        "redirect_uris": [REDIRECT],
        "application_type": "native",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

async fn register_client(s: &TestServer) -> String {
    let (status, body) = s.post(REGISTER, None, native_client()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["client_id"].as_str().expect("client_id").to_owned()
}

/// A PKCE verifier and its S256 challenge.
fn pkce() -> (String, String) {
    let verifier = format!("v-{}", conduit::service::passwords::random_string(60));
    let challenge =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn authorize_url(s: &TestServer, client_id: &str, device_id: &str, challenge: &str, state: &str) -> String {
    let scope = format!("{API_SCOPE} {DEVICE_SCOPE}{device_id}");
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("client_id", client_id),
            ("response_type", "code"),
            ("response_mode", "fragment"),
            ("redirect_uri", REDIRECT),
            ("scope", scope.as_str()),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    format!("{}{AUTHORIZE}?{query}", s.base)
}

/// The value of hidden form field `name` in a page.
fn hidden(page: &Page, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start =
        page.body.find(&marker).unwrap_or_else(|| panic!("no {name} field in {}", page.body)) + marker.len();
    let end = page.body[start..].find('"').unwrap() + start;
    page.body[start..end].replace("&amp;", "&")
}

/// Follow redirects within the server; returns the first page that is not one (or the
/// redirect that leaves for the app, as an error).
async fn walk(b: &Browser, url: &str) -> Result<Page, String> {
    let page = b.follow(url, REDIRECT).await?;
    if page.status.is_redirection() { Err(page.location.clone().unwrap_or_default()) } else { Ok(page) }
}

/// Sign in on the sign-in page with a password; returns the page it leads to.
async fn sign_in_with_password(s: &TestServer, b: &Browser, page: &Page, user: &str, password: &str) -> Page {
    assert!(page.body.contains("id=\"sign-in\""), "not the sign-in page: {}", page.body);
    let form = [
        ("username", user),
        ("password", password),
        ("then", &hidden(page, "then")),
        ("csrf", &hidden(page, "csrf")),
    ];
    let posted = b.post_form(&format!("{}/_conduit/sign-in", s.base), &form).await;
    assert_eq!(posted.status, StatusCode::SEE_OTHER, "{posted:?}");
    walk(b, posted.location.as_deref().unwrap()).await.expect("a page after signing in")
}

/// Allow (or deny) on the consent page; returns where the browser is sent (the app).
async fn decide(s: &TestServer, b: &Browser, consent: &Page, allow: bool) -> String {
    assert!(consent.body.contains("Allow access to your account?"), "not the consent page: {}", consent.body);
    let form = [
        ("authorization", hidden(consent, "authorization")),
        ("csrf", hidden(consent, "csrf")),
        ("decision", if allow { "allow" } else { "deny" }.to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let posted = b.post_form(&format!("{}/_conduit/oauth2/consent", s.base), &form).await;
    assert_eq!(posted.status, StatusCode::SEE_OTHER, "{posted:?}");
    posted.location.expect("a redirect to the app")
}

/// A fragment parameter of the app's redirect.
fn fragment_param(url: &str, name: &str) -> Option<String> {
    let fragment = url.split_once('#')?.1;
    url::form_urlencoded::parse(fragment.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The whole browser side with a password: the code and the PKCE verifier.
async fn authorize_with_password(
    s: &TestServer,
    b: &Browser,
    client_id: &str,
    device_id: &str,
    user: &str,
    password: &str,
) -> (String, String) {
    let (verifier, challenge) = pkce();
    let start = walk(b, &authorize_url(s, client_id, device_id, &challenge, "st-1")).await.expect("a page");
    let consent = if start.body.contains("id=\"sign-in\"") {
        sign_in_with_password(s, b, &start, user, password).await
    } else {
        start
    };
    let back = decide(s, b, &consent, true).await;
    assert!(back.starts_with(REDIRECT), "{back}");
    assert_eq!(fragment_param(&back, "state").as_deref(), Some("st-1"));
    assert_eq!(fragment_param(&back, "iss"), Some(format!("{}/", s.base)));
    (fragment_param(&back, "code").expect("a code"), verifier)
}

async fn token_request(s: &TestServer, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let page = Browser::new().post_form(&format!("{}{TOKEN}", s.base), form).await;
    (page.status, page.json())
}

async fn exchange(s: &TestServer, client_id: &str, code: &str, verifier: &str) -> (StatusCode, Value) {
    token_request(
        s,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn refresh(s: &TestServer, client_id: &str, refresh_token: &str) -> (StatusCode, Value) {
    token_request(
        s,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", client_id)],
    )
    .await
}

fn device_ids(body: &Value) -> Vec<String> {
    body["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn auth_metadata_is_404_until_enabled_then_names_every_endpoint() {
    let off = TestServer::start().await;
    expect_error(off.get(METADATA, None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    expect_error(
        off.get("/_matrix/client/unstable/org.matrix.msc2965/auth_metadata", None).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    expect_error(off.post(REGISTER, None, native_client()).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");

    let s = oauth_server(|_| {}).await;
    let (status, m) = s.get(METADATA, None).await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(m["issuer"], format!("{}/", s.base));
    for (key, path) in [
        ("authorization_endpoint", AUTHORIZE),
        ("token_endpoint", TOKEN),
        ("revocation_endpoint", REVOKE),
        ("registration_endpoint", REGISTER),
        ("account_management_uri", ACCOUNT),
    ] {
        assert_eq!(m[key], format!("{}{path}", s.base), "{key}");
    }
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(m["response_modes_supported"], json!(["query", "fragment"]));
    assert_eq!(m["grant_types_supported"], json!(["authorization_code", "refresh_token"]));
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert!(
        m["account_management_actions_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("org.matrix.cross_signing_reset"))
    );
    // The unstable path answers the same; the legacy API stays.
    let (status, unstable) = s.get("/_matrix/client/unstable/org.matrix.msc2965/auth_metadata", None).await;
    assert_eq!((status, &unstable), (StatusCode::OK, &m));
    let (_, flows) = s.get(&format!("{V3}/login"), None).await;
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"), "{flows}");
}

#[tokio::test]
async fn clients_register_once_per_metadata_and_bad_metadata_is_refused() {
    let s = oauth_server(|_| {}).await;
    let (status, first) = s.post(REGISTER, None, native_client()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["redirect_uris"], json!([REDIRECT]));
    assert_eq!(first["token_endpoint_auth_method"], "none");
    assert_eq!(first["application_type"], "native");
    let (_, again) = s.post(REGISTER, None, native_client()).await;
    assert_eq!(again["client_id"], first["client_id"], "the same metadata is the same client");

    let mut web = native_client();
    web["application_type"] = json!("web");
    web["redirect_uris"] = json!(["https://app.example.org/cb"]);
    let (status, body) = s.post(REGISTER, None, web.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["client_id"], first["client_id"]);

    let refused = |field: &str, value: Value, code: &str| {
        let mut metadata = native_client();
        metadata[field] = value;
        (metadata, code.to_owned())
    };
    for (metadata, code) in [
        refused("redirect_uris", json!(["com.evil.app:/callback"]), "invalid_redirect_uri"),
        refused("redirect_uris", json!(["org.example.app://callback"]), "invalid_redirect_uri"),
        refused("redirect_uris", json!(["http://localhost:1234/cb"]), "invalid_redirect_uri"),
        refused("redirect_uris", json!(["https://evil.example.com/cb"]), "invalid_redirect_uri"),
        refused("redirect_uris", json!([]), "invalid_redirect_uri"),
        refused("client_uri", json!("http://app.example.org/"), "invalid_client_metadata"),
        refused("client_uri", json!(null), "invalid_client_metadata"),
        refused("token_endpoint_auth_method", json!("client_secret_basic"), "invalid_client_metadata"),
        refused("logo_uri", json!("https://tracker.example.net/logo.png"), "invalid_client_metadata"),
        refused("application_type", json!("desktop"), "invalid_client_metadata"),
    ] {
        let (status, body) = s.post(REGISTER, None, metadata.clone()).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code.as_str())),
            "{metadata}: {body}"
        );
        assert!(body["error_description"].is_string());
    }
    let mut web_http = web;
    web_http["redirect_uris"] = json!(["http://app.example.org/cb"]);
    let (status, body) = s.post(REGISTER, None, web_http).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_redirect_uri")),
        "{body}"
    );
}

#[tokio::test]
async fn a_password_sign_in_and_consent_make_a_device_whose_tokens_refresh_expire_and_revoke() {
    let s = oauth_server(|_| {}).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let client_id = register_client(&s).await;
    let b = Browser::new();
    let (code, verifier) =
        authorize_with_password(&s, &b, &client_id, "EXAMPLEAPP1", "alice", "pw-alice-123").await;

    let (status, tokens) = exchange(&s, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 300);
    assert_eq!(tokens["scope"], format!("{API_SCOPE} {DEVICE_SCOPE}EXAMPLEAPP1"));
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let (status, me) = s.get(&format!("{V3}/account/whoami"), Some(&access)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        (me["user_id"].as_str(), me["device_id"].as_str()),
        (Some(alice.user_id.as_str()), Some("EXAMPLEAPP1"))
    );
    let (_, devices) = s.get(&format!("{V3}/devices"), Some(&alice.token)).await;
    let device =
        devices["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == "EXAMPLEAPP1").cloned();
    assert_eq!(device.expect("the app's device")["display_name"], "Example App");
    // The code is spent.
    let (status, body) = exchange(&s, &client_id, &code, &verifier).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");

    // Refresh: new tokens; the old access token stops working; the spent refresh token may
    // be repeated within the grace (a lost answer), not after it.
    let (status, renewed) = refresh(&s, &client_id, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let access_2 = renewed["access_token"].as_str().unwrap().to_owned();
    let refresh_2 = renewed["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh_2, refresh_token);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&access)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let (status, repeated) = refresh(&s, &client_id, &refresh_token).await;
    assert_eq!(status, StatusCode::OK, "a repeated refresh within the grace: {repeated}");
    let access_3 = repeated["access_token"].as_str().unwrap().to_owned();
    let refresh_3 = repeated["refresh_token"].as_str().unwrap().to_owned();
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&access_2)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(
        refresh(&s, &client_id, &refresh_2).await.1["error"],
        "invalid_grant",
        "the answer the repeat replaced"
    );
    // Another client cannot use this session's refresh token.
    let mut other = native_client();
    other["client_name"] = json!("Other App");
    let (_, other) = s.post(REGISTER, None, other).await;
    let other_id = other["client_id"].as_str().unwrap();
    assert_eq!(refresh(&s, other_id, &refresh_3).await.1["error"], "invalid_grant");
    s.clock.advance_ms(61_000);
    assert_eq!(refresh(&s, &client_id, &refresh_token).await.1["error"], "invalid_grant", "past the grace");
    // The legacy refresh endpoint does not take an OAuth session's token.
    expect_error(
        s.post(&format!("{V3}/refresh"), None, json!({"refresh_token": refresh_3})).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Access tokens expire on the server's clock, as a soft logout; the refresh renews.
    s.clock.advance_ms(301_000);
    let body = expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&access_3)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(body["soft_logout"], true, "{body}");
    let (status, renewed) = refresh(&s, &client_id, &refresh_3).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let access_4 = renewed["access_token"].as_str().unwrap().to_owned();
    let refresh_4 = renewed["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&access_4)).await.0, StatusCode::OK);

    // Revocation by the refresh token ends the session: device and both tokens.
    let page = Browser::new()
        .post_form(
            &format!("{}{REVOKE}", s.base),
            &[("token", &refresh_4), ("token_type_hint", "refresh_token"), ("client_id", &client_id)],
        )
        .await;
    assert_eq!((page.status, page.json()), (StatusCode::OK, json!({})));
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&access_4)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let (_, devices) = s.get(&format!("{V3}/devices"), Some(&alice.token)).await;
    assert!(!device_ids(&devices).contains(&"EXAMPLEAPP1".to_owned()), "{devices}");
    // Revoking again, or nonsense, is no error.
    let page = Browser::new().post_form(&format!("{}{REVOKE}", s.base), &[("token", &refresh_4)]).await;
    assert_eq!(page.status, StatusCode::OK);
    let page = Browser::new()
        .post_form(&format!("{}{REVOKE}", s.base), &[("token", "x"), ("token_type_hint", "id_token")])
        .await;
    assert_eq!(
        (page.status, page.json()["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_token_type"))
    );

    // The browser is still signed in: the next authorization goes straight to consent, and
    // the same device ID signs in again as the same device.
    let (code, verifier) = authorize_with_password(&s, &b, &client_id, "EXAMPLEAPP1", "-", "-").await;
    let (status, tokens) = exchange(&s, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let audit = s
        .services
        .audit
        .query(&conduit::service::audit::Query {
            action: Some("login".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .0;
    let audit: Vec<Value> = audit.into_iter().map(|r| serde_json::to_value(r).unwrap()).collect();
    assert!(
        audit
            .iter()
            .any(|r| r["params"]["type"] == "oauth2" && r["params"]["client_id"] == client_id.as_str()),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|r| r["params"]["for"] == "browser"),
        "the browser's password sign-in is recorded: {audit:?}"
    );
}

#[tokio::test]
async fn codes_are_bound_to_their_client_redirect_uri_and_verifier() {
    let s = oauth_server(|_| {}).await;
    s.register("bob", "pw-bob-12345").await;
    let client_id = register_client(&s).await;
    let mut other = native_client();
    other["client_name"] = json!("Other");
    let (_, other) = s.post(REGISTER, None, other).await;
    let other_id = other["client_id"].as_str().unwrap().to_owned();
    let b = Browser::new();
    for attempt in ["verifier", "client", "redirect"] {
        let (code, verifier) =
            authorize_with_password(&s, &b, &client_id, "BOBDEVICE1", "bob", "pw-bob-12345").await;
        let (wrong_verifier, _) = pkce();
        let form = match attempt {
            "verifier" => vec![
                ("client_id", client_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", wrong_verifier.as_str()),
            ],
            "client" => vec![
                ("client_id", other_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier.as_str()),
            ],
            _ => vec![
                ("client_id", client_id.as_str()),
                ("redirect_uri", "org.example.app:/other"),
                ("code_verifier", verifier.as_str()),
            ],
        };
        let mut form = form;
        form.push(("grant_type", "authorization_code"));
        form.push(("code", code.as_str()));
        let (status, body) = token_request(&s, &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{attempt}: {body}"
        );
        // A code tried wrongly is spent: the right request no longer works either.
        let (status, body) = exchange(&s, &client_id, &code, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{attempt}: {body}"
        );
    }
    // Codes expire.
    let (code, verifier) =
        authorize_with_password(&s, &b, &client_id, "BOBDEVICE1", "bob", "pw-bob-12345").await;
    s.clock.advance_ms(11 * 60 * 1000);
    assert_eq!(exchange(&s, &client_id, &code, &verifier).await.1["error"], "invalid_grant");
    // Grant types and missing fields.
    let (status, body) =
        token_request(&s, &[("grant_type", "password"), ("username", "bob"), ("password", "pw-bob-12345")])
            .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type")),
        "{body}"
    );
    let (_, body) = token_request(&s, &[("grant_type", "authorization_code")]).await;
    assert_eq!(body["error"], "invalid_request");
    let (_, body) =
        token_request(&s, &[("grant_type", "refresh_token"), ("grant_type", "refresh_token")]).await;
    assert_eq!(body["error"], "invalid_request", "a repeated parameter");
}

#[tokio::test]
async fn hostile_authorization_requests_and_forged_forms_are_refused() {
    let s = oauth_server(|_| {}).await;
    s.register("carol", "pw-carol-123").await;
    let client_id = register_client(&s).await;
    let (_, challenge) = pkce();
    let b = Browser::new();
    let good = authorize_url(&s, &client_id, "CAROLDEV01", &challenge, "st");

    // A redirect URI the client did not register, or an unknown client: a page, never a
    // redirect (an open redirector otherwise).
    let evil = good.replace(
        &url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>(),
        "https%3A%2F%2Fevil.example.com%2F",
    );
    let page = b.get(&evil).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{page:?}");
    assert!(page.location.is_none());
    let page = b.get(&good.replace(&client_id, "nosuchclient")).await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{page:?}");
    assert!(page.location.is_none());

    // Anything else wrong goes back to the app with an error.
    let back_with =
        |page: &Page| page.location.clone().map(|l| fragment_param(&l, "error")).unwrap_or_default();
    let no_pkce = good.replace("code_challenge_method=S256", "code_challenge_method=plain");
    assert_eq!(back_with(&b.get(&no_pkce).await).as_deref(), Some("invalid_request"));
    let no_device = good.replace("urn%3Amatrix%3Aclient%3Adevice%3ACAROLDEV01", "openid");
    assert_eq!(back_with(&b.get(&no_device).await).as_deref(), Some("invalid_scope"));
    let bad_device = good.replace("CAROLDEV01", "CAROL%2FDEV");
    assert_eq!(back_with(&b.get(&bad_device).await).as_deref(), Some("invalid_scope"));
    let token_type = good.replace("response_type=code", "response_type=token");
    assert_eq!(back_with(&b.get(&token_type).await).as_deref(), Some("unsupported_response_type"));
    let create = format!("{good}&prompt=create");
    assert_eq!(back_with(&b.get(&create).await).as_deref(), Some("invalid_request"));

    // The sign-in form needs its cookie (no login CSRF), and leads only to this server.
    let start = walk(&b, &good).await.unwrap();
    let then = hidden(&start, "then");
    let forged = Browser::new()
        .post_form(
            &format!("{}/_conduit/sign-in", s.base),
            &[("username", "carol"), ("password", "pw-carol-123"), ("then", &then), ("csrf", "guess")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{forged:?}");
    assert!(
        forged.headers.get("set-cookie").is_none_or(|c| !c.to_str().unwrap().starts_with("conduit_session="))
    );
    for then in
        ["https://evil.example.com/", "//evil.example.com/_conduit/", "/_conduit/\\evil", "/elsewhere"]
    {
        let url = format!(
            "{}/_conduit/sign-in?then={}",
            s.base,
            url::form_urlencoded::byte_serialize(then.as_bytes()).collect::<String>()
        );
        assert_eq!(b.get(&url).await.status, StatusCode::BAD_REQUEST, "{then}");
    }
    // A wrong password shows the page again, and no session.
    let form = [
        ("username", "carol"),
        ("password", "wrong"),
        ("then", then.as_str()),
        ("csrf", &hidden(&start, "csrf")),
    ];
    let wrong = b.post_form(&format!("{}/_conduit/sign-in", s.base), &form).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN, "{wrong:?}");
    assert!(wrong.body.contains("Invalid username or password"), "{}", wrong.body);
    assert!(b.cookie("conduit_session").is_none());

    // Consent needs the session and its CSRF value; a denial goes back as access_denied.
    let consent = sign_in_with_password(&s, &b, &wrong, "carol", "pw-carol-123").await;
    let authorization = hidden(&consent, "authorization");
    let forged = b
        .post_form(
            &format!("{}/_conduit/oauth2/consent", s.base),
            &[("authorization", &authorization), ("csrf", "nope"), ("decision", "allow")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{forged:?}");
    let stranger = Browser::new()
        .post_form(
            &format!("{}/_conduit/oauth2/consent", s.base),
            &[("authorization", &authorization), ("csrf", &hidden(&consent, "csrf")), ("decision", "allow")],
        )
        .await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN, "{stranger:?}");
    let back = decide(&s, &b, &consent, false).await;
    assert_eq!(fragment_param(&back, "error").as_deref(), Some("access_denied"), "{back}");
    assert_eq!(fragment_param(&back, "state").as_deref(), Some("st"));
    // Decided once: the authorization is gone.
    let again = b
        .post_form(
            &format!("{}/_conduit/oauth2/consent", s.base),
            &[("authorization", &authorization), ("csrf", &hidden(&consent, "csrf")), ("decision", "allow")],
        )
        .await;
    assert_eq!(again.status, StatusCode::FORBIDDEN, "{again:?}");
    // A deactivated user's browser session no longer counts.
    let (code, verifier) = authorize_with_password(&s, &b, &client_id, "CAROLDEV01", "-", "-").await;
    let (_, tokens) = exchange(&s, &client_id, &code, &verifier).await;
    let token = tokens["access_token"].as_str().unwrap();
    let (status, _) = s.post(&format!("{V3}/account/deactivate"), Some(token), json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "carol"}, "password": "pw-carol-123"}})).await;
    assert_eq!(status, StatusCode::OK);
    let page = walk(&b, &authorize_url(&s, &client_id, "CAROLDEV02", &challenge, "st")).await.unwrap();
    assert!(page.body.contains("id=\"sign-in\""), "signed out: {}", page.body);
}

#[tokio::test]
async fn signing_in_through_the_identity_provider_gives_an_oauth_session() {
    let (op, s) = crate::sso::corp_server(|c| c.oauth.enabled = true).await;
    let client_id = register_client(&s).await;
    let b = Browser::new();
    let (verifier, challenge) = pkce();
    let start = walk(&b, &authorize_url(&s, &client_id, "ALICEPHONE", &challenge, "st-2")).await.unwrap();
    assert!(start.body.contains("Continue with corp SSO"), "{}", start.body);
    let idp_link = format!("{}{}", s.base, {
        let marker = "id=\"idp-corp\" href=\"";
        let at = start.body.find(marker).unwrap() + marker.len();
        start.body[at..at + start.body[at..].find('"').unwrap()].replace("&amp;", "&")
    });
    let callback = b.sign_in(&idp_link, &s.base, "alice", "alice-pw").await;
    let consent = walk(&b, &callback).await.expect("the consent page after the provider");
    assert!(consent.body.contains("@alice:"), "{}", consent.body);
    let back = decide(&s, &b, &consent, true).await;
    let code = fragment_param(&back, "code").unwrap();
    let (status, tokens) = exchange(&s, &client_id, &code, &verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let (_, me) = s.get(&format!("{V3}/account/whoami"), Some(&token)).await;
    assert_eq!(me["device_id"], "ALICEPHONE");
    let (_, profile) = s.get(&format!("{V3}/profile/{}", me["user_id"].as_str().unwrap()), None).await;
    assert_eq!(profile["displayname"], "Alice Liddell", "mapped by the provider's templates");

    // Alice signs out at the provider: the back channel ends the app's session (its device)
    // and the browser's session of the sign-in pages, which must sign in again.
    let end = b.get(&format!("{}/session/end", op.issuer)).await;
    assert_eq!(end.status, StatusCode::OK, "{end:?}");
    let xsrf = end.body.split("name=\"xsrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let confirm = b
        .post_form(&format!("{}/session/end/confirm", op.issuer), &[("xsrf", &xsrf), ("logout", "yes")])
        .await;
    assert!(confirm.status.is_redirection() || confirm.status.is_success(), "{confirm:?}");
    let events = op.wait_for_event(|e| e["event"] != "grant.error").await;
    assert!(events.iter().any(|e| e["event"] == "backchannel.success"), "{events:?}");
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let (_, challenge) = pkce();
    let page = walk(&b, &authorize_url(&s, &client_id, "ALICEPHONE", &challenge, "st-3")).await.unwrap();
    assert!(
        page.body.contains("id=\"sign-in\""),
        "the browser session ended with the provider's: {}",
        page.body
    );
}

#[tokio::test]
async fn an_oauth_session_resets_cross_signing_after_approval_on_the_account_page() {
    let s = oauth_server(|_| {}).await;
    let dave = s.register("dave", "pw-dave-1234").await;
    let client_id = register_client(&s).await;
    let b = Browser::new();
    let (code, verifier) =
        authorize_with_password(&s, &b, &client_id, "DAVEPHONE1", "dave", "pw-dave-1234").await;
    let (_, tokens) = exchange(&s, &client_id, &code, &verifier).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let keys = |seed: &str| {
        let master =
            json!({"user_id": dave.user_id, "usage": ["master"], "keys": {format!("ed25519:{seed}"): seed}});
        json!({"master_key": master})
    };
    let upload = format!("{V3}/keys/device_signing/upload");
    // The first keys need no approval; replacing them does, through `m.oauth`.
    let (status, body) = s.post(&upload, Some(&token), keys("first")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, challenge) = s.post(&upload, Some(&token), keys("second")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.oauth"]}]), "{challenge}");
    let url = challenge["params"]["m.oauth"]["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{}{ACCOUNT}?action=org.matrix.cross_signing_reset", s.base));
    assert_eq!(challenge["params"]["org.matrix.cross_signing_reset"]["url"], url.as_str());
    let session = challenge["session"].as_str().unwrap().to_owned();
    let (status, _) = s
        .post(
            &upload,
            Some(&token),
            json!({"master_key": keys("second")["master_key"], "auth": {"session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "not approved yet");
    // A password session keeps the password stage.
    let (_, legacy) = s.post(&upload, Some(&dave.token), keys("second")).await;
    assert_eq!(legacy["flows"], json!([{"stages": ["m.login.password"]}]), "{legacy}");

    // The account page, signed in already in this browser: approve.
    let page = walk(&b, &url).await.unwrap();
    assert!(page.body.contains("id=\"approve-reset\""), "{}", page.body);
    let approved = b
        .post_form(&format!("{}{ACCOUNT}/cross-signing-reset", s.base), &[("csrf", &hidden(&page, "csrf"))])
        .await;
    assert!(approved.body.contains("id=\"reset-allowed\""), "{approved:?}");
    let (status, body) = s
        .post(
            &upload,
            Some(&token),
            json!({"master_key": keys("second")["master_key"], "auth": {"session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The approval lasts ten minutes.
    s.clock.advance_ms(10 * 60 * 1000 + 1000);
    let token = {
        let (_, renewed) = refresh(&s, &client_id, tokens["refresh_token"].as_str().unwrap()).await;
        renewed["access_token"].as_str().unwrap().to_owned()
    };
    assert_eq!(s.post(&upload, Some(&token), keys("third")).await.0, StatusCode::UNAUTHORIZED);

    // The account page lists the sessions and signs one out.
    let list = walk(&b, &format!("{}{ACCOUNT}?action=org.matrix.devices_list", s.base)).await.unwrap();
    assert!(list.body.contains("id=\"device-DAVEPHONE1\""), "{}", list.body);
    assert!(list.body.contains(&format!("id=\"device-{}\"", dave.device_id)), "{}", list.body);
    // MSC4191's first name of the action, which older clients send, shows the same list.
    let unstable = walk(&b, &format!("{}{ACCOUNT}?action=org.matrix.sessions_list", s.base)).await.unwrap();
    assert!(unstable.body.contains("id=\"device-DAVEPHONE1\""), "{}", unstable.body);
    let view = walk(&b, &format!("{}{ACCOUNT}?action=org.matrix.device_delete&device_id=DAVEPHONE1", s.base))
        .await
        .unwrap();
    assert!(!view.body.contains(&format!("id=\"device-{}\"", dave.device_id)), "only the device asked for");
    let deleted = b
        .post_form(
            &format!("{}{ACCOUNT}/devices/delete", s.base),
            &[("device_id", "DAVEPHONE1"), ("csrf", &hidden(&view, "csrf"))],
        )
        .await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{deleted:?}");
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let forged = Browser::new()
        .post_form(
            &format!("{}{ACCOUNT}/devices/delete", s.base),
            &[("device_id", &dave.device_id), ("csrf", "x")],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&dave.token)).await.0, StatusCode::OK);
    // Signed out of the page, it asks to sign in again.
    let out =
        b.post_form(&format!("{}{ACCOUNT}/sign-out", s.base), &[("csrf", &hidden(&list, "csrf"))]).await;
    assert_eq!(out.status, StatusCode::OK, "{out:?}");
    let again = walk(&b, &format!("{}{ACCOUNT}", s.base)).await.unwrap();
    assert!(again.body.contains("id=\"sign-in\""), "{}", again.body);
}

/// The browser side for the SDK's authorization URL: the provider's sign-in as `alice`,
/// consent, and where the server sends the browser back to the app.
async fn browse_to_app(s: &TestServer, b: &Browser, authorize: &str) -> String {
    let start = walk(b, authorize).await.expect("the sign-in page");
    let marker = "id=\"idp-corp\" href=\"";
    let at =
        start.body.find(marker).unwrap_or_else(|| panic!("no provider on {}", start.body)) + marker.len();
    let link = format!(
        "{}{}",
        s.base,
        start.body[at..at + start.body[at..].find('"').unwrap()].replace("&amp;", "&")
    );
    let callback = b.sign_in(&link, &s.base, "alice", "alice-pw").await;
    let consent = walk(b, &callback).await.expect("the consent page");
    decide(s, b, &consent, true).await
}

/// matrix-rust-sdk's OAuth 2.0 support, as Element X uses it (`conduit-rust-sdk-check oauth`,
/// see tests/sdk/rust/src/oauth.rs), signing in through the OpenID provider: the device
/// appears in the server's devices while signed in and goes at logout.
#[tokio::test]
async fn matrix_rust_sdk_signs_in_with_oauth_syncs_refreshes_and_logs_out() {
    use std::sync::Arc;

    use crate::sdk::{Acting, drive_check, provided_by_scripts_test};

    let binary = provided_by_scripts_test("CONDUIT_RUST_SDK_BIN", "the matrix-rust-sdk check binary");
    let (op, s) = crate::sso::corp_server(|c| c.oauth.enabled = true).await;
    let answer = tempfile::NamedTempFile::new().unwrap();
    let answer_path = answer.path().to_owned();
    let mut command = std::process::Command::new(binary);
    command.arg("oauth").arg(&s.base).arg(&answer_path);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    let browser = Arc::new(Browser::new());
    let (_s, outcome) = drive_check(command, Duration::from_secs(300), s, move |server, request| -> Acting {
        let browser = Arc::clone(&browser);
        let answer_path = answer_path.clone();
        Box::pin(async move {
            let words: Vec<&str> = request.split(' ').collect();
            match words.as_slice() {
                ["authorize", url] => {
                    let back = browse_to_app(&server, &browser, url).await;
                    std::fs::write(&answer_path, back).unwrap();
                }
                ["device-present", user, device] => {
                    let user: ruma::OwnedUserId = user.parse().unwrap();
                    let found = server.services.devices.get(&user, (*device).into()).unwrap();
                    let found =
                        found.unwrap_or_else(|| panic!("device {device} of {user} is not on the server"));
                    assert_eq!(found.display_name.as_deref(), Some("Conduit check"));
                    assert!(found.oauth_client.is_some());
                }
                ["expire-access-token"] => server.clock.advance_ms(301_000),
                ["device-gone", user, device] => {
                    let user: ruma::OwnedUserId = user.parse().unwrap();
                    assert!(
                        server.services.devices.get(&user, (*device).into()).unwrap().is_none(),
                        "still there"
                    );
                }
                _ => panic!("the check asked for {request:?}, which this test does not do"),
            }
            Some(server)
        })
    })
    .await;
    drop(op);
    if let Err(failure) = outcome {
        panic!("matrix-rust-sdk OAuth check failed{failure}");
    }
}
