//! Single sign-on through HTTP against a real OpenID provider (node-oidc-provider on
//! loopback, `tests/it/oidc_provider.rs`): the login flows, the redirect, the provider's
//! login form, the callback, one-time login tokens, the user mapping and claim requirements,
//! linking existing accounts, tampered and replayed callbacks, a provider that is down,
//! `sso_only`, re-authentication through the `m.login.sso` fallback page, back-channel
//! logout, and `login/get_token`.

use conduit::config::{Config, IdentityProviderConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, password_auth, session_of},
    keys::{cross_pair, cross_signing_key},
    oidc_provider::{Browser, CLIENT_ID, CLIENT_SECRET, OidcProvider, client, query_param},
};

/// The client the tests sign in for: in `sso.client_whitelist`, so the login token is sent
/// straight to it. The browser never goes there; the test reads the token off the redirect.
const CLIENT: &str = "https://client.example/app/";
const V3: &str = "/_matrix/client/v3";

/// A provider entry for the server's config.
fn provider(issuer: &str, id: &str, client_id: &str, extra: Value) -> IdentityProviderConfig {
    let mut entry = json!({
        "id": id,
        "name": format!("{id} SSO"),
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "profile", "email", "groups"],
        "backchannel_logout_enabled": true,
    });
    if let (Value::Object(entry), Value::Object(extra)) = (&mut entry, extra) {
        entry.extend(extra);
    }
    serde_json::from_value(entry).expect("a valid provider entry")
}

/// A provider with the test accounts and a server using it: one client registration per
/// `(id, client_id, id token algorithm, extra config)`.
async fn sso_server(
    providers: &[(&str, &str, &str, Value)],
    adjust: impl FnOnce(&mut Config),
) -> (OidcProvider, TestServer) {
    let reserved = TestServer::reserve().await;
    let clients =
        providers.iter().map(|(_, client_id, alg, _)| client(&reserved.base, client_id, alg)).collect();
    let op = OidcProvider::start(clients).await;
    let base = reserved.base.clone();
    let issuer = op.issuer.clone();
    let entries: Vec<IdentityProviderConfig> = providers
        .iter()
        .map(|(id, client_id, _, extra)| provider(&issuer, id, client_id, extra.clone()))
        .collect();
    let s = TestServer::boot_reserved(reserved, move |c| {
        c.well_known.client = Some(base);
        c.identity_providers = entries;
        c.sso.client_whitelist = vec![CLIENT.to_owned()];
        adjust(c);
    })
    .await;
    (op, s)
}

/// The usual setup: one provider `corp` that maps the user name and display name, and asks
/// for the `chat-users` group.
pub async fn corp_server(adjust: impl FnOnce(&mut Config)) -> (OidcProvider, TestServer) {
    let extra = json!({
        "user_mapping": {"localpart_template": "{{ user.preferred_username }}", "display_name_template": "{{ user.name }}", "email_template": "{{ user.email }}"},
        "attribute_requirements": [{"attribute": "groups", "value": "chat-users"}],
    });
    sso_server(&[("corp", CLIENT_ID, "RS256", extra)], adjust).await
}

/// `url` with query parameter `name` set to `value`.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name { value.to_owned() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.into()
}

fn redirect_path(idp: &str, client: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(client.as_bytes()).collect();
    format!("{V3}/login/sso/redirect/{idp}?redirectUrl={encoded}")
}

/// Sign in at `idp` as `user` in `browser`, up to the server's answer to the callback.
async fn callback_answer(
    s: &TestServer,
    b: &Browser,
    idp: &str,
    user: &str,
    password: &str,
) -> crate::oidc_provider::Page {
    let start = format!("{}{}", s.base, redirect_path(idp, CLIENT));
    let callback = b.sign_in(&start, &s.base, user, password).await;
    b.get(&callback).await
}

/// Sign in and return the login token the server sent the client.
async fn login_token(s: &TestServer, b: &Browser, idp: &str, user: &str, password: &str) -> String {
    let page = callback_answer(s, b, idp, user, password).await;
    assert_eq!(page.status, StatusCode::FOUND, "{page:?}");
    let location = page.location.expect("a redirect to the client");
    assert!(location.starts_with(CLIENT), "{location}");
    query_param(&location, "loginToken").expect("a loginToken")
}

async fn token_login(s: &TestServer, token: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/login"), None, json!({"type": "m.login.token", "token": token})).await
}

async fn sso_session(s: &TestServer, b: &Browser, idp: &str, user: &str, password: &str) -> Session {
    let token = login_token(s, b, idp, user, password).await;
    let (status, body) = token_login(s, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    session_of(&body)
}

/// The audit records (read through the service: no admin account needed).
fn audit(s: &TestServer, action: &str) -> Vec<Value> {
    let query =
        conduit::service::audit::Query { action: Some(action.to_owned()), limit: 1000, ..Default::default() };
    let (records, _) = s.services.audit.query(&query).unwrap();
    records.into_iter().map(|r| serde_json::to_value(r).unwrap()).collect()
}

#[tokio::test]
async fn login_flows_list_the_providers_then_token_then_password() {
    let s = TestServer::start_with(|c| {
        c.identity_providers = vec![
            provider(
                "https://id.example.com",
                "corp",
                "c",
                json!({"brand": "keycloak", "icon": "mxc://example.com/icon"}),
            ),
            provider("https://accounts.example.org", "partner", "p", json!({"name": "Partner Login"})),
        ];
    })
    .await;
    let (status, body) = s.get(&format!("{V3}/login"), None).await;
    assert_eq!(status, StatusCode::OK);
    let flows = body["flows"].as_array().unwrap();
    let types: Vec<&str> = flows.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["m.login.sso", "m.login.token", "m.login.password"], "{body}");
    assert_eq!(
        flows[0]["identity_providers"],
        json!([
            {"id": "corp", "name": "corp SSO", "icon": "mxc://example.com/icon", "brand": "keycloak"},
            {"id": "partner", "name": "Partner Login"},
        ])
    );
    assert!(flows[1].get("get_login_token").is_none(), "{body}");

    // `sso_only` takes password login away; `login/get_token` marks the token flow.
    let s = TestServer::start_with(|c| {
        c.identity_providers = vec![provider("https://id.example.com", "corp", "c", json!({}))];
        c.sso_only = true;
        c.login_via_existing_session.enabled = true;
    })
    .await;
    let (_, body) = s.get(&format!("{V3}/login"), None).await;
    let types: Vec<&str> =
        body["flows"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["m.login.sso", "m.login.token"], "{body}");
    assert_eq!(body["flows"][1]["get_login_token"], true);

    // Without providers nothing changes, and the redirect is not offered.
    let s = TestServer::start().await;
    let (_, body) = s.get(&format!("{V3}/login"), None).await;
    assert_eq!(body["flows"], json!([{"type": "m.login.password"}]));
    expect_error(s.get(&redirect_path("corp", CLIENT), None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn first_sign_in_creates_the_mapped_account_and_its_token_logs_in_once() {
    let (_op, s) = corp_server(|_| {}).await;
    let b = Browser::new();
    let token = login_token(&s, &b, "corp", "alice", "alice-pw").await;
    // The redirect's cookie binds the sign-in to this browser.
    assert!(b.cookie("conduit_sso_session").is_some());

    let (status, body) = token_login(&s, &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let alice = session_of(&body);
    assert_eq!(alice.user_id, "@alice:localhost");
    let (_, whoami) = s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await;
    assert_eq!(whoami["user_id"], "@alice:localhost");
    let (_, profile) = s.get(&format!("{V3}/profile/@alice:localhost"), None).await;
    assert_eq!(profile["displayname"], "Alice Liddell");
    // The mapped email address is on the account, verified.
    let (_, threepids) = s.get(&format!("{V3}/account/3pid"), Some(&alice.token)).await;
    assert_eq!(threepids["threepids"][0]["address"], "alice@example.com", "{threepids}");
    assert_eq!(threepids["threepids"][0]["medium"], "email");

    // A token works once.
    expect_error(token_login(&s, &token).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(token_login(&s, "not-a-token").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(token_login(&s, &"x".repeat(100_000)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // The next sign-in finds the account through its link (a new browser, new provider
    // session); an expired token is refused on the server's clock.
    let token = login_token(&s, &Browser::new(), "corp", "alice", "alice-pw").await;
    s.clock.advance_ms(121_000);
    expect_error(token_login(&s, &token).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let second = sso_session(&s, &Browser::new(), "corp", "alice", "alice-pw").await;
    assert_eq!(second.user_id, alice.user_id);
    assert_ne!(second.device_id, alice.device_id);

    // A user name a user ID cannot hold is escaped as the spec suggests.
    let dave = sso_session(&s, &Browser::new(), "corp", "dave", "dave-pw").await;
    assert_eq!(dave.user_id, "@dave=20m=c3=bcller:localhost");

    // The audit log has the registration and the logins, with the provider.
    let registered = audit(&s, "register");
    assert!(
        registered.iter().any(|r| r["target"] == "@alice:localhost" && r["params"]["idp_id"] == "corp"),
        "{registered:?}"
    );
    let logins = audit(&s, "login");
    let ok: Vec<&Value> =
        logins.iter().filter(|r| r["outcome"] == "success" && r["target"] == "@alice:localhost").collect();
    assert_eq!(ok.len(), 2, "{logins:?}");
    assert_eq!(ok[0]["params"]["type"], "m.login.token");
    assert_eq!(ok[0]["params"]["idp_id"], "corp");
    assert!(logins.iter().filter(|r| r["outcome"] == "failure").count() >= 3, "{logins:?}");
    // A token never used is swept once expired.
    login_token(&s, &Browser::new(), "corp", "bob", "bob-pw").await;
    assert_eq!(s.services.login_tokens.stored_tokens().unwrap(), 1);
    s.services.login_tokens.remove_expired().unwrap();
    assert_eq!(s.services.login_tokens.stored_tokens().unwrap(), 1, "not expired yet");
    s.clock.advance_ms(121_000);
    s.services.login_tokens.remove_expired().unwrap();
    assert_eq!(s.services.login_tokens.stored_tokens().unwrap(), 0);
}

#[tokio::test]
async fn each_signing_algorithm_and_client_authentication_is_accepted() {
    // ES256 with the secret in the form, EdDSA with the secret in a file and the claims from
    // the userinfo endpoint; RS256 (basic auth) is what the other tests use.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    let (_op, s) = sso_server(
        &[
            ("ec", "conduit-ec", "ES256", json!({"client_auth_method": "client_secret_post"})),
            (
                "ed",
                "conduit-ed",
                "EdDSA",
                json!({"client_secret": null, "client_secret_path": secret_file, "user_profile_method": "userinfo_endpoint", "pkce_method": "always"}),
            ),
        ],
        |_| {},
    )
    .await;
    let alice = sso_session(&s, &Browser::new(), "ec", "alice", "alice-pw").await;
    assert_eq!(alice.user_id, "@alice:localhost");
    let bob = sso_session(&s, &Browser::new(), "ed", "bob", "bob-pw").await;
    assert_eq!(bob.user_id, "@bob:localhost");
    let (_, profile) = s.get(&format!("{V3}/profile/@bob:localhost"), None).await;
    assert_eq!(profile["displayname"], "Bob Builder");
}

#[tokio::test]
async fn existing_accounts_are_linked_only_when_the_provider_allows_it() {
    let (_op, s) = sso_server(
        &[
            ("strict", "conduit-strict", "RS256", json!({})),
            ("trusted", "conduit-trusted", "RS256", json!({"allow_existing_users": true})),
            ("closed", "conduit-closed", "RS256", json!({"enable_registration": false})),
        ],
        |_| {},
    )
    .await;
    let bob = s.register("bob", "pw-bob-12345").await;

    // Not allowed: the sign-in is refused, the account stays unlinked.
    let page = callback_answer(&s, &Browser::new(), "strict", "bob", "bob-pw").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{page:?}");
    assert_eq!(page.json()["errcode"], "M_USER_IN_USE");
    assert!(page.json()["error"].as_str().unwrap().contains("already exists"));
    let bob_id = ruma::UserId::parse(&bob.user_id).unwrap();
    assert!(s.services.users.external_ids(&bob_id).unwrap().is_empty());

    // Allowed: linked, and the login is into the existing account.
    let linked = sso_session(&s, &Browser::new(), "trusted", "bob", "bob-pw").await;
    assert_eq!(linked.user_id, bob.user_id);
    assert_eq!(audit(&s, "sso.link").len(), 1);
    // The password still works too, and re-authentication offers both.
    let by_password = s.login("bob", "pw-bob-12345", None).await;
    let (_, challenge) =
        s.post(&format!("{V3}/delete_devices"), Some(&by_password.token), json!({"devices": []})).await;
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}, {"stages": ["m.login.sso"]}]));

    // A provider that makes no accounts lets only linked ones in.
    let page = callback_answer(&s, &Browser::new(), "closed", "alice", "alice-pw").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{page:?}");
    let (status, _) = s.get("/_matrix/client/v3/profile/@alice:localhost", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_claim_requirement_refuses_users_outside_the_group() {
    let (_op, s) = corp_server(|_| {}).await;
    let mut b = Browser::new();
    b.html = true;
    let page = callback_answer(&s, &b, "corp", "carol", "carol-pw").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{page:?}");
    assert!(page.headers[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(page.body.contains("not allowed to use this server"), "{}", page.body);
    assert!(page.body.contains("M_FORBIDDEN"));
    let (status, _) = s.get("/_matrix/client/v3/profile/@carol:localhost", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no account was made");
    let failures: Vec<Value> = audit(&s, "login").into_iter().filter(|r| r["outcome"] == "failure").collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["params"]["idp_id"], "corp");
    assert_eq!(failures[0]["params"]["subject"], "carol");
}

#[tokio::test]
async fn tampered_replayed_and_foreign_callbacks_are_refused() {
    let (_op, s) = sso_server(
        &[
            ("corp", CLIENT_ID, "RS256", json!({})),
            ("nopkce", "conduit-nopkce", "RS256", json!({"pkce_method": "never"})),
        ],
        |_| {},
    )
    .await;
    let start = |idp: &str| format!("{}{}", s.base, redirect_path(idp, CLIENT));

    // A state the server never made.
    let b = Browser::new();
    let callback = b.sign_in(&start("corp"), &s.base, "alice", "alice-pw").await;
    let state = query_param(&callback, "state").unwrap();
    let forged = with_param(&callback, "state", "forged-state");
    assert_ne!(state, "forged-state");
    let answer = b.get(&forged).await;
    assert_eq!(
        (answer.status, answer.json()["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN"))
    );

    // The real callback from another browser (no cookie, or another one): refused, and the
    // state is used up, so the right browser cannot use it either afterwards.
    let other = Browser::new();
    assert_eq!(other.get(&callback).await.status, StatusCode::FORBIDDEN);
    other.set_cookie("conduit_sso_session", "ThisIsSomeOtherBrowsersCookie00");
    let b2 = Browser::new();
    let callback2 = b2.sign_in(&start("corp"), &s.base, "alice", "alice-pw").await;
    assert_eq!(other.get(&callback2).await.status, StatusCode::FORBIDDEN);
    assert_eq!(b2.get(&callback2).await.status, StatusCode::FORBIDDEN);

    // A sign-in that took longer than 15 minutes on the server's clock.
    let slow = Browser::new();
    let late = slow.sign_in(&start("corp"), &s.base, "alice", "alice-pw").await;
    s.clock.advance_ms(15 * 60 * 1000 + 1);
    let answer = slow.get(&late).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{answer:?}");
    assert!(answer.json()["error"].as_str().unwrap().contains("expired"));

    // A replay of a callback that worked.
    let b3 = Browser::new();
    let callback3 = b3.sign_in(&start("corp"), &s.base, "alice", "alice-pw").await;
    assert_eq!(b3.get(&callback3).await.status, StatusCode::FOUND);
    assert_eq!(b3.get(&callback3).await.status, StatusCode::FORBIDDEN);

    // A code from one sign-in under another sign-in's state (same browser): with PKCE the
    // provider refuses the exchange; without it, the ID token's nonce gives it away.
    for idp in ["corp", "nopkce"] {
        let b = Browser::new();
        let first = b.sign_in(&start(idp), &s.base, "alice", "alice-pw").await;
        let second = b.sign_in(&start(idp), &s.base, "alice", "alice-pw").await;
        let swapped = with_param(&second, "code", &query_param(&first, "code").unwrap());
        let answer = b.get(&swapped).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{idp}: {answer:?}");
        let message = answer.json()["error"].as_str().unwrap().to_owned();
        if idp == "nopkce" {
            assert!(message.contains("nonce"), "{message}");
        } else {
            assert!(message.contains("refused the sign-in"), "{message}");
        }
    }

    // An answer claiming to come from another issuer (RFC 9207), and a provider's error.
    let b = Browser::new();
    let callback = b.sign_in(&start("corp"), &s.base, "alice", "alice-pw").await;
    let mixed = with_param(&callback, "iss", "https://evil.example");
    assert_eq!(b.get(&mixed).await.status, StatusCode::FORBIDDEN);
    let b = Browser::new();
    let redirect = b.get(&start("corp")).await;
    let state = query_param(redirect.location.as_deref().unwrap(), "state").unwrap();
    let denied = b
        .get(&format!(
            "{}/_synapse/client/oidc/callback?state={state}&error=access_denied&error_description=No",
            s.base
        ))
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.json()["error"].as_str().unwrap().contains("access_denied"));
    // A repeated parameter.
    let repeated = b.get(&format!("{}/_synapse/client/oidc/callback?state=a&state=b&code=c", s.base)).await;
    assert_eq!(repeated.json()["errcode"], "M_INVALID_PARAM");
    // Nothing of this logged anyone in.
    assert!(audit(&s, "login").iter().all(|r| r["outcome"] == "failure"));
}

#[tokio::test]
async fn hostile_redirect_urls_are_refused_and_unknown_clients_get_a_confirmation_page() {
    let (op, s) = corp_server(|_| {}).await;
    let b = Browser::new();
    for (url, errcode) in [
        ("javascript:alert(document.cookie)", "M_INVALID_PARAM"),
        ("data:text/html,<script>alert(1)</script>", "M_INVALID_PARAM"),
        ("/relative/path", "M_INVALID_PARAM"),
        ("https://user:pw@client.example/", "M_INVALID_PARAM"),
    ] {
        let page = b.get(&format!("{}{}", s.base, redirect_path("corp", url))).await;
        assert_eq!(
            (page.status, page.json()["errcode"].as_str()),
            (StatusCode::BAD_REQUEST, Some(errcode)),
            "{url}"
        );
    }
    let missing = b.get(&format!("{}{V3}/login/sso/redirect/corp", s.base)).await;
    assert_eq!(missing.json()["errcode"], "M_MISSING_PARAM");
    let unknown = b.get(&format!("{}{}", s.base, redirect_path("nope", CLIENT))).await;
    assert_eq!(
        (unknown.status, unknown.json()["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND"))
    );

    // A client not in the whitelist: the token is not sent on by itself; a page names the
    // site and the account, and cannot be framed.
    let elsewhere = "https://evil.example/steal?x=1";
    let start = format!("{}{}", s.base, redirect_path("corp", elsewhere));
    let callback = b.sign_in(&start, &s.base, "alice", "alice-pw").await;
    let page = b.get(&callback).await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(page.location.is_none());
    assert!(page.body.contains("https://evil.example"), "{}", page.body);
    assert!(page.body.contains("@alice:localhost"));
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["cache-control"], "no-store");
    let link = page
        .body
        .split("id=\"continue\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(link.starts_with("https://evil.example/steal?x=1&loginToken="), "{link}");
    // The token in the link is the real one.
    let token = query_param(&link, "loginToken").unwrap();
    assert_eq!(token_login(&s, &token).await.0, StatusCode::OK);

    // Without a provider named, the one provider is used; with several, a page lists them.
    let page = b
        .get(&format!("{}{V3}/login/sso/redirect?redirectUrl=https%3A%2F%2Fclient.example%2Fapp%2F", s.base))
        .await;
    assert_eq!(page.status, StatusCode::FOUND);
    assert!(page.location.unwrap().starts_with(&op.issuer));
    let (_op2, two) =
        sso_server(&[("a", "ca", "RS256", json!({})), ("b", "cb", "RS256", json!({}))], |_| {}).await;
    let page = b
        .get(&format!("{}{V3}/login/sso/redirect?redirectUrl=https%3A%2F%2Fclient.example%2F", two.base))
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("/_matrix/client/v3/login/sso/redirect/a?redirectUrl=https%3A%2F%2Fclient.example%2F"),
        "{}",
        page.body
    );
    assert!(page.body.contains("b SSO"));
}

#[tokio::test]
async fn a_provider_that_is_down_gives_a_clear_error() {
    // Never reachable: the redirect cannot even discover it.
    let reserved = TestServer::reserve().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_issuer = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let base = reserved.base.clone();
    let s = TestServer::boot_reserved(reserved, |c| {
        c.well_known.client = Some(base);
        c.identity_providers =
            vec![provider(&dead_issuer, "corp", CLIENT_ID, json!({"name": "Company SSO"}))];
    })
    .await;
    let mut b = Browser::new();
    let page = b.get(&format!("{}{}", s.base, redirect_path("corp", CLIENT))).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page:?}");
    assert!(page.json()["error"].as_str().unwrap().contains("Company SSO could not be reached"), "{page:?}");
    b.html = true;
    let page = b.get(&format!("{}{}", s.base, redirect_path("corp", CLIENT))).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(
        page.body.contains("<h1>Sign-in failed</h1>") && page.body.contains("could not be reached"),
        "{}",
        page.body
    );

    // Gone between the sign-in and the callback: the code cannot be exchanged.
    let (op, s) = corp_server(|_| {}).await;
    let b = Browser::new();
    let callback = b
        .sign_in(&format!("{}{}", s.base, redirect_path("corp", CLIENT)), &s.base, "alice", "alice-pw")
        .await;
    drop(op);
    let page = b.get(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page:?}");
    assert!(page.json()["error"].as_str().unwrap().contains("could not be reached"));
}

#[tokio::test]
async fn sso_only_turns_passwords_off() {
    let (_op, s) = corp_server(|c| {
        c.sso_only = true;
        c.allow_registration = true;
    })
    .await;
    s.services.accounts.create_user("olduser", "pw-old-12345", false).await.unwrap();
    let password = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "olduser"}, "password": "pw-old-12345"});
    expect_error(s.post(&format!("{V3}/login"), None, password).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.post(&format!("{V3}/register"), None, json!({"username": "new", "password": "pw-new-12345"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let alice = sso_session(&s, &Browser::new(), "corp", "alice", "alice-pw").await;
    let (_, capabilities) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(capabilities["capabilities"]["m.change_password"]["enabled"], false);
    expect_error(
        s.post(&format!("{V3}/account/password"), Some(&alice.token), json!({"new_password": "x-12345678"}))
            .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

/// Complete the `m.login.sso` stage of UIA session `session` in `browser` as `user`:
/// the fallback page, the provider, the callback. Returns the callback's answer.
async fn sso_fallback(
    s: &TestServer,
    b: &Browser,
    session: &str,
    user: &str,
    password: &str,
) -> crate::oidc_provider::Page {
    let fallback = b.get(&format!("{}{V3}/auth/m.login.sso/fallback/web?session={session}", s.base)).await;
    assert_eq!(fallback.status, StatusCode::OK, "{fallback:?}");
    assert!(
        fallback.body.contains("remove a device") || fallback.body.contains("encryption identity"),
        "{}",
        fallback.body
    );
    let link = fallback
        .body
        .split("id=\"continue\" href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let callback = b.sign_in(&link, &s.base, user, password).await;
    b.get(&callback).await
}

#[tokio::test]
async fn sso_users_reauthenticate_through_the_fallback_page_to_delete_devices_and_reset_cross_signing() {
    let (_op, s) = corp_server(|_| {}).await;
    let b = Browser::new();
    let alice = sso_session(&s, &b, "corp", "alice", "alice-pw").await;
    let laptop = sso_session(&s, &Browser::new(), "corp", "alice", "alice-pw").await;

    // The account has no password: single sign-on is the only stage offered.
    let path = format!("{V3}/devices/{}", laptop.device_id);
    let (status, challenge) =
        s.call(reqwest::Method::DELETE, &path, Some(&alice.token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.sso"]}]));
    let session = challenge["session"].as_str().unwrap().to_owned();

    // Naming the stage before doing it is no proof.
    let early = json!({"auth": {"type": "m.login.sso", "session": session}});
    let (status, body) = s.call(reqwest::Method::DELETE, &path, Some(&alice.token), Some(early)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");

    // Someone else signing in at the provider cannot confirm it.
    let page = sso_fallback(&s, &Browser::new(), &session, "bob", "bob-pw").await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{page:?}");

    // Alice can (her browser is still signed in at the provider: straight back).
    let page = sso_fallback(&s, &b, &session, "alice", "alice-pw").await;
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    assert!(page.body.contains("window.opener.postMessage(\"authDone\""), "{}", page.body);
    let retry = json!({"auth": {"session": session}});
    let (status, body) = s.call(reqwest::Method::DELETE, &path, Some(&alice.token), Some(retry)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s.get(&format!("{V3}/account/whoami"), Some(&laptop.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Replacing the cross-signing keys (an identity reset) the same way.
    let upload = format!("{V3}/keys/device_signing/upload");
    // The first upload needs no stage: Element sends it after a token login with an empty
    // `auth`, which counts as none (as on Synapse).
    let first = json!({"master_key": cross_signing_key(&alice.user_id, &cross_pair(), "master"), "auth": {}});
    assert_eq!(s.post(&upload, Some(&alice.token), first).await.0, StatusCode::OK);
    let reset = json!({"master_key": cross_signing_key(&alice.user_id, &cross_pair(), "master")});
    let (status, challenge) = s.post(&upload, Some(&alice.token), reset.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.sso"]}]));
    let session = challenge["session"].as_str().unwrap().to_owned();
    assert_eq!(sso_fallback(&s, &b, &session, "alice", "alice-pw").await.status, StatusCode::OK);
    let mut with_auth = reset;
    with_auth["auth"] = json!({"type": "m.login.sso", "session": session});
    let (status, body) = s.post(&upload, Some(&alice.token), with_auth).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Other stages have no fallback page; an unknown session has none either.
    let other = Browser::new();
    let page = other.get(&format!("{}{V3}/auth/m.login.recaptcha/fallback/web?session=x", s.base)).await;
    assert_eq!(page.json()["errcode"], "M_UNRECOGNIZED");
    let page = other.get(&format!("{}{V3}/auth/m.login.sso/fallback/web?session=nope", s.base)).await;
    assert_eq!(page.json()["errcode"], "M_NOT_FOUND");
}

#[tokio::test]
async fn backchannel_logout_ends_the_sessions_of_that_provider_session() {
    let (op, s) = corp_server(|_| {}).await;
    let first = Browser::new();
    let second = Browser::new();
    let a1 = sso_session(&s, &first, "corp", "alice", "alice-pw").await;
    let a2 = sso_session(&s, &second, "corp", "alice", "alice-pw").await;
    let bob = sso_session(&s, &Browser::new(), "corp", "bob", "bob-pw").await;

    // Alice signs out at the provider in the first browser (RP-initiated logout's page and
    // confirmation); the provider tells the server through the back channel.
    let end = first.get(&format!("{}/session/end", op.issuer)).await;
    assert_eq!(end.status, StatusCode::OK, "{end:?}");
    let xsrf = end.body.split("name=\"xsrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let confirm = first
        .post_form(&format!("{}/session/end/confirm", op.issuer), &[("xsrf", &xsrf), ("logout", "yes")])
        .await;
    assert!(confirm.status.is_redirection() || confirm.status.is_success(), "{confirm:?}");
    let events = op.wait_for_event(|e| e["event"] != "grant.error").await;
    assert!(events.iter().any(|e| e["event"] == "backchannel.success"), "{events:?}");

    let whoami = |token: String| {
        let s = &s;
        async move { s.get(&format!("{V3}/account/whoami"), Some(&token)).await.0 }
    };
    assert_eq!(whoami(a1.token.clone()).await, StatusCode::UNAUTHORIZED, "that session's device is gone");
    assert_eq!(whoami(a2.token.clone()).await, StatusCode::OK, "the other provider session stays");
    assert_eq!(whoami(bob.token.clone()).await, StatusCode::OK);
    let logouts = audit(&s, "logout");
    assert!(
        logouts.iter().any(|r| r["params"]["type"] == "backchannel_logout"
            && r["params"]["devices"] == json!([a1.device_id])),
        "{logouts:?}"
    );

    // Forged, malformed or missing logout tokens are refused with 400.
    let path = format!("{}/_synapse/client/oidc/backchannel_logout", s.base);
    let oversized =
        format!("logout_token={}.{}.{}", "a".repeat(10_000), "b".repeat(10_000), "c".repeat(10_000));
    for body in ["logout_token=not.a.token", "logout_token=", "other=1", oversized.as_str()] {
        let response = s
            .http
            .post(&path)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{}", &body[..body.len().min(40)]);
    }
    // A token the provider signed for this client, but an ID token, is no logout token (no
    // logout event, a nonce): the test gets one by exchanging a code itself.
    let b = Browser::new();
    let redirect_uri = format!("{}/_synapse/client/oidc/callback", s.base);
    let encoded: String = url::form_urlencoded::byte_serialize(redirect_uri.as_bytes()).collect();
    let authorize = format!(
        "{}/auth?client_id={CLIENT_ID}&response_type=code&scope=openid&state=s1&nonce=n1&redirect_uri={encoded}",
        op.issuer
    );
    let callback = b.sign_in(&authorize, &s.base, "alice", "alice-pw").await;
    let exchange = s
        .http
        .post(format!("{}/token", op.issuer))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &query_param(&callback, "code").unwrap()),
            ("redirect_uri", &redirect_uri),
        ])
        .send()
        .await
        .unwrap();
    let tokens: Value = exchange.json().await.unwrap();
    let id_token = tokens["id_token"].as_str().expect("an ID token").to_owned();
    let response = s.http.post(&path).form(&[("logout_token", id_token.as_str())]).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("logout event"), "{body}");
    assert_eq!(whoami(a2.token).await, StatusCode::OK);
}

#[tokio::test]
async fn login_get_token_signs_in_another_device_once() {
    let s = TestServer::start_with(|c| c.login_via_existing_session.enabled = true).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let path = "/_matrix/client/v1/login/get_token";
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], true);

    let (status, challenge) = s.post(path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    assert_eq!(challenge["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = challenge["session"].as_str().unwrap().to_owned();
    let auth = json!({"auth": password_auth(&alice.user_id, "pw-alice-123", Some(&session))});
    let (status, body) = s.post(path, Some(&alice.token), auth.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in_ms"], 300_000);
    let token = body["login_token"].as_str().unwrap().to_owned();

    // The authentication served once: the same session makes no second token.
    let (status, again) = s.post(path, Some(&alice.token), json!({"auth": {"session": session}})).await;
    assert_ne!(status, StatusCode::OK, "{again}");

    let (status, body) = s
        .post(
            &format!("{V3}/login"),
            None,
            json!({"type": "m.login.token", "token": token, "initial_device_display_name": "Phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let phone = session_of(&body);
    assert_eq!(phone.user_id, alice.user_id);
    assert_ne!(phone.device_id, alice.device_id);
    expect_error(token_login(&s, &token).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Expired on the server's clock.
    let (_, challenge) = s.post(path, Some(&alice.token), json!({})).await;
    let session = challenge["session"].as_str().unwrap();
    let (_, body) = s
        .post(
            path,
            Some(&alice.token),
            json!({"auth": password_auth(&alice.user_id, "pw-alice-123", Some(session))}),
        )
        .await;
    let token = body["login_token"].as_str().unwrap().to_owned();
    s.clock.advance_ms(300_001);
    expect_error(token_login(&s, &token).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert!(audit(&s, "login_token.issue").len() == 2);

    // Off (the default): no such endpoint, and the capability says so.
    let s = TestServer::start().await;
    let bob = s.register("bob", "pw-bob-12345").await;
    expect_error(s.post(path, Some(&bob.token), json!({})).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&bob.token)).await;
    assert!(caps["capabilities"].get("m.get_login_token").is_none_or(|c| c["enabled"] == false), "{caps}");
    let (_, flows) = s.get(&format!("{V3}/login"), None).await;
    assert_eq!(flows["flows"], json!([{"type": "m.login.password"}]));
}

/// The provider's client goes through the outbound address guard: the configured issuer's
/// host is trusted (a company's provider lives on its own network, here loopback), but an
/// endpoint its discovery document points at another internal address is refused before any
/// connection, with an error naming the address.
#[tokio::test]
async fn a_discovery_document_cannot_send_the_server_to_internal_addresses() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let document = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": "http://10.255.255.1/token",
        "jwks_uri": format!("{issuer}/jwks"),
        "code_challenge_methods_supported": ["S256"],
    });
    let app = axum::Router::new().route(
        "/.well-known/openid-configuration",
        axum::routing::get(move || {
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let reserved = TestServer::reserve().await;
    let base = reserved.base.clone();
    let s = TestServer::boot_reserved(reserved, |c| {
        c.well_known.client = Some(base);
        c.identity_providers = vec![provider(&issuer, "corp", CLIENT_ID, json!({"name": "Company SSO"}))];
        c.sso.client_whitelist = vec![CLIENT.to_owned()];
    })
    .await;
    let b = Browser::new();
    // Discovery at the trusted issuer works: the redirect goes to its authorization endpoint.
    let page = b.get(&format!("{}{}", s.base, redirect_path("corp", CLIENT))).await;
    let location = page.location.clone().unwrap_or_else(|| panic!("no redirect: {page:?}"));
    assert!(location.starts_with(&format!("{issuer}/auth?")), "{location}");
    let state = url::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("a state parameter");
    // The code exchange would go to 10.255.255.1: refused without a connection attempt.
    let callback = format!("{}/_synapse/client/oidc/callback?code=abc&state={state}", s.base);
    let page = b.get(&callback).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY, "{page:?}");
    let error = page.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("Company SSO names an address")
            && error.contains("10.255.255.1 is not a public address"),
        "{error}"
    );
}
