//! Server-side key backups through HTTP: versions, uploads at each level, which copy of a
//! session key is kept, counts and etags, wrong and unknown versions, deletion, isolation.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Session, TestServer, expect_error};

const ROOM_KEYS: &str = "/_matrix/client/v3/room_keys";
const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";
const ROOM_A: &str = "!a:localhost";
const ROOM_B: &str = "!b:localhost";
/// A room ID that starts with `ROOM_B`'s, so deleting that room must not reach it.
const ROOM_B_LONGER: &str = "!b:localhost.example";

fn auth_data(public_key: &str) -> Value {
    json!({"public_key": public_key, "signatures": {"@alice:localhost": {"ed25519:DEV": "sig"}}})
}

/// A session key with the metadata that decides replacement; `tag` tells copies apart.
fn key(is_verified: bool, first_message_index: u64, forwarded_count: u64, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": "ZXBo", "ciphertext": tag, "mac": "bWFj"},
    })
}

async fn create_version(s: &TestServer, who: &Session, public_key: &str) -> String {
    let body = json!({"algorithm": ALGORITHM, "auth_data": auth_data(public_key)});
    let (status, resp) = s.post(&format!("{ROOM_KEYS}/version"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["version"].as_str().expect("version string").to_owned()
}

/// `(status, body)` of a PUT of one session's key.
async fn put_session(
    s: &TestServer,
    who: &Session,
    version: &str,
    room: &str,
    session: &str,
    key: Value,
) -> (StatusCode, Value) {
    s.put(&format!("{ROOM_KEYS}/keys/{room}/{session}?version={version}"), Some(&who.token), key).await
}

/// The stored key of a session; panics unless there is one.
async fn session_key(s: &TestServer, who: &Session, version: &str, room: &str, session: &str) -> Value {
    let (status, body) =
        s.get(&format!("{ROOM_KEYS}/keys/{room}/{session}?version={version}"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// `(count, etag)` of a write's answer, asserting it succeeded.
fn counts(result: (StatusCode, Value)) -> (u64, String) {
    let (status, body) = result;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body["count"].as_u64().expect("count"), body["etag"].as_str().expect("etag string").to_owned())
}

async fn delete(s: &TestServer, who: &Session, path: &str) -> (StatusCode, Value) {
    s.call(Method::DELETE, path, Some(&who.token), None).await
}

#[tokio::test]
async fn version_lifecycle() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());

    expect_error(s.get(&format!("{ROOM_KEYS}/version"), token).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let first = create_version(&s, &alice, "key1").await;
    let second = create_version(&s, &alice, "key2").await;
    assert_eq!(first, "1");
    assert_eq!(second, "2");

    // The newest version is current, with everything the spec lists.
    let (status, current) = s.get(&format!("{ROOM_KEYS}/version"), token).await;
    assert_eq!(status, StatusCode::OK, "{current}");
    assert_eq!(current["version"], "2");
    assert_eq!(current["algorithm"], ALGORITHM);
    assert_eq!(current["auth_data"], auth_data("key2"));
    assert_eq!(current["count"], 0);
    assert!(current["etag"].is_string(), "{current}");
    // An older one is still readable by its ID.
    let (status, old) = s.get(&format!("{ROOM_KEYS}/version/1"), token).await;
    assert_eq!(status, StatusCode::OK, "{old}");
    assert_eq!((&old["version"], &old["auth_data"]), (&json!("1"), &auth_data("key1")));
    for unknown in ["3", "01", "abc"] {
        expect_error(
            s.get(&format!("{ROOM_KEYS}/version/{unknown}"), token).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }

    // Only auth_data may change; the algorithm and the body's version must match.
    let path = format!("{ROOM_KEYS}/version/2");
    let (status, body) =
        s.put(&path, token, json!({"algorithm": ALGORITHM, "auth_data": auth_data("key2-resigned")})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));
    let (_, current) = s.get(&path, token).await;
    assert_eq!(current["auth_data"], auth_data("key2-resigned"));
    let (status, _) = s
        .put(
            &path,
            token,
            json!({"algorithm": ALGORITHM, "auth_data": auth_data("key2-again"), "version": "2"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    expect_error(
        s.put(&path, token, json!({"algorithm": "org.example.other", "auth_data": {}})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.put(&path, token, json!({"algorithm": ALGORITHM, "auth_data": {}, "version": "1"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.put(&format!("{ROOM_KEYS}/version/7"), token, json!({"algorithm": ALGORITHM, "auth_data": {}}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (_, current) = s.get(&path, token).await;
    assert_eq!(current["auth_data"], auth_data("key2-again"), "refused updates changed nothing");
    // Malformed versions are refused.
    for bad in [json!({"algorithm": ALGORITHM}), json!({"algorithm": ALGORITHM, "auth_data": "x"})] {
        expect_error(
            s.post(&format!("{ROOM_KEYS}/version"), token, bad).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
    }

    // Deleting the newest makes the previous one current; deleting again succeeds (the spec
    // says so for a previously deleted backup), a version never created does not exist.
    let (status, body) = delete(&s, &alice, &path).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})));
    let (_, current) = s.get(&format!("{ROOM_KEYS}/version"), token).await;
    assert_eq!(current["version"], "1");
    expect_error(s.get(&path, token).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, _) = delete(&s, &alice, &path).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(
        delete(&s, &alice, &format!("{ROOM_KEYS}/version/9")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // A deleted version's number is never handed out again.
    assert_eq!(create_version(&s, &alice, "key3").await, "3");
    let (status, _) = delete(&s, &alice, &format!("{ROOM_KEYS}/version/3")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = delete(&s, &alice, &format!("{ROOM_KEYS}/version/1")).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(s.get(&format!("{ROOM_KEYS}/version"), token).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(create_version(&s, &alice, "key4").await, "4");
}

#[tokio::test]
async fn keys_at_each_level() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    let v = create_version(&s, &alice, "key1").await;

    // One session.
    let (count, _) = counts(put_session(&s, &alice, &v, ROOM_A, "s1", key(false, 0, 0, "a1")).await);
    assert_eq!(count, 1);
    // One room.
    let body = json!({"sessions": {"s2": key(false, 0, 0, "a2"), "s3": key(true, 1, 0, "a3")}});
    let (count, _) = counts(s.put(&format!("{ROOM_KEYS}/keys/{ROOM_A}?version={v}"), token, body).await);
    assert_eq!(count, 3);
    // Every room.
    let body = json!({"rooms": {
        ROOM_A: {"sessions": {"s4": key(false, 2, 1, "a4")}},
        ROOM_B: {"sessions": {"s1": key(false, 0, 0, "b1")}},
    }});
    let (count, etag) = counts(s.put(&format!("{ROOM_KEYS}/keys?version={v}"), token, body).await);
    assert_eq!(count, 5);

    // Read back at each level, exactly as uploaded.
    assert_eq!(session_key(&s, &alice, &v, ROOM_A, "s3").await, key(true, 1, 0, "a3"));
    let (status, room) = s.get(&format!("{ROOM_KEYS}/keys/{ROOM_A}?version={v}"), token).await;
    assert_eq!(status, StatusCode::OK, "{room}");
    let sessions: Vec<_> = room["sessions"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(sessions, ["s1", "s2", "s3", "s4"]);
    let (status, all) = s.get(&format!("{ROOM_KEYS}/keys?version={v}"), token).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["rooms"][ROOM_B], json!({"sessions": {"s1": key(false, 0, 0, "b1")}}));
    assert_eq!(all["rooms"][ROOM_A]["sessions"]["s4"], key(false, 2, 1, "a4"));
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version/{v}"), token).await;
    assert_eq!((&info["count"], &info["etag"]), (&json!(5), &json!(etag)));

    // Missing things: a session is not found, a room or a backup without keys is empty.
    expect_error(
        s.get(&format!("{ROOM_KEYS}/keys/{ROOM_B}/nope?version={v}"), token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, body) = s.get(&format!("{ROOM_KEYS}/keys/!empty:localhost?version={v}"), token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"sessions": {}})));
    let empty = create_version(&s, &alice, "key2").await;
    let (status, body) = s.get(&format!("{ROOM_KEYS}/keys?version={empty}"), token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"rooms": {}})));

    // Malformed keys are refused and store nothing.
    for bad in [
        json!({"first_message_index": 0, "forwarded_count": 0, "session_data": {}}),
        json!({"first_message_index": -1, "forwarded_count": 0, "is_verified": false, "session_data": {}}),
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": "yes", "session_data": {}}),
        json!({"first_message_index": 0, "forwarded_count": 0, "is_verified": false, "session_data": "x"}),
    ] {
        expect_error(
            put_session(&s, &alice, &empty, ROOM_A, "bad", bad).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
    }
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version/{empty}"), token).await;
    assert_eq!(info["count"], 0);
}

#[tokio::test]
async fn better_keys_replace_worse_ones() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let v = create_version(&s, &alice, "key1").await;
    // Each step: the upload, and which copy is stored afterwards.
    let steps = [
        // A first copy is stored.
        (key(false, 5, 3, "first"), "first"),
        // Same rank: the stored copy stays.
        (key(false, 5, 3, "same"), "first"),
        // Worse in each field: kept out.
        (key(false, 6, 3, "later-index"), "first"),
        (key(false, 5, 4, "more-forwarded"), "first"),
        // A lower forwarded count wins when the rest ties.
        (key(false, 5, 2, "less-forwarded"), "less-forwarded"),
        // A lower first message index wins even with a higher forwarded count.
        (key(false, 4, 9, "lower-index"), "lower-index"),
        // A verified key beats any unverified one.
        (key(true, 8, 9, "verified"), "verified"),
        // An unverified key never replaces a verified one, however good otherwise.
        (key(false, 0, 0, "unverified-best"), "verified"),
        // Among verified keys the index decides again.
        (key(true, 7, 9, "verified-lower-index"), "verified-lower-index"),
    ];
    for (upload, kept) in steps {
        let (count, _) = counts(put_session(&s, &alice, &v, ROOM_A, "s", upload.clone()).await);
        assert_eq!(count, 1);
        let stored = session_key(&s, &alice, &v, ROOM_A, "s").await;
        assert_eq!(stored["session_data"]["ciphertext"], kept, "after uploading {upload}");
    }
}

#[tokio::test]
async fn etag_moves_only_when_keys_change() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    let v = create_version(&s, &alice, "key1").await;
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version"), token).await;
    let start = info["etag"].as_str().unwrap().to_owned();

    let (count, e1) = counts(put_session(&s, &alice, &v, ROOM_A, "s1", key(false, 3, 0, "x")).await);
    assert_eq!(count, 1);
    assert_ne!(e1, start);
    // The same key again, or a worse one: nothing changes.
    let (count, e2) = counts(put_session(&s, &alice, &v, ROOM_A, "s1", key(false, 3, 0, "x")).await);
    assert_eq!((count, &e2), (1, &e1));
    let (count, e3) = counts(put_session(&s, &alice, &v, ROOM_A, "s1", key(false, 4, 0, "y")).await);
    assert_eq!((count, &e3), (1, &e1));
    // An empty upload changes nothing either.
    let (count, e4) =
        counts(s.put(&format!("{ROOM_KEYS}/keys?version={v}"), token, json!({"rooms": {}})).await);
    assert_eq!((count, &e4), (1, &e1));
    // A replacement keeps the count and moves the etag.
    let (count, e5) = counts(put_session(&s, &alice, &v, ROOM_A, "s1", key(false, 2, 0, "z")).await);
    assert_eq!(count, 1);
    assert_ne!(e5, e1);
    // A mixed upload (one worse, one new) moves it once.
    let body = json!({"sessions": {"s1": key(false, 9, 0, "worse"), "s2": key(false, 0, 0, "new")}});
    let (count, e6) = counts(s.put(&format!("{ROOM_KEYS}/keys/{ROOM_A}?version={v}"), token, body).await);
    assert_eq!(count, 2);
    assert!(![&start, &e1, &e5].contains(&&e6), "{e6}");
    // Deleting nothing leaves it; deleting something moves it.
    let (count, e7) = counts(delete(&s, &alice, &format!("{ROOM_KEYS}/keys/{ROOM_B}?version={v}")).await);
    assert_eq!((count, &e7), (2, &e6));
    let (count, e8) = counts(delete(&s, &alice, &format!("{ROOM_KEYS}/keys/{ROOM_A}/s2?version={v}")).await);
    assert_eq!(count, 1);
    assert_ne!(e8, e6);
    // Version information agrees with the last write, and survives a restart.
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version/{v}"), token).await;
    assert_eq!((&info["count"], &info["etag"]), (&json!(1), &json!(e8)));
    let dir = s.stop().await;
    let s = TestServer::boot(crate::harness::test_config(dir.path()), dir).await;
    let (_, again) = s.get(&format!("{ROOM_KEYS}/version/{v}"), token).await;
    assert_eq!(again, info);
}

#[tokio::test]
async fn writes_go_to_the_current_version_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());

    // No backup at all.
    expect_error(
        put_session(&s, &alice, "1", ROOM_A, "s", key(false, 0, 0, "x")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let old = create_version(&s, &alice, "key1").await;
    counts(put_session(&s, &alice, &old, ROOM_A, "s", key(false, 0, 0, "old")).await);
    let current = create_version(&s, &alice, "key2").await;

    // Every write level refuses the old version and names the current one.
    let writes = [
        (format!("{ROOM_KEYS}/keys/{ROOM_A}/s?version={old}"), key(false, 0, 0, "x")),
        (
            format!("{ROOM_KEYS}/keys/{ROOM_A}?version={old}"),
            json!({"sessions": {"s": key(false, 0, 0, "x")}}),
        ),
        (
            format!("{ROOM_KEYS}/keys?version={old}"),
            json!({"rooms": {ROOM_A: {"sessions": {"s": key(false, 0, 0, "x")}}}}),
        ),
    ];
    for (path, body) in writes {
        let error =
            expect_error(s.put(&path, token, body).await, StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION");
        assert_eq!(error["current_version"], current.as_str(), "{error}");
    }
    // Unknown versions are not found, whatever their shape.
    for unknown in ["7", "x", "02"] {
        expect_error(
            put_session(&s, &alice, unknown, ROOM_A, "s", key(false, 0, 0, "x")).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        expect_error(
            s.get(&format!("{ROOM_KEYS}/keys?version={unknown}"), token).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        expect_error(
            delete(&s, &alice, &format!("{ROOM_KEYS}/keys?version={unknown}")).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
    // The version query parameter is required.
    let (status, _) = s.get(&format!("{ROOM_KEYS}/keys"), token).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The old version is still readable, unchanged, and its keys can be deleted.
    let stored = session_key(&s, &alice, &old, ROOM_A, "s").await;
    assert_eq!(stored["session_data"]["ciphertext"], "old");
    let (count, _) = counts(delete(&s, &alice, &format!("{ROOM_KEYS}/keys?version={old}")).await);
    assert_eq!(count, 0);
    // The current one takes writes.
    let (count, _) = counts(put_session(&s, &alice, &current, ROOM_A, "s", key(false, 0, 0, "new")).await);
    assert_eq!(count, 1);
    // Once the current version is deleted, the previous one takes writes again.
    let (status, _) = delete(&s, &alice, &format!("{ROOM_KEYS}/version/{current}")).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(
        put_session(&s, &alice, &current, ROOM_A, "s", key(false, 0, 0, "x")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (count, _) = counts(put_session(&s, &alice, &old, ROOM_A, "s", key(false, 0, 0, "again")).await);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn deletion_at_each_level() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    let v = create_version(&s, &alice, "key1").await;
    let body = json!({"rooms": {
        ROOM_A: {"sessions": {"s1": key(false, 0, 0, "a1"), "s2": key(false, 0, 0, "a2")}},
        ROOM_B: {"sessions": {"s1": key(false, 0, 0, "b1"), "s2": key(false, 0, 0, "b2")}},
        ROOM_B_LONGER: {"sessions": {"s1": key(false, 0, 0, "c1")}},
    }});
    let (count, _) = counts(s.put(&format!("{ROOM_KEYS}/keys?version={v}"), token, body).await);
    assert_eq!(count, 5);

    // One session: only that one goes; deleting it again is no error.
    let path = format!("{ROOM_KEYS}/keys/{ROOM_A}/s1?version={v}");
    let (count, _) = counts(delete(&s, &alice, &path).await);
    assert_eq!(count, 4);
    expect_error(s.get(&path, token).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (count, _) = counts(delete(&s, &alice, &path).await);
    assert_eq!(count, 4);
    session_key(&s, &alice, &v, ROOM_A, "s2").await;
    session_key(&s, &alice, &v, ROOM_B, "s1").await;

    // One room: its sessions go, other rooms stay.
    let (count, _) = counts(delete(&s, &alice, &format!("{ROOM_KEYS}/keys/{ROOM_B}?version={v}")).await);
    assert_eq!(count, 2);
    let (_, room) = s.get(&format!("{ROOM_KEYS}/keys/{ROOM_B}?version={v}"), token).await;
    assert_eq!(room, json!({"sessions": {}}));
    let (_, all) = s.get(&format!("{ROOM_KEYS}/keys?version={v}"), token).await;
    let rooms: Vec<_> = all["rooms"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(rooms, [ROOM_A, ROOM_B_LONGER]);

    // Everything: the version stays, empty.
    let (count, _) = counts(delete(&s, &alice, &format!("{ROOM_KEYS}/keys?version={v}")).await);
    assert_eq!(count, 0);
    let (_, all) = s.get(&format!("{ROOM_KEYS}/keys?version={v}"), token).await;
    assert_eq!(all, json!({"rooms": {}}));
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version/{v}"), token).await;
    assert_eq!(info["count"], 0);

    // Deleting a version deletes its keys, and only its own.
    counts(put_session(&s, &alice, &v, ROOM_A, "s1", key(false, 0, 0, "kept")).await);
    let newer = create_version(&s, &alice, "key2").await;
    counts(put_session(&s, &alice, &newer, ROOM_A, "s1", key(false, 0, 0, "gone")).await);
    let (status, _) = delete(&s, &alice, &format!("{ROOM_KEYS}/version/{newer}")).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(
        s.get(&format!("{ROOM_KEYS}/keys?version={newer}"), token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let stored = session_key(&s, &alice, &v, ROOM_A, "s1").await;
    assert_eq!(stored["session_data"]["ciphertext"], "kept");
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version"), token).await;
    assert_eq!((&info["version"], &info["count"]), (&json!(v), &json!(1)));
}

#[tokio::test]
async fn users_see_only_their_own_backups() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let a = create_version(&s, &alice, "alice-key").await;
    counts(put_session(&s, &alice, &a, ROOM_A, "s", key(false, 0, 0, "alice")).await);

    // Bob has no backup, even though Alice's version 1 exists.
    let bob_token = Some(bob.token.as_str());
    expect_error(
        s.get(&format!("{ROOM_KEYS}/version"), bob_token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{ROOM_KEYS}/version/{a}"), bob_token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{ROOM_KEYS}/keys?version={a}"), bob_token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        put_session(&s, &bob, &a, ROOM_A, "s", key(true, 0, 0, "bob")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        delete(&s, &bob, &format!("{ROOM_KEYS}/version/{a}")).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Bob's own version 1 is separate: writes, reads and deletes stay in it.
    let b = create_version(&s, &bob, "bob-key").await;
    assert_eq!(b, a, "version numbers are per user");
    counts(put_session(&s, &bob, &b, ROOM_A, "s", key(true, 0, 0, "bob")).await);
    assert_eq!(session_key(&s, &bob, &b, ROOM_A, "s").await["session_data"]["ciphertext"], "bob");
    counts(delete(&s, &bob, &format!("{ROOM_KEYS}/keys?version={b}")).await);
    let (status, _) = delete(&s, &bob, &format!("{ROOM_KEYS}/version/{b}")).await;
    assert_eq!(status, StatusCode::OK);

    let stored = session_key(&s, &alice, &a, ROOM_A, "s").await;
    assert_eq!(stored["session_data"]["ciphertext"], "alice");
    let (_, info) = s.get(&format!("{ROOM_KEYS}/version"), Some(&alice.token)).await;
    assert_eq!((&info["auth_data"], &info["count"]), (&auth_data("alice-key"), &json!(1)));

    // And nothing without a token.
    expect_error(
        s.get(&format!("{ROOM_KEYS}/version"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn deactivation_deletes_the_users_backups() {
    let s = TestServer::start().await;
    let kim = s.register("kim", "pw-kim-12345").await;
    let version = create_version(&s, &kim, "pk-kim").await;
    let (status, _) = put_session(&s, &kim, &version, "!room:localhost", "sess", key(true, 0, 0, "k")).await;
    assert_eq!(status, StatusCode::OK);
    let path = "/_matrix/client/v3/account/deactivate";
    let (_, body) = s.post(path, Some(&kim.token), json!({})).await;
    let auth = crate::harness::password_auth("kim", "pw-kim-12345", body["session"].as_str());
    let (status, body) = s.post(path, Some(&kim.token), json!({"auth": auth})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user: ruma::OwnedUserId = kim.user_id.as_str().try_into().unwrap();
    // The account cannot log in again, so look at the store directly.
    assert!(s.services.key_backup.version_info(&user, None).is_err(), "the backup outlived the account");
    // Its keys went too: reading the (deleted) version finds none.
    if let Ok(keys) = s.services.key_backup.keys(&user, &version, None) {
        assert!(keys.is_empty(), "backed-up keys outlived the account");
    }
}
