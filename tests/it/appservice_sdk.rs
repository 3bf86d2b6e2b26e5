//! Real bridges against a booted server: mautrix-python (PyPI) and matrix-appservice-bridge
//! (npm) run as application services (`tests/appservice/*_check.*`, validated against Synapse
//! with `tests/appservice/synapse_driver.py`): ping both ways, the bot joining on invite, a
//! namespaced user replying, exclusive namespaces, refused masquerading, alias and user
//! queries, typing and receipts, and every event missed while the bridge was down arriving in
//! order, across a restart of the server; matrix-appservice-bridge also answers third-party
//! lookups and publishes a room in its network's directory.
//!
//! An encrypting bridge (`mautrix_e2ee_check.py`: mautrix-python's OlmMachine in appservice
//! mode, with its device made through MSC4190 and its to-device messages, key counts and
//! device lists from transactions) answers a matrix-nio user's encrypted message.
//!
//! The check prints `REQUEST restart-server` when it wants the server restarted (same port,
//! same database), and this driver answers `done` on its stdin once it is back. The server's
//! clock runs twenty times as fast as the wall clock meanwhile (see `run_bridge`).

use std::{ffi::OsString, time::Duration};

use crate::{
    appservice::with_registration,
    harness::{TestServer, free_port},
    sdk::{Acting, drive_check, provided_by_scripts_test, script},
};

/// The registration the checks expect (see `tests/appservice/synapse_driver.py`), with
/// random tokens, for a bridge listening on `port`; `extra` adds lines.
fn registration(port: u16, extra: &str) -> String {
    let token = |prefix: &str| format!("{prefix}_{}", conduit::service::passwords::random_string(32));
    format!(
        "id: bridge\nurl: http://127.0.0.1:{port}\nas_token: {}\nhs_token: {}\nsender_localpart: bridgebot\n\
         rate_limited: false\nreceive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\nprotocols: [checknet]\n\
         namespaces:\n  users:\n    - exclusive: true\n      regex: '@bridge_.*:localhost'\n  \
         aliases:\n    - exclusive: true\n      regex: '#bridge_.*:localhost'\n  rooms: []\n{extra}",
        token("as"),
        token("hs"),
    )
}

/// Run `program args… <base> <registration>` as a bridge, restarting the server when asked.
async fn run_bridge(what: &str, program: OsString, args: Vec<OsString>, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = TestServer::start_with(with_registration(&dir, &registration(port, extra))).await;
    let registration_path = dir.path().join("bridge.yaml");
    let mut command = std::process::Command::new(program);
    command.args(args).arg(&server.base).arg(&registration_path);
    // The bridge runs on the wall clock, and the server retries transactions on its own: the
    // server's clock runs twenty times as fast as the wall clock while the bridge runs (the
    // same clock across the restart), so a retry after a backoff comes within the bridge's
    // waits.
    let clock = std::sync::Arc::clone(&server.clock);
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            clock.advance_ms(1_000);
        }
    });
    // The checks bound each wait and their whole run (300 s); this bounds the driver too.
    let (_server, outcome) =
        drive_check(command, Duration::from_secs(600), server, |server, request| -> Acting {
            let path = registration_path.clone();
            Box::pin(async move {
                assert_eq!(request, "restart-server", "the check asked for {request:?}");
                Some(server.restart_with(|c| c.app_service_config_files = vec![path]).await)
            })
        })
        .await;
    ticker.abort();
    if let Err(failure) = outcome {
        panic!("{what} failed{failure}");
    }
}

#[tokio::test]
async fn mautrix_python_bridge() {
    let python = provided_by_scripts_test(
        "CONDUIT_TEST_PYTHON",
        "a Python with mautrix (scripts/requirements-test.txt)",
    );
    run_bridge("the mautrix-python bridge", python, vec![script("appservice/mautrix_check.py")], "").await;
}

#[tokio::test]
async fn matrix_appservice_bridge() {
    let node =
        provided_by_scripts_test("CONDUIT_TEST_NODE", "node, with tests/appservice's packages installed");
    run_bridge("the matrix-appservice-bridge bridge", node, vec![script("appservice/bridge_check.mjs")], "")
        .await;
}

#[tokio::test]
async fn mautrix_python_encrypting_bridge_and_a_nio_user() {
    let python = provided_by_scripts_test(
        "CONDUIT_TEST_PYTHON",
        "a Python with mautrix, python-olm and matrix-nio (scripts/requirements-test.txt)",
    );
    let extra = "org.matrix.msc3202: true\nio.element.msc4190: true\n";
    run_bridge(
        "the encrypting mautrix-python bridge",
        python,
        vec![script("appservice/mautrix_e2ee_check.py")],
        extra,
    )
    .await;
}
