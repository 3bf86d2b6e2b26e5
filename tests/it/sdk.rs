//! Real client SDKs against a booted server: matrix-nio (PyPI) for the account and session
//! flow, the rooms and sync flow, media and an encrypted round trip; matrix-rust-sdk
//! (crates.io) for encryption, cross-signing, key backup and verification, and, with
//! matrix-sdk-ui, for Element X's sync stack over simplified sliding sync; matrix-js-sdk
//! (npm, Element Web's engine) for an encrypted round trip and for cross-signing, secret
//! storage, key backup and emoji verification as Element drives them.
//!
//! `scripts/test` installs the SDKs and passes their programs in environment variables. A
//! missing variable fails the test, in CI or not: a run without the SDKs must not pass for
//! one that ran them.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read, Write},
    process::Stdio,
    time::Duration,
};

use crate::harness::TestServer;

/// The program or path `scripts/test` provides in `var`, or a failure saying how to get it.
pub fn provided_by_scripts_test(var: &str, what: &str) -> OsString {
    std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: it names {what}; run the tests with scripts/test, which installs it and sets {var}")
    })
}

/// Runs `program args…` (a client check that prints one line per step and `OK` last); the
/// error carries its whole output unless it succeeded.
pub async fn client_check(what: &str, program: OsString, args: Vec<OsString>) -> Result<(), String> {
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(program).args(args).output())
        .await
        .unwrap()
        .map_err(|e| format!("{what} could not start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The steps it passed, for the test log.
    eprintln!("{stdout}");
    if !out.status.success() {
        return Err(format!("{what} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    }
    if !stdout.trim_end().ends_with("OK") {
        return Err(format!("{what} did not finish\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    }
    Ok(())
}

/// [`client_check`], failing the test on error.
pub async fn run_client_check(what: &str, program: OsString, args: Vec<OsString>) {
    if let Err(failure) = client_check(what, program, args).await {
        panic!("{failure}");
    }
}

/// A file under `tests/`.
pub fn script(path: &str) -> OsString {
    format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR")).into()
}

/// Run one nio script against a fresh server.
async fn run_nio(name: &str) {
    let python = provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with matrix-nio");
    let s = TestServer::start().await;
    run_client_check(
        &format!("matrix-nio {name}"),
        python,
        vec![script(&format!("sdk/{name}")), s.base.clone().into()],
    )
    .await;
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
    let binary = provided_by_scripts_test("CONDUIT_RUST_SDK_BIN", "the matrix-rust-sdk check binary");
    let s = TestServer::start().await;
    run_client_check("matrix-rust-sdk check", binary, vec![s.base.clone().into()]).await;
}

/// Element X's sync stack, matrix-sdk-ui's `SyncService`, `RoomListService` and `Timeline`,
/// over simplified sliding sync (MSC4186): the room list with names, counts and bump order,
/// invites, timelines paginating back and receiving live events in a plain and an encrypted
/// room, to-device messages across a reconnect, a second device, recovery from an unknown
/// `pos`, and leaving (`conduit-rust-sdk-check ui`, see tests/sdk/rust/src/ui.rs).
///
/// The check asks the test to act on the server mid-run: a line `REQUEST expire-sliding-sync`
/// on its stdout makes the test restart the server on the same port, which forgets the
/// sliding sync connections; `REQUEST advance-clock` moves the server's clock to a second past
/// the wall clock (or its own time, if later).
/// Each is answered `done` on its stdin.
#[tokio::test]
async fn matrix_rust_sdk_ui_sliding_sync_room_list_timelines_and_recovery() {
    let binary = provided_by_scripts_test("CONDUIT_RUST_SDK_BIN", "the matrix-rust-sdk check binary");
    let server = TestServer::start().await;
    let mut command = std::process::Command::new(binary);
    command.arg("ui").arg(&server.base);
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    // Every wait inside the check is bounded; this bounds the whole run.
    let (_server, outcome) =
        drive_check(command, Duration::from_secs(900), server, |server, request| -> Acting {
            Box::pin(async move {
                match request.as_str() {
                    "expire-sliding-sync" => Some(server.restart().await),
                    "advance-clock" => {
                        // A second past the later of the server's clock and the wall clock:
                        // the SDK stamps events it sent itself with the device's time (its
                        // event cache holds that copy until the server's replaces it, and
                        // keeps it when the server's copy arrived first), so a server clock
                        // left behind the device's would sort a room where Alice last wrote
                        // above rooms with newer messages.
                        let wall = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        let now = conduit::service::clock::Clock::now_ms(server.clock.as_ref());
                        server.clock.advance_ms(wall.saturating_sub(now) + 1_000);
                        Some(server)
                    }
                    _ => panic!("the check asked for {request:?}, which this test does not do"),
                }
            })
        })
        .await;
    if let Err(failure) = outcome {
        panic!("matrix-rust-sdk ui check failed{failure}");
    }
}

/// What a check's request does to the test's state: the state after it (`Some`).
pub type Acting = std::pin::Pin<Box<dyn std::future::Future<Output = Option<TestServer>> + Send>>;

/// Run `command`, a check that may ask the test to act mid-run: it prints a line
/// `REQUEST <what>` and waits for `done` on its stdin, which this sends once `act` has done
/// it (handing the server on, since a restart replaces it). The check passes when it exits
/// successfully with `OK` as its last line; the error carries its whole output.
pub async fn drive_check(
    mut command: std::process::Command,
    limit: Duration,
    server: TestServer,
    mut act: impl FnMut(TestServer, String) -> Acting,
) -> (TestServer, Result<(), String>) {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("the check did not start: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = tokio::time::Instant::now() + limit;
    let mut server = Some(server);
    let mut transcript = Vec::new();
    let mut timed_out = false;
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        };
        eprintln!("{line}");
        if let Some(request) = line.strip_prefix("REQUEST ") {
            let current = server.take().expect("the server is back after each request");
            server = act(current, request.trim().to_owned()).await;
            writeln!(stdin, "done").and_then(|()| stdin.flush()).expect("answering the check");
        }
        transcript.push(line);
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("the check exits");
    let stderr = stderr_reader.join().unwrap_or_default();
    let stdout = transcript.join("\n");
    let passed = !timed_out && status.success() && transcript.last().is_some_and(|l| l.trim() == "OK");
    let outcome = if passed {
        Ok(())
    } else {
        Err(format!(
            " ({status}{})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            if timed_out { ", timed out" } else { "" }
        ))
    };
    (server.expect("the server is back"), outcome)
}

/// Run one matrix-js-sdk script (Rust crypto, as in Element Web) from `tests/sdk/js`, where
/// scripts/test installs the SDK from npm; it passes `node` in `CONDUIT_TEST_NODE`.
async fn run_js(name: &str) {
    run_js_with(name, |_| {}).await;
}

/// [`run_js`] against a server with its test config adjusted.
async fn run_js_with(name: &str, adjust: impl FnOnce(&mut conduit::config::Config)) {
    let node = provided_by_scripts_test("CONDUIT_TEST_NODE", "Node.js, for matrix-js-sdk");
    let s = TestServer::start_with(adjust).await;
    run_client_check(
        &format!("matrix-js-sdk {name}"),
        node,
        vec![script(&format!("sdk/js/{name}")), s.base.clone().into()],
    )
    .await;
}

#[tokio::test]
async fn matrix_js_sdk_encrypted_round_trip() {
    run_js("e2ee.mjs").await;
}

/// What Element needs for cross-signing, checked through its own SDK: the `/versions` flag it
/// reads, cross-signing bootstrap with its password auth, secret storage and key backup, and
/// emoji verification between two users, after which a message shows no warning.
#[tokio::test]
async fn matrix_js_sdk_cross_signing_backup_and_emoji_verification() {
    run_js("cross_signing.mjs").await;
}

/// Push notifications as Element's apps set them up: `setPusher` with `event_id_only`, read
/// back with `getPushers`; a message from another user reaches the script's own gateway (on
/// loopback, which the server is told to allow); a deleted pusher is sent nothing more.
#[tokio::test]
async fn matrix_js_sdk_sets_a_pusher_and_its_gateway_is_notified() {
    run_js_with("pusher.mjs", |config| config.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()])
        .await;
}
