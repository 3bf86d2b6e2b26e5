//! The binary: help, version, config errors and the operator commands (accounts, media purge),
//! offline and sent to a running server.

use std::process::Command;

use reqwest::StatusCode;

use crate::harness::{TestServer, test_config};

pub(crate) fn conduit(db: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conduit"));
    cmd.env_clear()
        .env("CONDUIT_DATABASE_PATH", db)
        .env("CONDUIT_ARGON2_MEMORY_KIB", "64")
        .env("CONDUIT_ARGON2_ITERATIONS", "1")
        // These tests send as fast as they can from one address; the rate limits have
        // their own tests.
        .env("CONDUIT_RATE_LIMITING", "false")
        .env("CONDUIT_LOG", "warn");
    // The same database as a test server of the directory holding `db` (`test_config`).
    if crate::harness::on_postgresql() {
        let dir = db.parent().expect("the database path is in the test's directory");
        cmd.env("CONDUIT_DATABASE_BACKEND", "postgresql")
            .env("CONDUIT_DATABASE_URL", crate::harness::postgresql_url(dir));
    }
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// [`run`] on a blocking thread, for commands that talk to a server this test runs in
/// process (the test's runtime must keep serving meanwhile).
pub(crate) async fn run_beside(mut cmd: Command) -> (bool, String) {
    tokio::task::spawn_blocking(move || run(&mut cmd)).await.unwrap()
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = run(conduit(dir.path()).arg("--help"));
    assert!(
        ok && text.contains("create-user")
            && text.contains("reset-password")
            && text.contains("purge-media")
            && text.contains("make-admin")
            && text.contains("backup")
            && text.contains("--config"),
        "{text}"
    );
    let (ok, text) = run(conduit(dir.path()).arg("--version"));
    assert!(ok && text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn bad_config_stops_start_up_naming_the_key_and_unknown_keys_are_warned() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) =
        run(conduit(&dir.path().join("db")).env("CONDUIT_PORT", "eighty").arg("create-user").arg("x"));
    assert!(!ok && text.contains("port"), "{text}");
    let (ok, text) = run(conduit(&dir.path().join("db"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("serve"));
    assert!(!ok && text.contains("does not exist"), "{text}");

    let config = dir.path().join("conduit.toml");
    std::fs::write(&config, "[global]\nsever_name = \"typo.example\"\n").unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "a-password-1\n").unwrap();
    let (ok, text) = run(conduit(&dir.path().join("db"))
        .arg("--config")
        .arg(&config)
        .args(["create-user", "warned", "--password-file"])
        .arg(&pw));
    assert!(ok, "{text}");
    assert!(text.contains("unknown configuration key") && text.contains("sever_name"), "{text}");
}

#[tokio::test]
async fn create_user_and_reset_password_work_offline_and_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "first-password-1\n").unwrap();
    let (ok, text) = run(conduit(&db).args(["create-user", "boss", "--admin", "--password-file"]).arg(&pw));
    assert!(ok && text.contains("@boss:localhost") && text.contains("admin"), "{text}");
    let (ok, text) = run(conduit(&db).args(["create-user", "boss", "--password-file"]).arg(&pw));
    assert!(!ok && text.contains("taken"), "{text}");
    // Without a password file a password is generated and printed once.
    let (ok, text) = run(conduit(&db).args(["create-user", "helper"]));
    assert!(ok && text.contains("password: "), "{text}");

    let mut config = test_config(dir.path());
    config.allow_registration = false;
    let s = TestServer::boot(config.clone(), dir).await;
    let session = s.login("boss", "first-password-1", None).await;

    // The running server holds the database: the command goes through its control socket.
    let mut cmd = conduit(&db);
    cmd.args(["reset-password", "boss", "--password-file"]).arg(&pw);
    let (ok, text) = run_beside(cmd).await;
    assert!(ok && text.contains("password reset for @boss:localhost"), "{text}");
    assert_eq!(
        s.get("/_matrix/client/v3/account/whoami", Some(&session.token)).await.0,
        StatusCode::UNAUTHORIZED,
        "reset-password logs out every device at once"
    );
    let session = s.login("boss", "first-password-1", None).await;
    let mut cmd = conduit(&db);
    cmd.args(["create-user", "boss"]);
    let (ok, text) = run_beside(cmd).await;
    assert!(!ok && text.contains("taken"), "errors come back from the server: {text}");
    let dir = s.stop().await;

    std::fs::write(&pw, "second-password-2\n").unwrap();
    let (ok, text) = run(conduit(&db).args(["reset-password", "boss", "--password-file"]).arg(&pw));
    assert!(ok && text.contains("@boss:localhost"), "{text}");
    let (ok, text) = run(conduit(&db).args(["reset-password", "ghost", "--password-file"]).arg(&pw));
    assert!(!ok && text.contains("No such"), "{text}");

    let s = TestServer::boot(config, dir).await;
    assert_eq!(
        s.get("/_matrix/client/v3/account/whoami", Some(&session.token)).await.0,
        StatusCode::UNAUTHORIZED,
        "reset-password logs out every device"
    );
    s.login("boss", "second-password-2", None).await;
}

#[tokio::test]
async fn make_admin_grants_and_revokes_the_flag_offline() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let pw = dir.path().join("pw");
    std::fs::write(
        &pw,
        "a-password-1
",
    )
    .unwrap();
    let (ok, text) = run(conduit(&db).args(["create-user", "ops", "--password-file"]).arg(&pw));
    assert!(ok, "{text}");
    let (ok, text) = run(conduit(&db).args(["make-admin", "ops"]));
    assert!(ok && text.contains("@ops:localhost is a server admin"), "{text}");
    let (ok, text) = run(conduit(&db).args(["make-admin", "ghost"]));
    assert!(!ok && text.contains("No such"), "{text}");

    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let ops = s.login("ops", "a-password-1", None).await;
    let (status, body) = s.get("/_synapse/admin/v2/users/@ops:localhost", Some(&ops.token)).await;
    assert_eq!((status, &body["admin"]), (StatusCode::OK, &serde_json::json!(true)), "{body}");
    let dir = s.stop().await;

    let (ok, text) = run(conduit(&db).args(["make-admin", "@ops:localhost", "--revoke"]));
    assert!(ok && text.contains("no longer"), "{text}");
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let (status, _) = s.get("/_synapse/admin/v2/users/@ops:localhost", Some(&ops.token)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rotate_signing_key_offline_keeps_the_old_key_published_as_expired() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let first = s.services.server_keys.key_id();
    let dir = s.stop().await;

    let (ok, text) = run(conduit(&db).args(["rotate-signing-key"]));
    assert!(ok && text.contains(&first) && text.contains("old_verify_keys"), "{text}");
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let now = s.services.server_keys.key_id();
    assert_ne!(now, first);
    let response = s.services.server_keys.key_response().unwrap();
    assert!(response["verify_keys"][&now].is_object(), "{response}");
    assert!(response["old_verify_keys"][&first]["expired_ts"].is_u64(), "{response}");
}

#[tokio::test]
async fn sigterm_finishes_cleanly_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (mut child, addr, lines) = spawn_serving(&db);
    let http = reqwest::Client::new();
    let body =
        serde_json::json!({"username": "sig", "password": "pw-sig-1234", "auth": {"type": "m.login.dummy"}});
    let resp =
        http.post(format!("http://{addr}/_matrix/client/v3/register")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shut down cleanly")), "{rest:?}");

    // The account written before the signal is there after it.
    let (ok, text) = run(conduit(&db).args(["create-user", "sig"]));
    assert!(!ok && text.contains("taken"), "{text}");
}

pub(crate) type LogLines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Start the binary on `db` with registration open; returns it, its address and the rest of
/// its log.
fn spawn_serving(db: &std::path::Path) -> (std::process::Child, String, LogLines) {
    spawn_serving_with(db, &[])
}

/// [`spawn_serving`] with more environment variables.
pub(crate) fn spawn_serving_with(
    db: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, String, LogLines) {
    use std::io::{BufRead, BufReader};
    let mut child = conduit(db)
        .envs(env.iter().copied())
        .env("CONDUIT_PORT", "0")
        .env("CONDUIT_ALLOW_REGISTRATION", "true")
        .env("CONDUIT_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server logs before exiting").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    (child, addr, lines)
}

/// Start the binary and drain its log, so the server never blocks on a full pipe.
fn spawn_serving_quietly(db: &std::path::Path) -> (std::process::Child, String) {
    let (child, addr, lines) = spawn_serving(db);
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

#[tokio::test]
async fn every_acknowledged_event_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (mut child, addr) = spawn_serving_quietly(&db);
    let api = format!("http://{addr}/_matrix/client/v3");
    let http = reqwest::Client::new();
    let body =
        serde_json::json!({"username": "k9", "password": "pw-k9-12345", "auth": {"type": "m.login.dummy"}});
    let registered: serde_json::Value =
        http.post(format!("{api}/register")).json(&body).send().await.unwrap().json().await.unwrap();
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let created: serde_json::Value = http
        .post(format!("{api}/createRoom"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = created["room_id"].as_str().unwrap().replace('!', "%21").replace(':', "%3A");

    // Eight senders keep sending (so group syncs are shared) until the process is killed.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let (http, api, token, room, acked) =
                (http.clone(), api.clone(), token.clone(), room.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for m in 0.. {
                    let url = format!("{api}/rooms/{room}/send/m.room.message/t{s}-{m}");
                    let sent = http
                        .put(url)
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"msgtype": "m.text", "body": "durable?"}))
                        .send()
                        .await;
                    let Ok(response) = sent else { break };
                    let Ok(value) = response.json::<serde_json::Value>().await else { break };
                    let Some(id) = value["event_id"].as_str() else { break };
                    acked.lock().unwrap().push(id.to_owned());
                }
            })
        })
        .collect();
    while acknowledged.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let (mut child, addr) = spawn_serving_quietly(&db);
    let api = format!("http://{addr}/_matrix/client/v3");
    for id in &acknowledged {
        let url = format!("{api}/rooms/{room}/event/{}", id.replace('$', "%24"));
        let status = http.get(url).bearer_auth(&token).send().await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "acknowledged event {id} lost by kill -9");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn purge_media_deletes_old_media_offline_and_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = test_config(dir.path());
    let s = TestServer::boot(config.clone(), dir).await;
    let alice = s.register("alice", "password-1234").await;
    let resp = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&alice.token)
        .header("content-type", "text/plain")
        .body("old news")
        .send()
        .await
        .unwrap();
    let mxc = resp.json::<serde_json::Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let download = format!("/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://"));

    let mut cmd = conduit(&db);
    cmd.args(["purge-media", "--older-than", "1d"]);
    let (ok, text) = run_beside(cmd).await;
    assert!(ok && text.contains("purged 0 media"), "sent to the running server: {text}");
    let dir = s.stop().await;

    let (ok, text) = run(conduit(&db).args(["purge-media", "--older-than", "soon"]));
    assert!(!ok && text.contains("number"), "{text}");
    let (ok, text) = run(conduit(&db).args(["purge-media", "--older-than", "1d"]));
    assert!(ok && text.contains("purged 0 media"), "{text}");
    let s = TestServer::boot(config.clone(), dir).await;
    assert_eq!(s.get(&download, Some(&alice.token)).await.0, StatusCode::OK);
    let dir = s.stop().await;

    // The upload is older than zero seconds.
    let (ok, text) = run(conduit(&db).args(["purge-media", "--older-than", "0s"]));
    assert!(ok && text.contains("purged 1 media (8 bytes of files freed)"), "{text}");
    let s = TestServer::boot(config, dir).await;
    assert_eq!(s.get(&download, Some(&alice.token)).await.0, StatusCode::NOT_FOUND);
}
