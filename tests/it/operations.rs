//! Operating a running server from the command line: the control socket (who may reach it,
//! its lifetime, `make-admin`) and `conduit backup` under load, restored into a fresh server.

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
};

use reqwest::StatusCode;

use crate::{
    cli::{conduit, run, run_beside},
    harness::{TestServer, test_config},
};

async fn is_admin(s: &TestServer, token: &str, user: &str) -> bool {
    let (status, body) = s.get(&format!("/_synapse/admin/v1/users/{user}/admin"), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["admin"].as_bool().unwrap()
}

#[tokio::test]
async fn make_admin_reaches_the_running_server_through_a_private_socket_removed_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "boss-password-1\n").unwrap();
    let (ok, text) = run(conduit(&db).args(["create-user", "boss", "--admin", "--password-file"]).arg(&pw));
    assert!(ok, "{text}");
    // Offline: the command opens the database itself.
    let (ok, text) = run(conduit(&db).args(["make-admin", "@boss:localhost"]));
    assert!(ok && text.contains("@boss:localhost is a server admin"), "{text}");
    let (ok, text) = run(conduit(&db).args(["make-admin", "nobody"]));
    assert!(!ok && text.contains("No such user"), "{text}");

    let config = test_config(dir.path());
    let s = TestServer::boot(config.clone(), dir).await;
    let socket = db.join("conduit.sock");
    // The server binds it as its serving task starts, just after `boot` returns.
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mode =
        std::fs::metadata(&socket).expect("the server listens on its control socket").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "only the server's user (and root) may connect");

    let boss = s.login("boss", "boss-password-1", None).await;
    s.register("carol", "carol-password-1").await;
    assert!(!is_admin(&s, &boss.token, "@carol:localhost").await);
    let mut cmd = conduit(&db);
    cmd.args(["make-admin", "carol"]);
    let (ok, text) = run_beside(cmd).await;
    assert!(ok && text.contains("@carol:localhost is a server admin"), "{text}");
    assert!(is_admin(&s, &boss.token, "@carol:localhost").await, "applied at once by the running server");
    let mut cmd = conduit(&db);
    cmd.args(["make-admin", "--revoke", "carol"]);
    let (ok, text) = run_beside(cmd).await;
    assert!(ok && text.contains("no longer a server admin"), "{text}");
    assert!(!is_admin(&s, &boss.token, "@carol:localhost").await);

    // A malformed request line gets an error line back, and the server goes on.
    let reply = {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
        stream.write_all(b"{\"command\": \"format-disk\"}\n").await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut line).await.unwrap();
        line
    };
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("format-disk"), "{reply}");

    let dir = s.stop().await;
    assert!(!socket.exists(), "the socket goes with the server");
    // With no server, the command opens the database again.
    let (ok, text) = run(conduit(&db).args(["make-admin", "carol"]));
    assert!(ok, "{text}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_serves_every_event_acknowledged_before_it_began_and_the_media() {
    if crate::harness::on_postgresql() {
        return backup_is_refused_on_postgresql();
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let config = test_config(dir.path());
    let s = TestServer::boot(config.clone(), dir).await;
    let alice = s.register("alice", "alice-password-1").await;
    let (status, created) =
        s.post("/_matrix/client/v3/createRoom", Some(&alice.token), serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().unwrap().replace('!', "%21").replace(':', "%3A");
    let picture: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let uploaded = s
        .http
        .post(format!("{}/_matrix/media/v3/upload", s.base))
        .bearer_auth(&alice.token)
        .header("content-type", "application/octet-stream")
        .body(picture.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), StatusCode::OK);
    let mxc = uploaded.json::<serde_json::Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();

    // Four senders send until told to stop; each acknowledged event is noted with the phase
    // read after its answer arrived: 0 before the backup command was started, 1 while it
    // ran, 2 after it returned. (Read after the answer, a phase can only be later than the
    // one the answer arrived in, so "0" is never claimed for an event acknowledged later.)
    let phase = Arc::new(AtomicU8::new(0));
    let acked = Arc::new(Mutex::new(Vec::<(usize, u64, String, u8)>::new()));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let (http, base, token, room, phase, acked) = (
                s.http.clone(),
                s.base.clone(),
                alice.token.clone(),
                room.clone(),
                phase.clone(),
                acked.clone(),
            );
            tokio::spawn(async move {
                for seq in 0u64.. {
                    if phase.load(Ordering::SeqCst) == 2 && seq % 10 == 0 {
                        break;
                    }
                    let url =
                        format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/b{sender}-{seq}");
                    let answer = http
                        .put(url)
                        .bearer_auth(&token)
                        .json(&serde_json::json!({"msgtype": "m.text", "body": format!("{sender}/{seq}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), StatusCode::OK);
                    let id = answer.json::<serde_json::Value>().await.unwrap()["event_id"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let seen = phase.load(Ordering::SeqCst);
                    acked.lock().unwrap().push((sender, seq, id, seen));
                }
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let backups = tempfile::tempdir().unwrap();
    let target = backups.path().join("nightly");
    phase.store(1, Ordering::SeqCst);
    let mut cmd = conduit(&db);
    cmd.arg("backup").arg(&target);
    let (ok, text) = run_beside(cmd).await;
    phase.store(2, Ordering::SeqCst);
    assert!(ok && text.contains("backup written to") && text.contains("1 media files"), "{text}");
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let before = acked.iter().filter(|a| a.3 == 0).count();
    let during = acked.iter().filter(|a| a.3 == 1).count();
    assert!(before >= 200, "{before}");
    let dir = s.stop().await;

    // A second server on the backup directory, as it is.
    let restored_dir = tempfile::tempdir().unwrap();
    let mut restored_config = test_config(restored_dir.path());
    restored_config.database_path = target.clone();
    let r = TestServer::boot(restored_config, restored_dir).await;
    let mut present = std::collections::HashMap::<usize, Vec<bool>>::new();
    for (sender, seq, id, seen) in &acked {
        let url = format!("/_matrix/client/v3/rooms/{room}/event/{}", id.replace('$', "%24"));
        let (status, body) = r.get(&url, Some(&alice.token)).await;
        let found = status == StatusCode::OK;
        if *seen == 0 {
            assert!(
                found,
                "event {sender}/{seq} {id}, acknowledged before the backup began, is missing: {body}"
            );
        }
        let list = present.entry(*sender).or_default();
        assert_eq!(list.len() as u64, *seq);
        list.push(found);
    }
    // A consistent copy has no holes: each sender's events in it are a prefix of what it sent.
    for (sender, found) in &present {
        let first_missing = found.iter().position(|f| !f).unwrap_or(found.len());
        assert!(
            found[first_missing..].iter().all(|f| !f),
            "sender {sender} has a hole in the backup: {found:?}"
        );
    }
    let in_backup: usize = present.values().map(|f| f.iter().filter(|x| **x).count()).sum();
    println!("acknowledged: {before} before the backup, {during} during it; {in_backup} in the backup");

    let download = format!("/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://"));
    let bytes = r.http.get(format!("{}{download}", r.base)).bearer_auth(&alice.token).send().await.unwrap();
    assert_eq!(bytes.status(), StatusCode::OK);
    assert_eq!(bytes.bytes().await.unwrap().as_ref(), picture.as_slice(), "the media file came along");
    drop(dir);
}

#[tokio::test]
async fn backup_refuses_a_directory_in_use_and_works_with_the_server_stopped() {
    if crate::harness::on_postgresql() {
        return backup_is_refused_on_postgresql();
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (ok, text) = run(conduit(&db).args(["create-user", "dora"]));
    assert!(ok, "{text}");
    let target = dir.path().join("full");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("precious"), "keep me").unwrap();
    let (ok, text) = run(conduit(&db).arg("backup").arg(&target));
    assert!(!ok && text.contains("exists and is not empty"), "{text}");
    assert_eq!(std::fs::read_to_string(target.join("precious")).unwrap(), "keep me");

    // An empty directory is fine; a relative path is taken from the caller's directory.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let (ok, text) = run(conduit(&db).current_dir(dir.path()).args(["backup", "empty"]));
    assert!(ok && text.contains("backup written to") && text.contains("0 media files"), "{text}");
    // The copy is a database: the account is there (the name is taken).
    let (ok, text) = run(conduit(&dir.path().join("empty")).args(["create-user", "dora"]));
    assert!(!ok && text.contains("taken"), "{text}");
}

/// `conduit backup` copies a RocksDB database. On PostgreSQL (the backup tests under
/// `CONDUIT_TEST_BACKEND=postgresql`) it refuses, writes nothing and names the tools to use.
fn backup_is_refused_on_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let (ok, text) = run(conduit(&db).args(["create-user", "dora"]));
    assert!(ok, "{text}");
    let target = dir.path().join("nightly");
    let (ok, text) = run(conduit(&db).arg("backup").arg(&target));
    assert!(!ok && text.contains("pg_dump") && text.contains("media directory"), "{text}");
    assert!(!target.exists(), "a refused backup left {}", target.display());
}
