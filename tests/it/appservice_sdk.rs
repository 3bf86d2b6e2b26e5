//! Real bridges against a booted server: mautrix-python (PyPI) and matrix-appservice-bridge
//! (npm) run as application services (`tests/appservice/*_check.*`, validated against Synapse
//! with `tests/appservice/synapse_driver.py`): ping both ways, the bot joining on invite, a
//! namespaced user replying, exclusive namespaces, refused masquerading, alias and user
//! queries, typing and receipts, and every event missed while the bridge was down arriving in
//! order, across a restart of the server.
//!
//! The check prints `REQUEST restart-server` when it wants the server restarted (same port,
//! same database), and this driver answers `done` on its stdin once it is back. The server's
//! clock runs twenty times as fast as the wall clock meanwhile (see `run_bridge`).

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Read, Write},
    process::Stdio,
    time::Duration,
};

use crate::{
    appservice::with_registration,
    harness::TestServer,
    sdk::{provided_by_scripts_test, script},
};

/// The registration both checks expect (see `tests/appservice/synapse_driver.py`), with
/// random tokens, for a bridge listening on `port`.
fn registration(port: u16) -> String {
    let token = |prefix: &str| format!("{prefix}_{}", conduit::service::passwords::random_string(32));
    format!(
        "id: bridge\nurl: http://127.0.0.1:{port}\nas_token: {}\nhs_token: {}\nsender_localpart: bridgebot\n\
         rate_limited: false\nreceive_ephemeral: true\nde.sorunome.msc2409.push_ephemeral: true\n\
         namespaces:\n  users:\n    - exclusive: true\n      regex: '@bridge_.*:localhost'\n  \
         aliases:\n    - exclusive: true\n      regex: '#bridge_.*:localhost'\n  rooms: []\n",
        token("as"),
        token("hs"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Run `program args… <base> <registration>` as a bridge, restarting the server when asked.
async fn run_bridge(what: &str, program: OsString, args: Vec<OsString>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = TestServer::start_with(with_registration(&dir, &registration(port))).await;
    let registration_path = dir.path().join("bridge.yaml");
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .arg(&server.base)
        .arg(&registration_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("{what} did not start: {e}"));
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
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
        if line.trim() == "REQUEST restart-server" {
            server =
                server.restart_with(|c| c.app_service_config_files = vec![registration_path.clone()]).await;
            writeln!(stdin, "done").and_then(|()| stdin.flush()).expect("answering the check");
        }
        transcript.push(line);
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().expect("the check exits");
    ticker.abort();
    let stderr = stderr_reader.join().unwrap_or_default();
    let stdout = transcript.join("\n");
    assert!(
        !timed_out && status.success() && stdout.trim_end().ends_with("OK"),
        "{what} failed ({status}{})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        if timed_out { ", timed out" } else { "" }
    );
    drop(server);
}

#[tokio::test]
async fn mautrix_python_bridge() {
    let python = provided_by_scripts_test(
        "CONDUIT_TEST_PYTHON",
        "a Python with mautrix (scripts/requirements-test.txt)",
    );
    run_bridge("the mautrix-python bridge", python, vec![script("appservice/mautrix_check.py")]).await;
}

#[tokio::test]
async fn matrix_appservice_bridge() {
    let node =
        provided_by_scripts_test("CONDUIT_TEST_NODE", "node, with tests/appservice's packages installed");
    run_bridge("the matrix-appservice-bridge bridge", node, vec![script("appservice/bridge_check.mjs")])
        .await;
}
