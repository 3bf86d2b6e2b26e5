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
