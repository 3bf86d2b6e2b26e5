//! The older room versions (1–5) through HTTP: every preset creates them, membership,
//! messages, redactions and reads work, events carry each version's event ID format, and
//! they upgrade to the default. Compared with Synapse 1.163 (see the helper's report).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, state_map},
    sync::sync,
};

/// The versions before canonical JSON, with their own event ID and reference formats.
const OLD: [&str; 5] = ["1", "2", "3", "4", "5"];

/// Percent-encode an ID for a path segment: v3 event IDs hold `/` and `+`.
pub fn enc(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The event ID format of each version: `$opaque:server` chosen by the server (v1, v2), the
/// reference hash in standard base64 (v3) or URL-safe base64 (v4+).
fn assert_event_id_format(version: &str, id: &str) {
    let body = id.strip_prefix('$').unwrap_or_else(|| panic!("v{version}: {id} lacks `$`"));
    match version {
        "1" | "2" => {
            let (opaque, server) = body.split_once(':').unwrap_or_else(|| panic!("v{version}: {id}"));
            assert_eq!(server, "localhost", "v{version}: {id}");
            assert!(!opaque.is_empty(), "v{version}: {id}");
        }
        _ => {
            // 32 bytes of SHA-256 in unpadded base64.
            assert_eq!(body.len(), 43, "v{version}: {id}");
            let url_safe = version != "3";
            let allowed = |c: char| {
                c.is_ascii_alphanumeric()
                    || if url_safe { c == '-' || c == '_' } else { c == '+' || c == '/' }
            };
            assert!(body.chars().all(allowed), "v{version}: {id}");
        }
    }
}

async fn send(s: &TestServer, who: &Session, room: &str, txn: &str, body: Value) -> (StatusCode, Value) {
    s.put(&format!("{V3}/rooms/{room}/send/m.room.message/{txn}"), Some(&who.token), body).await
}

async fn send_text(s: &TestServer, who: &Session, room: &str, txn: &str, text: &str) -> String {
    let (status, body) = send(s, who, room, txn, json!({"msgtype": "m.text", "body": text})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

async fn post(s: &TestServer, who: &Session, path: &str, body: Value) -> (StatusCode, Value) {
    s.post(&format!("{V3}{path}"), Some(&who.token), body).await
}

async fn event(s: &TestServer, who: &Session, room: &str, event_id: &str) -> Value {
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/event/{}", enc(event_id)), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{event_id}: {body}");
    body
}

#[tokio::test]
async fn old_versions_are_advertised_and_created_with_every_preset() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    let versions = &caps["capabilities"]["m.room_versions"];
    assert_eq!(versions["default"], "12", "{versions}");
    for version in OLD {
        assert_eq!(versions["available"][version], "stable", "{versions}");
    }

    for version in OLD {
        for preset in ["public_chat", "private_chat", "trusted_private_chat"] {
            let room = create_room(
                &s,
                &alice,
                json!({"room_version": version, "preset": preset, "name": "old", "invite": [bob.user_id]}),
            )
            .await;
            assert!(room.ends_with(":localhost"), "{room}");
            let state = state_map(&s, &alice, &room).await;
            let create = &state["m.room.create|"]["content"];
            assert_eq!(
                *create,
                json!({"room_version": version, "creator": alice.user_id}),
                "v{version} {preset}"
            );
            let mut users = json!({ &alice.user_id: 100 });
            if preset == "trusted_private_chat" {
                users[&bob.user_id] = json!(100);
            }
            assert_eq!(state["m.room.power_levels|"]["content"]["users"], users, "v{version} {preset}");
            let join_rule = if preset == "public_chat" { "public" } else { "invite" };
            assert_eq!(state["m.room.join_rules|"]["content"]["join_rule"], join_rule);
            assert_eq!(state["m.room.name|"]["content"]["name"], "old");
            for event in state.values() {
                assert_event_id_format(version, event["event_id"].as_str().unwrap());
            }
            // Bob was invited and can join under every preset.
            assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK, "v{version} {preset}");
        }
    }
}

#[tokio::test]
async fn old_versions_run_membership_messages_and_reads() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let user = |who: &Session| json!({"user_id": who.user_id});
    for version in OLD {
        let room = create_room(&s, &alice, json!({"room_version": version, "preset": "public_chat"})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        let first = send_text(&s, &bob, &room, &format!("b{version}"), "hello").await;
        assert_event_id_format(version, &first);
        let body = event(&s, &bob, &room, &first).await;
        assert_eq!(
            (&body["event_id"], &body["room_id"], &body["sender"], &body["content"]["body"]),
            (&json!(first), &json!(room), &json!(bob.user_id), &json!("hello")),
            "v{version}: {body}"
        );

        // Membership: invite, kick, ban, unban, leave; each a member event of the version.
        let path = |action: &str| format!("/rooms/{room}/{action}");
        assert_eq!(post(&s, &alice, &path("invite"), user(&carol)).await.0, StatusCode::OK);
        assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
        expect_error(post(&s, &bob, &path("kick"), user(&carol)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        assert_eq!(post(&s, &alice, &path("kick"), user(&carol)).await.0, StatusCode::OK);
        assert_eq!(post(&s, &alice, &path("ban"), user(&carol)).await.0, StatusCode::OK);
        expect_error(join(&s, &carol, &room).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        assert_eq!(post(&s, &alice, &path("unban"), user(&carol)).await.0, StatusCode::OK);
        assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
        assert_eq!(post(&s, &carol, &path("leave"), json!({})).await.0, StatusCode::OK);
        let state = state_map(&s, &alice, &room).await;
        let carols = &state[&format!("m.room.member|{}", carol.user_id)];
        assert_eq!(carols["content"]["membership"], "leave");
        assert_event_id_format(version, carols["event_id"].as_str().unwrap());

        // State: Bob lacks the power; Alice sets a topic, read back with its predecessor.
        let topic = format!("{V3}/rooms/{room}/state/m.room.topic/");
        expect_error(
            s.put(&topic, Some(&bob.token), json!({"topic": "no"})).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        s.put(&topic, Some(&alice.token), json!({"topic": "one"})).await;
        let (status, body) = s.put(&topic, Some(&alice.token), json!({"topic": "two"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let topic_id = body["event_id"].as_str().unwrap().to_owned();
        let (_, current) = s.get(&format!("{topic}?format=event"), Some(&bob.token)).await;
        assert_eq!(
            (&current["event_id"], &current["unsigned"]["prev_content"]),
            (&json!(topic_id), &json!({"topic": "one"}))
        );

        // /messages and /sync serve the events with their IDs, newest first.
        let last = send_text(&s, &alice, &room, &format!("a{version}"), "last").await;
        let (status, page) =
            s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=3"), Some(&bob.token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids: Vec<&str> =
            page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
        assert_eq!(ids[0], last, "v{version}: {page}");
        assert_eq!(ids[1], topic_id, "v{version}: {page}");
        let synced = sync(&s, &bob, "").await;
        let timeline = &synced["rooms"]["join"][&room]["timeline"]["events"];
        let synced_ids: Vec<&str> =
            timeline.as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
        assert_eq!(synced_ids.last(), Some(&last.as_str()), "v{version}: {timeline}");
        for id in synced_ids {
            assert_event_id_format(version, id);
        }
    }
}

#[tokio::test]
async fn old_versions_redact_by_their_algorithm() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    for version in OLD {
        let room = create_room(&s, &alice, json!({"room_version": version, "preset": "public_chat"})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        let secret = send_text(&s, &bob, &room, &format!("s{version}"), "secret").await;
        let alices = send_text(&s, &alice, &room, &format!("a{version}"), "mine").await;
        let redact = |who: &Session, target: &str, txn: &str| {
            let path = format!("{V3}/rooms/{room}/redact/{}/{txn}", enc(target));
            let token = who.token.clone();
            let s = &s;
            async move { s.put(&path, Some(&token), json!({"reason": "spam"})).await }
        };
        // Bob may not redact Alice's event; Alice, a moderator, may redact Bob's.
        // Transaction IDs are the device's, across rooms: each version's are its own.
        expect_error(
            redact(&bob, &alices, &format!("r0-{version}")).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        let (status, body) = redact(&alice, &secret, &format!("r1-{version}")).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let redaction = body["event_id"].as_str().unwrap().to_owned();
        assert_event_id_format(version, &redaction);

        let redacted = event(&s, &bob, &room, &secret).await;
        assert_eq!(redacted["content"], json!({}), "v{version}: {redacted}");
        assert_eq!(redacted["event_id"], secret);
        assert_eq!(redacted["unsigned"]["redacted_because"]["event_id"], redaction);
        // v1–v10 carry `redacts` at the top level only.
        let redaction_event = event(&s, &bob, &room, &redaction).await;
        assert_eq!(redaction_event["redacts"], secret, "v{version}: {redaction_event}");
        assert_eq!(redaction_event["content"], json!({"reason": "spam"}), "v{version}");

        // v1–v5 keep an `m.room.aliases` event's aliases through a redaction.
        let aliases_path = format!("{V3}/rooms/{room}/state/m.room.aliases/localhost");
        let (status, body) =
            s.put(&aliases_path, Some(&alice.token), json!({"aliases": ["#old:localhost"], "x": 1})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let aliases = body["event_id"].as_str().unwrap().to_owned();
        assert_eq!(redact(&alice, &aliases, &format!("r2-{version}")).await.0, StatusCode::OK);
        let kept = event(&s, &alice, &room, &aliases).await;
        assert_eq!(kept["content"], json!({"aliases": ["#old:localhost"]}), "v{version}: {kept}");
    }
}

#[tokio::test]
async fn old_version_rules_apply() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    for version in ["1", "5", "6"] {
        let room = create_room(&s, &alice, json!({"room_version": version, "preset": "public_chat"})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        // Before v6 an `m.room.aliases` event needs only the sender's server as state key,
        // no power; from v6 it is ordinary state (Bob lacks `state_default`).
        let (status, body) = s
            .put(
                &format!("{V3}/rooms/{room}/state/m.room.aliases/localhost"),
                Some(&bob.token),
                json!({"aliases": ["#b:localhost"]}),
            )
            .await;
        let expected = if version == "6" { StatusCode::FORBIDDEN } else { StatusCode::OK };
        assert_eq!(status, expected, "v{version}: {body}");
        expect_error(
            s.put(
                &format!("{V3}/rooms/{room}/state/m.room.aliases/elsewhere.org"),
                Some(&bob.token),
                json!({"aliases": []}),
            )
            .await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }

    // Knocking arrived in v7: the join rule can be set earlier, but nobody can knock.
    let room = create_room(
        &s,
        &alice,
        json!({"room_version": "5", "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    expect_error(
        post(&s, &bob, &format!("/knock/{room}"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let state = state_map(&s, &alice, &room).await;
    assert!(!state.contains_key(&format!("m.room.member|{}", bob.user_id)), "{state:?}");
}

#[tokio::test]
async fn local_events_use_canonical_json_and_integer_power_levels_in_every_version() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    for version in ["1", "3", "5", "9", "12"] {
        let room = create_room(&s, &alice, json!({"room_version": version})).await;
        let levels = format!("{V3}/rooms/{room}/state/m.room.power_levels/");
        let (_, mut content) = s.get(&levels, Some(&alice.token)).await;
        // The v1–v9 auth rules would take a level written as a string; local users may not
        // send one, as in Synapse.
        content["ban"] = json!("50");
        let refused = expect_error(
            s.put(&levels, Some(&alice.token), content.clone()).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
        assert!(refused["error"].as_str().unwrap().contains("ban"), "{refused}");
        content["ban"] = json!(60);
        content["users"]["@bob:localhost"] = json!("10");
        expect_error(
            s.put(&levels, Some(&alice.token), content.clone()).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
        content["users"]["@bob:localhost"] = json!(10);
        assert_eq!(s.put(&levels, Some(&alice.token), content).await.0, StatusCode::OK);
        let (_, stored) = s.get(&levels, Some(&alice.token)).await;
        assert_eq!((&stored["ban"], &stored["users"]["@bob:localhost"]), (&json!(60), &json!(10)));

        // Content that canonical JSON cannot hold (a float) is refused, and nothing is kept
        // under the transaction.
        let float = json!({"msgtype": "m.text", "body": "half", "value": 0.5});
        let txn = format!("f{version}");
        expect_error(send(&s, &alice, &room, &txn, float).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
        let fixed = send_text(&s, &alice, &room, &txn, "no float").await;
        assert_event_id_format(version, &fixed);
    }
}

#[tokio::test]
async fn old_versions_upgrade_to_the_default() {
    for version in ["1", "3", "4", "5"] {
        let s = TestServer::start().await;
        let alice = s.register("alice", "pw-alice-123").await;
        let bob = s.register("bob", "pw-bob-12345").await;
        let old = create_room(
            &s,
            &alice,
            json!({"room_version": version, "preset": "public_chat", "name": "Old", "room_alias_name": "old"}),
        )
        .await;
        assert_eq!(join(&s, &bob, &old).await.0, StatusCode::OK);
        let last = send_text(&s, &bob, &old, "1", "before").await;

        let (status, body) =
            post(&s, &alice, &format!("/rooms/{old}/upgrade"), json!({"new_version": "12"})).await;
        assert_eq!(status, StatusCode::OK, "v{version}: {body}");
        let new = body["replacement_room"].as_str().unwrap().to_owned();
        assert!(!new.contains(':'), "a v12 room ID: {new}");

        let state = state_map(&s, &alice, &new).await;
        let create = &state["m.room.create|"];
        // v12 predecessors name the room only; the creator holds power without a listing.
        assert_eq!(create["content"], json!({"room_version": "12", "predecessor": {"room_id": old}}));
        assert_eq!(state["m.room.name|"]["content"]["name"], "Old");
        assert_eq!(state["m.room.join_rules|"]["content"]["join_rule"], "public");
        assert_eq!(state["m.room.power_levels|"]["content"]["users"], json!({}), "v{version}");
        assert_eq!(state["m.room.canonical_alias|"]["content"]["alias"], "#old:localhost");
        assert_event_id_format("12", create["event_id"].as_str().unwrap());

        let old_state = state_map(&s, &alice, &old).await;
        let tombstone = &old_state["m.room.tombstone|"];
        assert_eq!(tombstone["content"]["replacement_room"], new);
        assert_event_id_format(version, tombstone["event_id"].as_str().unwrap());
        assert_eq!(old_state["m.room.power_levels|"]["content"]["events_default"], 50);
        // Bob follows; the old room's history stays readable.
        assert_eq!(join(&s, &bob, &new).await.0, StatusCode::OK);
        assert_eq!(event(&s, &bob, &old, &last).await["content"]["body"], "before");
        expect_error(
            send(&s, &bob, &old, "2", json!({"body": "late"})).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
}
