//! The room engine on an event graph with forks: an event whose `prev_events` are not the
//! room's forward extremities (built by hand through the service layer, as federation will
//! hand them over) is persisted with the resolved state of its parents, and the room's head
//! moves to the resolution of the new extremities, as a delta to current state and
//! membership that clients then see over HTTP.

use std::sync::Arc;

use conduit::{service::clock::Clock, storage::tables::EventStatus};
use reqwest::StatusCode;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, UInt, UserId};
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer},
    rooms::{V3, create_room, join, send_text},
    sync::{list, sync},
};

async fn set_state(s: &TestServer, who: &Session, room: &str, kind: &str, content: Value) -> OwnedEventId {
    let (status, body) = s.put(&format!("{V3}/rooms/{room}/state/{kind}/"), Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    OwnedEventId::try_from(body["event_id"].as_str().unwrap()).unwrap()
}

/// Build `content` as `sender`'s state event at `prev` and hand it to the engine.
async fn on_fork(
    s: &TestServer,
    room: &str,
    sender: &str,
    template: conduit::matrix::pdu::EventTemplate,
    prev: &[OwnedEventId],
) -> conduit::service::rooms::timeline::Outcome {
    let room_id = RoomId::parse(room).unwrap();
    let timeline = Arc::clone(&s.services.timeline);
    let lock = timeline.lock_room(&room_id).await;
    let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(s.clock.now_ms()));
    let pdu = timeline.build_at(&lock, &UserId::parse(sender).unwrap(), &template, prev, ts).unwrap();
    timeline.accept_event(&lock, pdu).await.unwrap()
}

fn state(kind: &str, key: &str, content: Value) -> conduit::matrix::pdu::EventTemplate {
    conduit::matrix::pdu::EventTemplate::state(kind, key, content)
}

fn extremities(s: &TestServer, room: &str) -> Vec<OwnedEventId> {
    let room = s.services.room_states.room(&RoomId::parse(room).unwrap()).unwrap().unwrap();
    let mut ids = room.forward_extremities;
    ids.sort();
    ids
}

async fn joined(s: &TestServer, who: &Session, room: &str) -> Vec<String> {
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut users: Vec<String> = body["joined"].as_object().unwrap().keys().cloned().collect();
    users.sort();
    users
}

/// Two events sharing a parent, each changing a different key: the head is the union of
/// both forks, with two forward extremities that the next local send cites and closes.
#[tokio::test]
async fn a_fork_merges_into_the_head() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "password-alice").await;
    let bob = s.register("bob", "password-bob").await;
    let room = create_room(&s, &alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let parent = set_state(&s, &alice, &room, "m.room.topic", json!({ "topic": "parent" })).await;
    let since = sync(&s, &alice, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // The topic is conflicted (fork A changed it, fork B kept the parent's): by the mainline
    // ordering the later `origin_server_ts` wins, so fork A's is sent a second later.
    s.clock.advance_ms(1_000);
    let topic = set_state(&s, &alice, &room, "m.room.topic", json!({ "topic": "fork A" })).await;
    let name = on_fork(
        &s,
        &room,
        &alice.user_id,
        state("m.room.name", "", json!({ "name": "fork B" })),
        std::slice::from_ref(&parent),
    )
    .await;
    assert_eq!(name.status, EventStatus::Accepted, "{:?}", name.reason);
    let mut expected = vec![topic.clone(), name.event.pdu.event_id.clone()];
    expected.sort();
    assert_eq!(extremities(&s, &room), expected);

    // Current state holds both forks' changes; the members are unchanged.
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&alice.token)).await;
    assert_eq!((status, body["topic"].as_str()), (StatusCode::OK, Some("fork A")));
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/state/m.room.name/"), Some(&bob.token)).await;
    assert_eq!((status, body["name"].as_str()), (StatusCode::OK, Some("fork B")));
    let mut both = vec![alice.user_id.clone(), bob.user_id.clone()];
    both.sort();
    assert_eq!(joined(&s, &bob, &room).await, both);

    // Bob's incremental sync carries both events in the timeline.
    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let timeline: Vec<String> = list(&body["rooms"]["join"][&room]["timeline"]["events"])
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(timeline.contains(&topic.to_string()), "{timeline:?}");
    assert!(timeline.contains(&name.event.pdu.event_id.to_string()), "{timeline:?}");

    // The next local send cites both extremities and becomes the only one.
    let message = send_text(&s, &bob, &room, "t1", "after the merge").await;
    let stored = s.services.events.get(&OwnedEventId::try_from(message.as_str()).unwrap()).unwrap().unwrap();
    let mut prev = stored.pdu.prev_events.clone();
    prev.sort();
    assert_eq!(prev, expected);
    assert_eq!(extremities(&s, &room), vec![stored.pdu.event_id.clone()]);
}

/// Dave joins the public room; on a fork from before his join, Alice makes the room
/// invite-only. Resolution applies the join rule first and then rejects Dave's join against
/// it, so the head has no member event for Dave: he is removed from the members (the
/// membership index follows the resolved state, not the last event appended), cannot send,
/// and his rooms no longer list it. An event of Dave's on his own fork then passes against
/// the state before it but not the current state (soft-failed), and one from before his join
/// is rejected; neither is visible.
#[tokio::test]
async fn a_join_rule_change_on_a_fork_undoes_a_join() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "password-alice").await;
    let dave = s.register("dave", "password-dave").await;
    let room = create_room(&s, &alice, json!({ "preset": "public_chat" })).await;
    let parent = set_state(&s, &alice, &room, "m.room.topic", json!({ "topic": "before" })).await;
    let (status, body) = join(&s, &dave, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(joined(&s, &alice, &room).await.len(), 2);
    let dave_join = extremities(&s, &room).remove(0);
    let since = sync(&s, &alice, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // Both join rules (the room's first, and the fork's) are power events of the creator: the
    // reverse topological power ordering falls back to `origin_server_ts`, and the later one
    // is applied last. The clock moves so that the fork's is the later, as it would be.
    s.clock.advance_ms(1_000);
    let rule = on_fork(
        &s,
        &room,
        &alice.user_id,
        state("m.room.join_rules", "", json!({ "join_rule": "invite" })),
        std::slice::from_ref(&parent),
    )
    .await;
    assert_eq!(rule.status, EventStatus::Accepted, "{:?}", rule.reason);

    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.join_rules/"), Some(&alice.token)).await;
    assert_eq!((status, body["join_rule"].as_str()), (StatusCode::OK, Some("invite")));
    assert_eq!(joined(&s, &alice, &room).await, vec![alice.user_id.clone()]);
    let (status, _) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.member/{}", dave.user_id), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/d1"),
            Some(&dave.token),
            json!({ "msgtype": "m.text", "body": "hi" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = s.get(&format!("{V3}/joined_rooms"), Some(&dave.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!list(&body["joined_rooms"]).contains(&json!(room)), "{body}");

    // Alice's sync carries the join rule, and its state after the timeline (MSC4222) is the
    // resolved head.
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&use_state_after=true")).await;
    let joined_room = &body["rooms"]["join"][&room];
    let timeline = list(&joined_room["timeline"]["events"]);
    assert!(timeline.iter().any(|e| e["event_id"] == json!(rule.event.pdu.event_id)), "{joined_room}");

    // Dave's message on his own fork (where he is joined): soft-failed.
    let message = conduit::matrix::pdu::EventTemplate::message(
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "from my fork" }),
    );
    let soft = on_fork(&s, &room, &dave.user_id, message.clone(), std::slice::from_ref(&dave_join)).await;
    assert_eq!(soft.status, EventStatus::SoftFailed);
    // Before his join: rejected.
    let rejected = on_fork(&s, &room, &dave.user_id, message, std::slice::from_ref(&parent)).await;
    assert_eq!(rejected.status, EventStatus::Rejected);
    for id in [&soft.event.pdu.event_id, &rejected.event.pdu.event_id] {
        let (status, _) = s.get(&format!("{V3}/rooms/{room}/event/{id}"), Some(&alice.token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let mut expected = vec![dave_join, rule.event.pdu.event_id.clone()];
    expected.sort();
    assert_eq!(extremities(&s, &room), expected);

    // The head survives a restart (read from storage, not caches).
    let s = s.restart().await;
    assert_eq!(joined(&s, &alice, &room).await, vec![alice.user_id.clone()]);
}
