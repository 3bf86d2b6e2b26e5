//! `conduit-rust-sdk-check oauth BASE_URL ANSWER_FILE`: signing in as Element X does, through
//! matrix-rust-sdk's OAuth 2.0 support against the server's built-in authorization server —
//! discovery, dynamic registration of a native app, the authorization code grant with PKCE
//! (the browser part is the test's: it signs in at the identity provider and consents),
//! then a sync, a message, an explicit refresh, an access token that expires and is renewed
//! by the SDK on its own, and logout (token revocation).
//!
//! Talking to the driver (tests/it/sdk.rs): `REQUEST authorize <url>` asks the test to open
//! the URL as a browser and write where the server sent it back (the app's redirect URI with
//! the code) into ANSWER_FILE; `REQUEST device-present <user> <device>`,
//! `REQUEST expire-access-token` and `REQUEST device-gone <user> <device>` ask it to check or
//! act on the server. Each is answered `done` on stdin.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use matrix_sdk::{
    Client,
    authentication::oauth::registration::{ApplicationType, ClientMetadata, Localized, OAuthGrantType},
    config::SyncSettings,
    ruma::{
        api::client::room::create_room,
        events::room::message::RoomMessageEventContent,
        serde::Raw,
    },
};

use crate::step;

const REDIRECT: &str = "org.example.conduitcheck:/callback";

fn request(what: &str) -> Result<()> {
    println!("REQUEST {what}");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the driver's answer")?;
    ensure!(line.trim() == "done", "the driver answered {line:?}");
    Ok(())
}

fn metadata() -> Result<Raw<ClientMetadata>> {
    let mut metadata = ClientMetadata::new(
        ApplicationType::Native,
        vec![OAuthGrantType::AuthorizationCode { redirect_uris: vec![REDIRECT.parse()?] }],
        Localized::new("https://conduitcheck.example.org/".parse()?, []),
    );
    metadata.client_name = Some(Localized::new("Conduit check".to_owned(), []));
    Ok(Raw::new(&metadata)?)
}

pub async fn run(base: &str, answer_file: &str) -> Result<()> {
    let store = tempfile::tempdir()?;
    let client = Client::builder()
        .homeserver_url(base)
        .sqlite_store(store.path(), None)
        .handle_refresh_tokens()
        .build()
        .await?;
    let oauth = client.oauth();
    let server = oauth.server_metadata().await.context("OAuth 2.0 server metadata")?;
    ensure!(server.account_management_uri.is_some(), "no account management URI");
    step("discovered the OAuth 2.0 server");

    let data = oauth
        .login(REDIRECT.parse()?, None, Some(metadata()?.into()), None)
        .build()
        .await
        .context("registering the client and building the authorization URL")?;
    ensure!(oauth.client_id().is_some(), "no client ID after registration");
    step("registered the client dynamically");
    request(&format!("authorize {}", data.url))?;
    let callback = std::fs::read_to_string(answer_file).context("the driver's callback URL")?;
    oauth.finish_login(callback.trim().parse::<url::Url>()?.into()).await.context("finishing the login")?;
    let session = oauth.user_session().context("no session after login")?;
    let me = client.whoami().await.context("whoami")?;
    ensure!(me.device_id.as_deref() == Some(session.meta.device_id.as_ref()), "whoami names another device");
    step(&format!("signed in as {} on device {}", me.user_id, session.meta.device_id));
    request(&format!("device-present {} {}", me.user_id, session.meta.device_id))?;

    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.context("first sync")?;
    let room = client.create_room(create_room::v3::Request::new()).await.context("creating a room")?;
    room.send(RoomMessageEventContent::text_plain("hello over OAuth")).await.context("sending")?;
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.context("sync")?;
    step("synced, made a room and sent a message");

    let before = oauth.full_session().context("no tokens")?.user.tokens;
    oauth.refresh_access_token().await.context("refreshing")?;
    let after = oauth.full_session().context("no tokens")?.user.tokens;
    ensure!(after.access_token != before.access_token, "the refresh gave the same access token");
    ensure!(after.refresh_token != before.refresh_token, "the refresh token did not rotate");
    client.whoami().await.context("whoami after the refresh")?;
    step("refreshed the access token");

    request("expire-access-token")?;
    let expired = oauth.full_session().context("no tokens")?.user.tokens;
    client.sync_once(SyncSettings::default().timeout(Duration::ZERO)).await.context("sync after expiry")?;
    let renewed = oauth.full_session().context("no tokens")?.user.tokens;
    ensure!(renewed.access_token != expired.access_token, "the SDK did not renew the expired token");
    step("the SDK renewed an expired access token by itself");

    // Logging out is RFC 7009 revocation of the refresh token at the revocation endpoint.
    // `OAuth::logout` makes that request through the `oauth2` crate, which refuses a
    // revocation URL that is not https, and this test server is plain http on loopback; so
    // the check makes the same request itself, with the token and client ID the SDK holds.
    let tokens = oauth.full_session().context("no tokens")?.user.tokens;
    let refresh_token = tokens.refresh_token.context("no refresh token")?;
    let client_id = oauth.client_id().context("no client ID")?.as_str().to_owned();
    let revoked = reqwest::Client::new()
        .post(server.revocation_endpoint.as_str())
        .form(&[("token", refresh_token.as_str()), ("token_type_hint", "refresh_token"), ("client_id", &client_id)])
        .send()
        .await
        .context("revoking")?;
    ensure!(revoked.status().is_success(), "revocation answered {}", revoked.status());
    let refused = client.whoami().await;
    ensure!(refused.is_err(), "the access token still works after revocation");
    request(&format!("device-gone {} {}", me.user_id, session.meta.device_id))?;
    step("logged out: the tokens were revoked and the device is gone");
    Ok(())
}
