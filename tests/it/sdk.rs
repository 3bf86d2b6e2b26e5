//! A real client SDK (matrix-nio, from PyPI) against a booted server: the account and
//! session flow, the rooms and sync flow, media, and an end-to-end encrypted round trip; and
//! matrix-rust-sdk (crates.io) for encryption, cross-signing, key backup and verification.

use crate::harness::TestServer;

/// Run one nio script against a fresh server; it must print `OK` last.
async fn run_nio(script: &str) {
    let Some(python) = std::env::var_os("CONDUIT_TEST_PYTHON") else {
        // scripts/test provides the interpreter; in CI its absence is a failure, not a skip.
        assert!(std::env::var_os("CI").is_none(), "CONDUIT_TEST_PYTHON must be set in CI (run scripts/test)");
        eprintln!("skipping: CONDUIT_TEST_PYTHON not set (scripts/test sets it up)");
        return;
    };
    let s = TestServer::start().await;
    let script = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(base).output()
    })
    .await
    .unwrap()
    .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nio flow failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}

#[tokio::test]
async fn matrix_nio_session_flow() {
    run_nio("nio_session.py").await;
}

#[tokio::test]
async fn matrix_nio_rooms_and_sync_flow() {
    run_nio("nio_rooms.py").await;
}

#[tokio::test]
async fn matrix_nio_media_upload_download_and_thumbnails() {
    run_nio("nio_media.py").await;
}

#[tokio::test]
async fn matrix_nio_encrypted_round_trip() {
    run_nio("nio_e2ee.py").await;
}

/// matrix-rust-sdk (Element X's engine), built in its own crate (`tests/sdk/rust`) by
/// scripts/test, which passes the binary in `CONDUIT_RUST_SDK_BIN`.
#[tokio::test]
async fn matrix_rust_sdk_encryption_cross_signing_backup_and_verification() {
    let Some(binary) = std::env::var_os("CONDUIT_RUST_SDK_BIN") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CONDUIT_RUST_SDK_BIN must be set in CI (run scripts/test)"
        );
        eprintln!("skipping: CONDUIT_RUST_SDK_BIN not set (scripts/test builds it)");
        return;
    };
    let s = TestServer::start().await;
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(binary).arg(base).output())
        .await
        .unwrap()
        .expect("the SDK check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The steps it passed, for the test log.
    eprintln!("{stdout}");
    assert!(out.status.success(), "matrix-rust-sdk flow failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}

/// matrix-js-sdk with its Rust crypto (Element Web's stack), installed from npm into
/// `tests/sdk/js` by scripts/test, which passes `node` in `CONDUIT_TEST_NODE`.
#[tokio::test]
async fn matrix_js_sdk_encrypted_round_trip() {
    let Some(node) = std::env::var_os("CONDUIT_TEST_NODE") else {
        assert!(std::env::var_os("CI").is_none(), "CONDUIT_TEST_NODE must be set in CI (run scripts/test)");
        eprintln!("skipping: CONDUIT_TEST_NODE not set (scripts/test sets it up)");
        return;
    };
    let s = TestServer::start().await;
    let script = format!("{}/tests/sdk/js/e2ee.mjs", env!("CARGO_MANIFEST_DIR"));
    let base = s.base.clone();
    let out =
        tokio::task::spawn_blocking(move || std::process::Command::new(node).arg(script).arg(base).output())
            .await
            .unwrap()
            .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "matrix-js-sdk flow failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}
