//! End-to-end encryption through HTTP: device keys, one-time and fallback keys, claims,
//! to-device messages, cross-signing and signatures, device-list changes.

use base64::Engine;
use reqwest::{Method, StatusCode};
use ruma::{
    CanonicalJsonObject,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, password_auth},
    rooms::{V3, create_room, join},
    sync::{list, sync, token, urlencode},
};

pub fn key_pair(name: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), name.to_owned()).unwrap()
}

/// A cross-signing key pair: its key ID is its own public key.
pub fn cross_pair() -> Ed25519KeyPair {
    let der = Ed25519KeyPair::generate();
    let public = public(&Ed25519KeyPair::from_der(&der, String::new()).unwrap());
    Ed25519KeyPair::from_der(&der, public).unwrap()
}

fn public(pair: &Ed25519KeyPair) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key())
}

/// An unsigned cross-signing key of `usage` for `user_id`.
pub fn cross_signing_key(user_id: &str, pair: &Ed25519KeyPair, usage: &str) -> Value {
    json!({"user_id": user_id, "usage": [usage], "keys": {format!("ed25519:{}", public(pair)): public(pair)}})
}

pub fn signed(signer: &str, pair: &Ed25519KeyPair, object: Value) -> Value {
    let mut canonical: CanonicalJsonObject = serde_json::from_value(object).unwrap();
    sign_json(signer, pair, &mut canonical).unwrap();
    serde_json::to_value(canonical).unwrap()
}

/// A device's keys, signed by the device's own key.
pub fn device_keys(who: &Session, pair: &Ed25519KeyPair) -> Value {
    signed(
        &who.user_id,
        pair,
        json!({
            "user_id": who.user_id, "device_id": who.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{}", who.device_id): "curve-public", format!("ed25519:{}", who.device_id): public(pair)}
        }),
    )
}

async fn upload(s: &TestServer, who: &Session, body: Value) -> (StatusCode, Value) {
    s.post(&format!("{V3}/keys/upload"), Some(&who.token), body).await
}

async fn query(s: &TestServer, who: &Session, users: &[&Session]) -> Value {
    let wanted: serde_json::Map<String, Value> =
        users.iter().map(|u| (u.user_id.clone(), json!([]))).collect();
    let (status, body) =
        s.post(&format!("{V3}/keys/query"), Some(&who.token), json!({"device_keys": wanted})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn claim(s: &TestServer, who: &Session, target: &Session) -> Value {
    let body =
        json!({"one_time_keys": {target.user_id.clone(): {target.device_id.clone(): "signed_curve25519"}}});
    let (status, body) = s.post(&format!("{V3}/keys/claim"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["one_time_keys"][&target.user_id][&target.device_id].clone()
}

#[tokio::test]
async fn device_and_one_time_keys_upload_query_claim() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let pair = key_pair(&alice.device_id);
    let keys = device_keys(&alice, &pair);
    let otks = json!({
        "signed_curve25519:AAAA": {"key": "one"}, "signed_curve25519:AAAB": {"key": "two"}
    });
    let fallback = json!({"signed_curve25519:FFFF": {"key": "fallback", "fallback": true}});
    let (status, body) =
        upload(&s, &alice, json!({"device_keys": keys, "one_time_keys": otks, "fallback_keys": fallback}))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2);

    // The same keys again are fine; as on Synapse, new keys for the device replace the old
    // ones (clients check signatures; the server stores what has the right shape).
    let (status, _) = upload(&s, &alice, json!({"device_keys": keys})).await;
    assert_eq!(status, StatusCode::OK);
    let other = device_keys(&alice, &key_pair(&alice.device_id));
    let (status, body) = upload(&s, &alice, json!({"device_keys": other})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = &query(&s, &alice, &[&alice]).await["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(stored["keys"], other["keys"], "{stored}");
    let (status, _) = upload(&s, &alice, json!({"device_keys": keys})).await;
    assert_eq!(status, StatusCode::OK);
    // Keys for another device are refused.
    let bob_pair = key_pair(&bob.device_id);
    let mut elsewhere = device_keys(&bob, &bob_pair);
    elsewhere["device_id"] = json!("SOMEONEELSE");
    expect_error(
        upload(&s, &bob, json!({"device_keys": elsewhere})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    let (status, _) = upload(&s, &bob, json!({"device_keys": device_keys(&bob, &bob_pair)})).await;
    assert_eq!(status, StatusCode::OK);

    // Anyone can query them, with the device's display name.
    let (status, _) = s
        .put(
            &format!("{V3}/devices/{}", alice.device_id),
            Some(&alice.token),
            json!({"display_name": "Alice's phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = query(&s, &bob, &[&alice]).await;
    let got = &result["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(got["keys"], keys["keys"]);
    assert_eq!(got["signatures"], keys["signatures"]);
    assert_eq!(got["unsigned"]["device_display_name"], "Alice's phone", "{got}");
    // Users of other servers cannot be reached without federation.
    let (_, remote) = s
        .post(
            &format!("{V3}/keys/query"),
            Some(&bob.token),
            json!({"device_keys": {"@x:elsewhere.example": []}}),
        )
        .await;
    assert!(remote["failures"].get("elsewhere.example").is_some(), "{remote}");

    // Each claim takes one key, once; then the fallback key, again and again.
    let first = claim(&s, &bob, &alice).await;
    let second = claim(&s, &bob, &alice).await;
    let ids: Vec<&String> =
        first.as_object().unwrap().keys().chain(second.as_object().unwrap().keys()).collect();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let body = sync(&s, &alice, "").await;
    assert!(
        body.get("device_one_time_keys_count")
            .is_none_or(|c| c.get("signed_curve25519").is_none_or(|n| n == 0))
    );
    assert_eq!(body["device_unused_fallback_key_types"], json!(["signed_curve25519"]));
    for _ in 0..2 {
        let third = claim(&s, &bob, &alice).await;
        assert_eq!(third["signed_curve25519:FFFF"]["key"], "fallback");
    }
    let body = sync(&s, &alice, "").await;
    assert_eq!(body["device_unused_fallback_key_types"], json!([]));
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_in_order_and_survive_restart() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let bob_phone = s.login("bob", "pw-bob-12345", Some("PHONE")).await;
    let since = token(&s, &bob).await;
    let send = |txn: &str, target: &str, n: u64| {
        let path = format!("{V3}/sendToDevice/m.room_key_request/{txn}");
        let body = json!({"messages": {bob.user_id.clone(): {target: {"n": n}}}});
        (path, body)
    };
    for (i, txn) in ["t1", "t2"].iter().enumerate() {
        let (path, body) = send(txn, &bob.device_id, i as u64);
        let (status, _) = s.put(&path, Some(&alice.token), body).await;
        assert_eq!(status, StatusCode::OK);
    }
    // A repeated transaction is not sent twice.
    let (path, body) = send("t2", &bob.device_id, 99);
    let (status, _) = s.put(&path, Some(&alice.token), body).await;
    assert_eq!(status, StatusCode::OK);
    // `*` reaches every device.
    let (path, body) = send("t3", "*", 3);
    let (status, _) = s.put(&path, Some(&alice.token), body).await;
    assert_eq!(status, StatusCode::OK);

    let first = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let events = list(&first["to_device"]["events"]);
    let ns: Vec<u64> = events.iter().map(|e| e["content"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [0, 1, 3]);
    assert_eq!(events[0]["sender"], alice.user_id);
    assert_eq!(events[0]["type"], "m.room_key_request");
    let phone = sync(&s, &bob_phone, "").await;
    assert_eq!(list(&phone["to_device"]["events"]).len(), 1);

    // Not acknowledged yet (the client did not come back with the token): still there after
    // a restart.
    let dir = s.stop().await;
    let s = TestServer::boot(crate::harness::test_config(dir.path()), dir).await;
    let again = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert_eq!(list(&again["to_device"]["events"]).len(), 3);
    // Coming back with the new token acknowledges them: gone.
    let next = again["next_batch"].as_str().unwrap();
    let after = sync(&s, &bob, &format!("since={next}&timeout=0")).await;
    assert!(list(&after["to_device"]["events"]).is_empty());
}

#[tokio::test]
async fn cross_signing_and_signatures() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let device = key_pair(&alice.device_id);
    let (status, _) = upload(&s, &alice, json!({"device_keys": device_keys(&alice, &device)})).await;
    assert_eq!(status, StatusCode::OK);

    let master = cross_pair();
    let self_signing = cross_pair();
    let user_signing = cross_pair();
    let cross_key = |pair: &Ed25519KeyPair, usage: &str| json!({"user_id": alice.user_id, "usage": [usage], "keys": {format!("ed25519:{}", public(pair)): public(pair)}});
    // Sub-keys are signed by the master key, whose key ID is its public key.
    let master_key = cross_key(&master, "master");
    let self_key = signed(&alice.user_id, &master, cross_key(&self_signing, "self_signing"));
    let user_key = signed(&alice.user_id, &master, cross_key(&user_signing, "user_signing"));
    let path = format!("{V3}/keys/device_signing/upload");
    let keys = json!({"master_key": master_key, "self_signing_key": self_key, "user_signing_key": user_key});
    // An upload of no keys is Element's probe for whether a password will be needed: it
    // changes nothing and succeeds (as on Synapse), before and after keys exist.
    let (status, body) = s.post(&path, Some(&alice.token), json!({})).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({})), "{body}");
    assert!(query(&s, &bob, &[&alice]).await["master_keys"].get(&alice.user_id).is_none());
    // The first upload needs no password.
    let (status, body) = s.post(&path, Some(&alice.token), keys.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The same keys again neither, nor an empty probe.
    let (status, _) = s.post(&path, Some(&alice.token), keys.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.post(&path, Some(&alice.token), json!({})).await.0, StatusCode::OK);

    // Others see master and self-signing keys; only alice sees her user-signing key.
    let theirs = query(&s, &bob, &[&alice]).await;
    assert_eq!(theirs["master_keys"][&alice.user_id]["keys"], master_key["keys"]);
    assert!(theirs["self_signing_keys"].get(&alice.user_id).is_some());
    assert!(theirs.get("user_signing_keys").is_none_or(|k| k.get(&alice.user_id).is_none()));
    let mine = query(&s, &alice, &[&alice]).await;
    assert!(mine["user_signing_keys"].get(&alice.user_id).is_some());

    // The self-signing key signs the device; the signature is checked and merged in.
    let stored = mine["device_keys"][&alice.user_id][&alice.device_id].clone();
    let mut to_sign = stored.clone();
    to_sign.as_object_mut().unwrap().remove("signatures");
    to_sign.as_object_mut().unwrap().remove("unsigned");
    let device_signed = signed(&alice.user_id, &self_signing, to_sign.clone());
    let (status, body) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.token),
            json!({alice.user_id.clone(): {alice.device_id.clone(): device_signed}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("failures").is_none_or(|f| f.as_object().unwrap().is_empty()), "{body}");
    let mine = query(&s, &bob, &[&alice]).await;
    let sigs = &mine["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert!(sigs.get(format!("ed25519:{}", public(&self_signing))).is_some(), "{sigs}");
    assert!(sigs.get(format!("ed25519:{}", alice.device_id)).is_some(), "the device's own signature stays");

    // A forged signature is reported as a failure and not stored.
    let mut forged = to_sign.clone();
    forged["signatures"] = json!({alice.user_id.clone(): {format!("ed25519:{}", public(&self_signing)): "bm90IGEgc2lnbmF0dXJl"}});
    let (status, body) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&alice.token),
            json!({alice.user_id.clone(): {alice.device_id.clone(): forged}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE");

    // Replacing the master key (an identity reset) needs the password.
    let new_master = cross_pair();
    let reset = json!({"master_key": cross_key(&new_master, "master")});
    let (status, challenge) = s.post(&path, Some(&alice.token), reset.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{challenge}");
    let session = challenge["session"].as_str().unwrap();
    let mut with_auth = reset.clone();
    with_auth["auth"] = password_auth(&alice.user_id, "pw-alice-123", Some(session));
    let (status, body) = s.post(&path, Some(&alice.token), with_auth).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = query(&s, &bob, &[&alice]).await;
    assert_eq!(after["master_keys"][&alice.user_id]["keys"], reset["master_key"]["keys"]);

    // Sub-keys not signed by the master key are refused.
    let bad = json!({"self_signing_key": cross_key(&cross_pair(), "self_signing")});
    expect_error(s.post(&path, Some(&bob.token), bad).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn device_list_changes_reach_room_mates_and_deleted_devices_lose_their_keys() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let since = token(&s, &bob).await;

    // Alice adds a device with keys: bob's sync and /keys/changes say so.
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let (status, _) =
        upload(&s, &laptop, json!({"device_keys": device_keys(&laptop, &key_pair("LAPTOP"))})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert!(list(&body["device_lists"]["changed"]).contains(&json!(alice.user_id)), "{body}");
    let next = body["next_batch"].as_str().unwrap().to_owned();
    let (status, changes) =
        s.get(&format!("{V3}/keys/changes?from={since}&to={next}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    assert!(list(&changes["changed"]).contains(&json!(alice.user_id)));
    // A stranger's syncs hear nothing of it.
    let carol = s.register("carol", "pw-carol-1234").await;
    let (_, changes) = s.get(&format!("{V3}/keys/changes?from={since}&to={next}"), Some(&carol.token)).await;
    assert!(!list(&changes["changed"]).contains(&json!(alice.user_id)));

    // Renaming it changes what bob's key query shows, so his sync says so; giving it the
    // same name again changes nothing.
    let (status, body) = s
        .put(&format!("{V3}/devices/LAPTOP"), Some(&alice.token), json!({"display_name": "Work laptop"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let body = sync(&s, &bob, &format!("since={next}&timeout=0")).await;
    assert!(list(&body["device_lists"]["changed"]).contains(&json!(alice.user_id)), "{body}");
    let result = query(&s, &bob, &[&alice]).await;
    assert_eq!(
        result["device_keys"][&alice.user_id]["LAPTOP"]["unsigned"]["device_display_name"],
        json!("Work laptop"),
        "{result}"
    );
    let next = body["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(&format!("{V3}/devices/LAPTOP"), Some(&alice.token), json!({"display_name": "Work laptop"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, &format!("since={next}&timeout=0")).await;
    assert!(!list(&body["device_lists"]["changed"]).contains(&json!(alice.user_id)), "{body}");
    let next = body["next_batch"].as_str().unwrap().to_owned();

    // Deleting the device deletes its keys and tells bob.
    let (status, challenge) =
        s.call(Method::DELETE, &format!("{V3}/devices/LAPTOP"), Some(&alice.token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = password_auth(&alice.user_id, "pw-alice-123", challenge["session"].as_str());
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("{V3}/devices/LAPTOP"),
            Some(&alice.token),
            Some(json!({"auth": auth})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let result = query(&s, &bob, &[&alice]).await;
    assert!(result["device_keys"][&alice.user_id].get("LAPTOP").is_none(), "{result}");
    let body = sync(&s, &bob, &format!("since={next}&timeout=0")).await;
    assert!(list(&body["device_lists"]["changed"]).contains(&json!(alice.user_id)));

    // Alice leaves the only shared room: bob is told she left.
    let next = body["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, &format!("since={next}&timeout=0")).await;
    assert!(list(&body["device_lists"]["left"]).contains(&json!(alice.user_id)), "{body}");
}

const DEHYDRATED: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";

/// A dehydrated device's PUT body for `device_id`, its keys signed by `pair`.
fn dehydrated_body(owner: &Session, device_id: &str, pair: &Ed25519KeyPair, pickle: &str) -> Value {
    let as_device = Session { device_id: device_id.to_owned(), ..owner.clone() };
    json!({
        "device_id": device_id,
        "initial_device_display_name": "Dehydrated device",
        "device_data": {"algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": pickle},
        "device_keys": device_keys(&as_device, pair),
        "one_time_keys": {"signed_curve25519:D1": {"key": "dehydrated-otk"}},
        "fallback_keys": {}
    })
}

#[tokio::test]
async fn dehydrated_devices_hold_keys_and_messages_while_clients_are_offline() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    expect_error(s.get(DEHYDRATED, Some(&bob.token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let (status, body) = s
        .put(
            DEHYDRATED,
            Some(&bob.token),
            dehydrated_body(&bob, "DEHYDRATED1", &key_pair("DEHYDRATED1"), "pickle-1"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], "DEHYDRATED1");
    let (status, got) = s.get(DEHYDRATED, Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (got["device_id"].as_str(), got["device_data"]["device_pickle"].as_str()),
        (Some("DEHYDRATED1"), Some("pickle-1"))
    );

    // Others see it as one of bob's devices and can claim its key and message it.
    let keys = query(&s, &alice, &[&bob]).await;
    assert!(keys["device_keys"][&bob.user_id].get("DEHYDRATED1").is_some(), "{keys}");
    let dehydrated = Session { device_id: "DEHYDRATED1".to_owned(), ..bob.clone() };
    assert_eq!(claim(&s, &alice, &dehydrated).await["signed_curve25519:D1"]["key"], "dehydrated-otk");
    let (status, _) = s
        .put(
            &format!("{V3}/sendToDevice/m.room.encrypted/d1"),
            Some(&alice.token),
            json!({"messages": {bob.user_id.clone(): {"DEHYDRATED1": {"ciphertext": "for later"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A rehydrating client fetches the messages page by page; a page's token acknowledges it.
    let events = format!("{DEHYDRATED}/DEHYDRATED1/events");
    let (status, page) = s.post(&events, Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["events"][0]["content"]["ciphertext"], "for later");
    let next = page["next_batch"].as_str().unwrap();
    let (_, page) = s.post(&events, Some(&bob.token), json!({"next_batch": next})).await;
    assert_eq!(page["events"], json!([]));
    // Only the owner's own dehydrated device can be read.
    expect_error(
        s.post(&format!("{DEHYDRATED}/{}/events", bob.device_id), Some(&bob.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(s.post(&events, Some(&alice.token), json!({})).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A new dehydrated device replaces the old one, keys and all.
    let (status, _) = s
        .put(
            DEHYDRATED,
            Some(&bob.token),
            dehydrated_body(&bob, "DEHYDRATED2", &key_pair("DEHYDRATED2"), "pickle-2"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let keys = query(&s, &alice, &[&bob]).await;
    assert!(keys["device_keys"][&bob.user_id].get("DEHYDRATED1").is_none());
    assert!(keys["device_keys"][&bob.user_id].get("DEHYDRATED2").is_some());
    // An ID already used by a real device is refused.
    let taken = dehydrated_body(&bob, &bob.device_id, &key_pair(&bob.device_id), "p");
    expect_error(
        s.put(DEHYDRATED, Some(&bob.token), taken).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let (status, body) = s.call(Method::DELETE, DEHYDRATED, Some(&bob.token), None).await;
    assert_eq!((status, body["device_id"].as_str()), (StatusCode::OK, Some("DEHYDRATED2")));
    expect_error(s.get(DEHYDRATED, Some(&bob.token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let keys = query(&s, &alice, &[&bob]).await;
    assert!(keys["device_keys"][&bob.user_id].get("DEHYDRATED2").is_none());
}

#[tokio::test]
async fn users_sign_each_others_master_keys_with_their_user_signing_key() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let upload_identity = |who: &Session, master: &Ed25519KeyPair, user_signing: &Ed25519KeyPair| {
        let key = |pair: &Ed25519KeyPair, usage: &str| json!({"user_id": who.user_id, "usage": [usage], "keys": {format!("ed25519:{}", public(pair)): public(pair)}});
        json!({
            "master_key": key(master, "master"),
            "user_signing_key": signed(&who.user_id, master, key(user_signing, "user_signing")),
        })
    };
    let (alice_master, alice_user) = (cross_pair(), cross_pair());
    let (bob_master, bob_user) = (cross_pair(), cross_pair());
    let path = format!("{V3}/keys/device_signing/upload");
    let (status, _) =
        s.post(&path, Some(&alice.token), upload_identity(&alice, &alice_master, &alice_user)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.post(&path, Some(&bob.token), upload_identity(&bob, &bob_master, &bob_user)).await;
    assert_eq!(status, StatusCode::OK);

    // Bob verified Alice: his user-signing key signs her master key.
    let theirs = query(&s, &bob, &[&alice]).await;
    let mut master = theirs["master_keys"][&alice.user_id].clone();
    master.as_object_mut().unwrap().remove("signatures");
    let signed_master = signed(&bob.user_id, &bob_user, master);
    let (status, body) = s
        .post(
            &format!("{V3}/keys/signatures/upload"),
            Some(&bob.token),
            json!({alice.user_id.clone(): {public(&alice_master): signed_master}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("failures").is_none_or(|f| f.as_object().unwrap().is_empty()), "{body}");
    let after = query(&s, &alice, &[&alice]).await;
    let signatures = &after["master_keys"][&alice.user_id]["signatures"][&bob.user_id];
    assert!(signatures.get(format!("ed25519:{}", public(&bob_user))).is_some(), "{after}");
}

#[tokio::test]
async fn device_keys_are_stored_by_shape_and_bad_key_objects_are_bad_json() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let device = format!("ed25519:{}", alice.device_id);
    // A signature the server cannot verify is still stored, as on Synapse: clients verify.
    let unverifiable = json!({
        "user_id": alice.user_id, "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
        "keys": {format!("curve25519:{}", alice.device_id): "c", device.clone(): "e"},
        "signatures": {alice.user_id.clone(): {device.clone(): "not-a-real-signature"}}
    });
    let (status, body) = upload(&s, &alice, json!({"device_keys": unverifiable})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stored = &query(&s, &alice, &[&alice]).await["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(stored["signatures"][&alice.user_id][&device], "not-a-real-signature", "{stored}");

    let with = |field: &str, value: Value| {
        let mut keys = unverifiable.clone();
        keys[field] = value;
        json!({ "device_keys": keys })
    };
    let mut unsigned = unverifiable.clone();
    unsigned.as_object_mut().unwrap().remove("signatures");
    for bad in [
        json!({"device_keys": "keys"}),
        with("keys", json!("x")),
        with("keys", json!({"ed25519:D": 7})),
        with("algorithms", json!("m.olm.v1.curve25519-aes-sha2")),
        with("signatures", json!({alice.user_id.clone(): "sig"})),
        json!({"device_keys": unsigned}),
        json!({"one_time_keys": {"signed_curve25519:AAAA": 5}}),
        json!({"one_time_keys": {"signed_curve25519:AAAA": {"signatures": {}}}}),
        json!({"one_time_keys": {"no-algorithm": {"key": "k", "signatures": {}}}}),
        json!({"fallback_keys": {"signed_curve25519:FFFF": [1]}}),
    ] {
        expect_error(upload(&s, &alice, bad.clone()).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
    // Nothing of the refused uploads was kept.
    let counts = upload(&s, &alice, json!({})).await.1;
    assert_eq!(
        counts["one_time_key_counts"].get("signed_curve25519").and_then(Value::as_u64).unwrap_or(0),
        0
    );
    // A bare string one-time key is a shape clients use (and Synapse accepts).
    let (status, body) = upload(&s, &alice, json!({"one_time_keys": {"curve25519:AAAA": "bare"}})).await;
    assert_eq!((status, &body["one_time_key_counts"]["curve25519"]), (StatusCode::OK, &json!(1)), "{body}");
}

#[tokio::test]
async fn a_master_key_uploaded_without_signatures_is_served_with_a_signatures_object() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let master = cross_pair();
    let key = json!({"user_id": alice.user_id, "usage": ["master"], "keys": {format!("ed25519:{}", public(&master)): public(&master)}});
    let (status, body) = s
        .post(&format!("{V3}/keys/device_signing/upload"), Some(&alice.token), json!({"master_key": key}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for viewer in [&alice, &bob] {
        let result = query(&s, viewer, &[&alice]).await;
        let served = &result["master_keys"][&alice.user_id];
        assert_eq!(served["keys"], key["keys"], "{result}");
        assert!(served["signatures"].is_object(), "{served}");
    }
}

#[tokio::test]
async fn new_room_mates_appear_in_key_changes_and_sync_and_leavers_in_left() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let (status, _) =
        upload(&s, &bob, json!({"device_keys": device_keys(&bob, &key_pair(&bob.device_id))})).await;
    assert_eq!(status, StatusCode::OK);
    let since = token(&s, &alice).await;

    // Bob uploaded his keys before sharing a room; joining makes his keys alice's concern.
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    // Alice's filter shows only messages, so no member event tells her of the join.
    let filter = urlencode(
        &json!({"room": {"timeline": {"types": ["m.room.message"]}, "state": {"types": []}}}).to_string(),
    );
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&filter={filter}")).await;
    assert!(list(&body["device_lists"]["changed"]).contains(&json!(bob.user_id)), "{body}");
    let next = body["next_batch"].as_str().unwrap().to_owned();
    let (status, changes) =
        s.get(&format!("{V3}/keys/changes?from={since}&to={next}"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{changes}");
    assert!(list(&changes["changed"]).contains(&json!(bob.user_id)), "{changes}");
    // Bob, who joined, must fetch alice's keys too.
    let (_, changes) = s.get(&format!("{V3}/keys/changes?from={since}&to={next}"), Some(&bob.token)).await;
    assert!(list(&changes["changed"]).contains(&json!(alice.user_id)), "{changes}");

    // Bob leaves the only room they shared: alice stops tracking him.
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let after = token(&s, &alice).await;
    let (_, changes) = s.get(&format!("{V3}/keys/changes?from={next}&to={after}"), Some(&alice.token)).await;
    assert!(list(&changes["left"]).contains(&json!(bob.user_id)), "{changes}");
    assert!(!list(&changes["changed"]).contains(&json!(bob.user_id)), "{changes}");
}
