//! Many clients sending into one room at once: every event stored once, in one order.

use std::{collections::HashSet, sync::Arc};

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    harness::TestServer,
    rooms::{V3, create_room, join},
};

const CLIENTS: usize = 20;
const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_senders_get_one_consistent_order() {
    let s = Arc::new(TestServer::start().await);
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let mut senders = Vec::new();
    for i in 0..CLIENTS {
        let who = s.register(&format!("user{i}"), "pw-sender-123").await;
        assert_eq!(join(&s, &who, &room).await.0, StatusCode::OK);
        senders.push(who);
    }

    let tasks: Vec<_> = senders
        .into_iter()
        .map(|who| {
            let s = Arc::clone(&s);
            let room = room.clone();
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(MESSAGES);
                for n in 0..MESSAGES {
                    let path = format!("{V3}/rooms/{room}/send/m.room.message/t{n}");
                    let body = json!({"msgtype": "m.text", "body": format!("{} #{n}", who.user_id)});
                    let (status, resp) = s.put(&path, Some(&who.token), body).await;
                    assert_eq!(status, StatusCode::OK, "{resp}");
                    ids.push(resp["event_id"].as_str().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut sent = HashSet::new();
    for task in tasks {
        for id in task.await.unwrap() {
            assert!(sent.insert(id), "two sends answered the same event ID");
        }
    }
    assert_eq!(sent.len(), CLIENTS * MESSAGES);

    // Read the room's timeline back from storage after a restart.
    let s = Arc::try_unwrap(s).ok().expect("no other handles");
    let dir = s.stop().await;
    let server = conduit::server::Server::build(crate::harness::test_config(dir.path())).expect("reopens");
    let services = server.services();
    let room_id = ruma::RoomId::parse(&room).unwrap();
    let timeline = services
        .events
        .room_events(&room_id, None, conduit::storage::Direction::Forward, usize::MAX)
        .unwrap();
    let messages: Vec<_> = timeline.iter().filter(|e| e.pdu.kind.to_string() == "m.room.message").collect();
    assert_eq!(messages.len(), CLIENTS * MESSAGES);
    let stored: HashSet<String> = messages.iter().map(|e| e.pdu.event_id.to_string()).collect();
    assert_eq!(stored, sent, "exactly the acknowledged events are stored, each once");

    // One order: stream positions and depths strictly increase, and each event's only
    // parent is the event before it, so every reader walks the same line.
    for pair in timeline.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(after.stream > before.stream);
        assert!(after.pdu.depth > before.pdu.depth);
        assert_eq!(after.pdu.prev_events, vec![before.pdu.event_id.clone()]);
    }
    // Per sender, the room order is the order they sent in.
    for i in 0..CLIENTS {
        let sender = format!("@user{i}:localhost");
        let bodies: Vec<String> = messages
            .iter()
            .filter(|e| e.pdu.sender.as_str() == sender)
            .map(|e| e.pdu.content_value()["body"].as_str().unwrap().to_owned())
            .collect();
        let expected: Vec<String> = (0..MESSAGES).map(|n| format!("{sender} #{n}")).collect();
        assert_eq!(bodies, expected);
    }
    drop(dir);
}

/// Rounds of each race below: each round two requests race on one row.
const RACE_ROUNDS: usize = 40;

/// Run `a` and `b` at the same time on the multi-threaded runtime; both must succeed.
async fn race(
    s: &Arc<TestServer>,
    a: (String, String, serde_json::Value),
    b: (String, String, serde_json::Value),
) {
    let run = |(path, token, body): (String, String, serde_json::Value)| {
        let s = Arc::clone(s);
        tokio::spawn(async move {
            if path.contains("/receipt/") {
                s.post(&path, Some(&token), body).await
            } else {
                s.put(&path, Some(&token), body).await
            }
        })
    };
    let (a, b) = (run(a), run(b));
    for (status, body) in [a.await.unwrap(), b.await.unwrap()] {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// A full sync of `token`'s account, `filter` applied.
async fn full_sync(s: &TestServer, token: &str) -> serde_json::Value {
    let filter = r#"{"room":{"timeline":{"limit":1}}}"#;
    let path = format!("{V3}/sync?filter={}", urlencode(filter));
    let (status, body) = s.get(&path, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Two devices of one user send read receipts at once, the later event against the earlier
/// one: whatever order the server runs them in, the receipt ends on the later event and
/// never moves back (a receipt only moves forward), and one receipt is listed per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_receipts_from_two_devices_never_move_backwards() {
    let s = Arc::new(TestServer::start().await);
    let phone = s.register("alice", "pw-alice-123").await;
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let room = create_room(&s, &phone, json!({"preset": "private_chat"})).await;
    let mut events = Vec::new();
    for n in 0..RACE_ROUNDS * 2 {
        let path = format!("{V3}/rooms/{room}/send/m.room.message/r{n}");
        let (status, resp) =
            s.put(&path, Some(&phone.token), json!({"msgtype": "m.text", "body": "x"})).await;
        assert_eq!(status, StatusCode::OK, "{resp}");
        events.push(resp["event_id"].as_str().unwrap().to_owned());
    }
    for round in 0..RACE_ROUNDS {
        let (earlier, later) = (&events[2 * round], &events[2 * round + 1]);
        let receipt = |event: &str| format!("{V3}/rooms/{room}/receipt/m.read/{event}");
        race(
            &s,
            (receipt(later), phone.token.clone(), json!({})),
            (receipt(earlier), laptop.token.clone(), json!({})),
        )
        .await;
        let sync = full_sync(&s, &phone.token).await;
        let receipts: Vec<&serde_json::Value> = sync["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .map(|events| events.iter().filter(|e| e["type"] == "m.receipt").collect())
            .unwrap_or_default();
        let mine: Vec<&String> = receipts
            .iter()
            .flat_map(|r| r["content"].as_object().into_iter().flatten())
            .filter(|(_, by_type)| by_type["m.read"].get(&phone.user_id).is_some())
            .map(|(event, _)| event)
            .collect();
        assert_eq!(mine, vec![later], "round {round}: alice's receipt must be on the later event");
    }
}

/// Two devices write the same piece of account data at once, many times: every write
/// lands, the last one committed is what is stored, and sync lists the type once (a
/// stale change row would list it twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_account_data_writes_leave_one_change_row() {
    let s = Arc::new(TestServer::start().await);
    let phone = s.register("alice", "pw-alice-123").await;
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let path = format!("{V3}/user/{}/account_data/org.example.race", phone.user_id);
    for round in 0..RACE_ROUNDS {
        race(
            &s,
            (path.clone(), phone.token.clone(), json!({"by": "phone", "round": round})),
            (path.clone(), laptop.token.clone(), json!({"by": "laptop", "round": round})),
        )
        .await;
    }
    let sync = full_sync(&s, &phone.token).await;
    let listed: Vec<&serde_json::Value> = sync["account_data"]["events"]
        .as_array()
        .expect("account data in a full sync")
        .iter()
        .filter(|e| e["type"] == "org.example.race")
        .collect();
    assert_eq!(listed.len(), 1, "listed once: {listed:?}");
    assert_eq!(listed[0]["content"]["round"], RACE_ROUNDS - 1);
    let (status, stored) = s.get(&path, Some(&phone.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored, listed[0]["content"], "sync shows what is stored");
}

/// Two devices set the user's presence at once, many times: a room mate's sync lists the
/// user's presence once, with what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_presence_updates_leave_one_change_row() {
    let s = Arc::new(TestServer::start().await);
    let phone = s.register("alice", "pw-alice-123").await;
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &phone, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let path = format!("{V3}/presence/{}/status", phone.user_id);
    for round in 0..RACE_ROUNDS {
        race(
            &s,
            (
                path.clone(),
                phone.token.clone(),
                json!({"presence": "online", "status_msg": format!("phone {round}")}),
            ),
            (
                path.clone(),
                laptop.token.clone(),
                json!({"presence": "online", "status_msg": format!("laptop {round}")}),
            ),
        )
        .await;
    }
    let sync = full_sync(&s, &bob.token).await;
    let listed: Vec<&serde_json::Value> = sync["presence"]["events"]
        .as_array()
        .expect("presence in bob's sync")
        .iter()
        .filter(|e| e["sender"] == phone.user_id.as_str())
        .collect();
    assert_eq!(listed.len(), 1, "alice listed once: {listed:?}");
    let (status, stored) = s.get(&path, Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["content"]["status_msg"], stored["status_msg"]);
}

/// Many clients claim one device's one-time keys at once: each key is handed out exactly
/// once, and once they are gone a claim gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_key_claims_hand_out_each_one_time_key_once() {
    const KEYS: usize = 30;
    const CLAIMERS: usize = 8;
    const CLAIMS: usize = 6;
    let s = Arc::new(TestServer::start().await);
    let alice = s.register("alice", "pw-alice-123").await;
    let otks: serde_json::Map<String, serde_json::Value> = (0..KEYS)
        .map(|i| (format!("signed_curve25519:K{i:03}"), json!({"key": format!("key-{i}")})))
        .collect();
    let (status, body) =
        s.post(&format!("{V3}/keys/upload"), Some(&alice.token), json!({"one_time_keys": otks})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut claimers = Vec::new();
    for i in 0..CLAIMERS {
        claimers.push(s.register(&format!("claimer{i}"), "pw-claimer-123").await);
    }
    let wanted =
        json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let tasks: Vec<_> = claimers
        .into_iter()
        .map(|who| {
            let (s, wanted, alice) = (Arc::clone(&s), wanted.clone(), alice.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..CLAIMS {
                    let (status, body) =
                        s.post(&format!("{V3}/keys/claim"), Some(&who.token), wanted.clone()).await;
                    assert_eq!(status, StatusCode::OK, "{body}");
                    if let Some(keys) = body["one_time_keys"][&alice.user_id][&alice.device_id].as_object() {
                        got.extend(keys.keys().cloned());
                    }
                }
                got
            })
        })
        .collect();
    let mut handed_out = Vec::new();
    for task in tasks {
        handed_out.extend(task.await.unwrap());
    }
    let total = handed_out.len();
    handed_out.sort();
    handed_out.dedup();
    assert_eq!(handed_out.len(), total, "a one-time key was handed out twice");
    assert_eq!(total, KEYS, "every key handed out, and no more");
}
