//! Element Web (the prebuilt app in the shared webapps folder) in Debian's headless Chromium,
//! driven by playwright-core from `tests/web/element.mjs`: sign in on its login page, let it
//! set up encryption, visit every User Settings tab, add an email address and a phone
//! number, open the user's profile panel, and register a second account on Element's own
//! page; failing on any error it shows, any uncaught page error and any failed request to the
//! server it does not expect.
//!
//! `scripts/test` installs Chromium and playwright-core and passes `CONDUIT_TEST_NODE`,
//! `CONDUIT_TEST_CHROMIUM` and `CONDUIT_ELEMENT_WEB`; a missing one fails the test.

use crate::{
    harness::TestServer,
    sdk::{client_check, provided_by_scripts_test, script},
};

#[tokio::test]
async fn element_web_sign_in_settings_tabs_and_registration_show_no_errors() {
    let node = provided_by_scripts_test("CONDUIT_TEST_NODE", "Node.js, for playwright-core");
    let chromium = provided_by_scripts_test("CONDUIT_TEST_CHROMIUM", "Debian's chromium");
    let element = provided_by_scripts_test("CONDUIT_ELEMENT_WEB", "Element Web's built static files");
    let s = TestServer::start().await;
    // Screenshots of every step; kept when the check fails.
    let artifacts = tempfile::Builder::new().prefix("conduit-element-web-").tempdir().expect("temp dir");
    let result = client_check(
        "Element Web",
        node,
        vec![script("web/element.mjs"), s.base.clone().into(), element, artifacts.path().into(), chromium],
    )
    .await;
    if let Err(failure) = result {
        let kept = artifacts.keep();
        panic!("{failure}\nscreenshots: {}", kept.display());
    }
}

/// Element Web's single sign-on as a person does it: the "Continue with …" button on its
/// login page, the provider's login form (node-oidc-provider), back to Element signed in.
#[tokio::test]
async fn element_web_signs_in_with_single_sign_on() {
    element_web_single_sign_on(false).await;
}

/// The same with the OAuth 2.0 server on: Element Web finds the OAuth metadata but its own
/// OAuth flow needs an OpenID provider (ID tokens, a key set), which this server is not, so it
/// must keep offering the legacy sign-in rather than break.
#[tokio::test]
async fn element_web_keeps_single_sign_on_beside_the_oauth_server() {
    element_web_single_sign_on(true).await;
}

async fn element_web_single_sign_on(oauth: bool) {
    let node = provided_by_scripts_test("CONDUIT_TEST_NODE", "Node.js, for playwright-core");
    let chromium = provided_by_scripts_test("CONDUIT_TEST_CHROMIUM", "Debian's chromium");
    let element = provided_by_scripts_test("CONDUIT_ELEMENT_WEB", "Element Web's built static files");
    // Element is served from a loopback port the script picks: its URLs receive the login
    // token without the confirmation page.
    let (_provider, s) = crate::sso::corp_server(|c| {
        c.sso.client_whitelist.push("http://127.0.0.1:".to_owned());
        c.oauth.enabled = oauth;
    })
    .await;
    let artifacts = tempfile::Builder::new().prefix("conduit-element-sso-").tempdir().expect("temp dir");
    let result = client_check(
        "Element Web single sign-on",
        node,
        vec![
            script("web/element_sso.mjs"),
            s.base.clone().into(),
            element,
            artifacts.path().into(),
            chromium,
            "Continue with corp SSO".into(),
            "alice".into(),
            "alice-pw".into(),
            "@alice:localhost".into(),
        ],
    )
    .await;
    if let Err(failure) = result {
        let kept = artifacts.keep();
        panic!("{failure}\nscreenshots: {}", kept.display());
    }
}
