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
/// his rooms no longer list it, and his sync shows the room left. An event of Dave's on his own fork then passes against
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
    let dave_since = sync(&s, &dave, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();

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
    // Dave's sync tells his client he is out: the room is under `leave`, with the join rule
    // that reset his membership in its state (the event itself sits on a fork from before
    // his join, which he may not see in the timeline).
    let body = sync(&s, &dave, &format!("since={dave_since}&timeout=0")).await;
    assert!(body["rooms"]["join"][&room].is_null(), "{body}");
    let left = &body["rooms"]["leave"][&room];
    let shown: Vec<Value> = list(&left["state"]["events"])
        .into_iter()
        .chain(list(&left["timeline"]["events"]))
        .map(|e| e["event_id"].clone())
        .collect();
    assert!(shown.contains(&json!(rule.event.pdu.event_id)), "{body}");

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

/// The event IDs of a `/messages` page.
fn chunk_ids(body: &Value) -> Vec<String> {
    list(&body["chunk"]).iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

/// Every `/messages` page of a room from `from` in `dir`, `limit` at a time, as event IDs.
async fn page_through(s: &TestServer, who: &Session, room: &str, dir: &str, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..50 {
        let query = match &from {
            Some(token) => format!("dir={dir}&limit={limit}&from={token}"),
            None => format!("dir={dir}&limit={limit}"),
        };
        let (status, body) = s.get(&format!("{V3}/rooms/{room}/messages?{query}"), Some(&who.token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = chunk_ids(&body);
        let done = page.is_empty() || body["end"].is_null();
        ids.extend(page);
        if done {
            return ids;
        }
        from = Some(body["end"].as_str().unwrap().to_owned());
    }
    panic!("paging did not end: {ids:?}");
}

/// An event of Alice's built on the room's graph with `auth_events` picked by the caller (as
/// another server may cite them), signed with a key of the test's.
fn build_with_auth(
    s: &TestServer,
    room: &RoomId,
    sender: &str,
    template: &conduit::matrix::pdu::EventTemplate,
    prev: &[OwnedEventId],
    auth: Vec<OwnedEventId>,
) -> conduit::matrix::pdu::Pdu {
    let version = s.services.room_states.room(room).unwrap().unwrap().version;
    let rules = conduit::matrix::room_version::rules(&version).unwrap();
    let depth = prev
        .iter()
        .map(|id| u64::from(s.services.events.get(id).unwrap().unwrap().pdu.depth))
        .max()
        .unwrap_or(0)
        + 1;
    let key =
        ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), "t".into())
            .unwrap();
    let user = UserId::parse(sender).unwrap();
    conduit::matrix::pdu::build_pdu(
        &rules,
        user.server_name(),
        &key,
        &user,
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(s.clock.now_ms())),
        template,
        conduit::matrix::pdu::GraphPosition {
            room_id: Some(room),
            event_id: None,
            prev_events: prev.to_vec(),
            auth_events: auth,
            reference_hashes: Default::default(),
            depth: UInt::new_saturating(depth),
        },
    )
    .unwrap()
}

/// An event known only as another event's auth event is stored as an outlier: no stream
/// position, not in `/messages`, `/event` or sync, no part of the state. An event citing it
/// as an auth event (Alice's membership as another server saw it) passes its auth checks.
/// Accepted later into the graph, the outlier becomes a normal event in place: a stream
/// position, shown in the history once, and (as the later of Alice's two member events on
/// the two forks) her membership in the resolved state.
#[tokio::test]
async fn an_outlier_is_stored_apart_and_accepted_in_place() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "password-alice").await;
    let bob = s.register("bob", "password-bob").await;
    let room = create_room(&s, &alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let room_id = RoomId::parse(&room).unwrap();
    let head = extremities(&s, &room);
    let since = sync(&s, &bob, "timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // Alice's member event with a new display name, on a branch this server has not seen.
    s.clock.advance_ms(1_000);
    let timeline = Arc::clone(&s.services.timeline);
    let lock = timeline.lock_room(&room_id).await;
    let ts = MilliSecondsSinceUnixEpoch(UInt::new_saturating(s.clock.now_ms()));
    let member = state(
        "m.room.member",
        &alice.user_id,
        json!({ "membership": "join", "displayname": "Alice elsewhere" }),
    );
    let outlier_pdu =
        timeline.build_at(&lock, &UserId::parse(&alice.user_id).unwrap(), &member, &head, ts).unwrap();
    let outlier_id = outlier_pdu.event_id.clone();
    let stored = timeline.store_outlier(&lock, outlier_pdu.clone()).unwrap();
    assert_eq!(stored.status, EventStatus::Outlier, "{:?}", stored.reason);
    assert_eq!(stored.event.stream, 0);
    // Stored again: answered as it was.
    assert_eq!(timeline.store_outlier(&lock, outlier_pdu.clone()).unwrap().status, EventStatus::Outlier);
    drop(lock);

    let (status, _) = s.get(&format!("{V3}/rooms/{room}/event/{outlier_id}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!chunk_ids(&body).contains(&outlier_id.to_string()), "{body}");
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.member/{}", alice.user_id), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(body["displayname"], json!("Alice elsewhere"), "{body}");
    assert_eq!(extremities(&s, &room), head);

    // A topic change citing the outlier as Alice's membership: its auth events are found.
    let current = s.services.room_states.current_state(&room_id).unwrap();
    // Alice's topic needs the power levels, her membership and (before v12, where the room
    // ID names it) the create event.
    let version = s.services.room_states.room(&room_id).unwrap().unwrap().version;
    let mut keys = vec![("m.room.power_levels", "")];
    if !conduit::matrix::room_version::rules(&version).unwrap().authorization.room_create_event_id_as_room_id
    {
        keys.push(("m.room.create", ""));
    }
    let mut auth: Vec<OwnedEventId> = keys
        .iter()
        .filter_map(|(kind, key)| current.get(&((*kind).into(), (*key).to_owned())).cloned())
        .collect();
    auth.push(outlier_id.clone());
    let topic = state("m.room.topic", "", json!({ "topic": "cites an outlier" }));
    let topic_pdu = build_with_auth(&s, &room_id, &alice.user_id, &topic, &head, auth);
    let lock = timeline.lock_room(&room_id).await;
    let accepted = timeline.accept_event(&lock, topic_pdu).await.unwrap();
    assert_eq!(accepted.status, EventStatus::Accepted, "{:?}", accepted.reason);
    drop(lock);
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&bob.token)).await;
    assert_eq!((status, body["topic"].as_str()), (StatusCode::OK, Some("cites an outlier")));

    // The outlier accepted into the graph after all: a normal event, stored once.
    let lock = timeline.lock_room(&room_id).await;
    let outcome = timeline.accept_event(&lock, outlier_pdu).await.unwrap();
    drop(lock);
    assert_eq!(outcome.status, EventStatus::Accepted, "{:?}", outcome.reason);
    let stored = s.services.events.get_any(&outlier_id).unwrap().unwrap();
    assert_eq!(stored.status, EventStatus::Accepted);
    assert!(stored.stream > 0);
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/event/{outlier_id}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let history = page_through(&s, &bob, &room, "b", 5).await;
    assert_eq!(history.iter().filter(|id| id.as_str() == outlier_id.as_str()).count(), 1, "{history:?}");
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.member/{}", alice.user_id), Some(&bob.token)).await;
    assert_eq!((status, body["displayname"].as_str()), (StatusCode::OK, Some("Alice elsewhere")), "{body}");
    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let timeline_ids: Vec<Value> = list(&body["rooms"]["join"][&room]["timeline"]["events"])
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    assert!(timeline_ids.contains(&json!(outlier_id)), "{body}");

    // After a restart it is read back as it was written.
    drop(timeline);
    let s = s.restart().await;
    let stored = s.services.events.get_any(&outlier_id).unwrap().unwrap();
    assert_eq!((stored.status, stored.stream > 0), (EventStatus::Accepted, true));
}

/// The auth chain index equals the transitive closure of `auth_events` for every event of a
/// room whose power levels and join rules changed, on forks too, whether worked out fresh,
/// kept in memory or read from the table after a restart; and the resolution it feeds
/// still makes the forks' outcome visible to clients.
#[tokio::test]
async fn auth_chains_are_the_transitive_closure() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "password-alice").await;
    let bob = s.register("bob", "password-bob").await;
    let carol = s.register("carol", "password-carol").await;
    let room = create_room(&s, &alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    // From v12 the creator's power is the room's own, never listed.
    let levels = |bob_level: i64| json!({ "users": { &bob.user_id: bob_level }, "users_default": 0 });
    set_state(&s, &alice, &room, "m.room.power_levels", levels(50)).await;
    let parent = set_state(&s, &bob, &room, "m.room.topic", json!({ "topic": "by bob" })).await;
    set_state(&s, &alice, &room, "m.room.power_levels", levels(60)).await;
    // On a fork from the topic: the join rule becomes invite-only, and Bob's level changes.
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
    let fork_levels = on_fork(
        &s,
        &room,
        &alice.user_id,
        state("m.room.power_levels", "", levels(40)),
        std::slice::from_ref(&rule.event.pdu.event_id),
    )
    .await;
    assert_eq!(fork_levels.status, EventStatus::Accepted, "{:?}", fork_levels.reason);
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.join_rules/"), Some(&bob.token)).await;
    assert_eq!((status, body["join_rule"].as_str()), (StatusCode::OK, Some("invite")));
    // The room is invite-only now: Carol cannot join.
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::FORBIDDEN);
    set_state(&s, &alice, &room, "m.room.name", json!({ "name": "after the merge" })).await;

    let check = |s: &TestServer| {
        let room_id = RoomId::parse(&room).unwrap();
        // Every event of the room and of its auth chains, loaded.
        let mut loaded: std::collections::HashMap<OwnedEventId, conduit::matrix::pdu::Pdu> =
            Default::default();
        let mut todo: Vec<OwnedEventId> = s
            .services
            .events
            .room_events(&room_id, None, conduit::storage::Direction::Forward, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.pdu.event_id.clone())
            .collect();
        let timeline_ids = todo.clone();
        while let Some(id) = todo.pop() {
            if loaded.contains_key(&id) {
                continue;
            }
            let event = s.services.events.get_any(&id).unwrap().unwrap();
            todo.extend(event.pdu.auth_events.iter().cloned());
            loaded.insert(id, event.pdu.clone());
        }
        assert!(timeline_ids.len() >= 10, "{timeline_ids:?}");
        for id in &timeline_ids {
            let expected = conduit::matrix::state_resolution::auth_chain([&**id], |e| loaded.get(e));
            let mut expected: Vec<OwnedEventId> = expected.into_iter().collect();
            expected.sort();
            assert_eq!(s.services.timeline.auth_chain(std::slice::from_ref(id)).unwrap(), expected, "{id}");
        }
        // Several events at once: the union.
        let mut expected: Vec<OwnedEventId> =
            conduit::matrix::state_resolution::auth_chain(timeline_ids.iter().map(|id| &**id), |e| {
                loaded.get(e)
            })
            .into_iter()
            .collect();
        expected.sort();
        assert_eq!(s.services.timeline.auth_chain(&timeline_ids).unwrap(), expected);
        // The fork's power levels cite the join rule's chain through Alice's membership and
        // the power levels before it.
        let chain =
            s.services.timeline.auth_chain(std::slice::from_ref(&fork_levels.event.pdu.event_id)).unwrap();
        assert!(chain.len() >= 3, "{chain:?}");
    };
    check(&s);
    // Twice: now from memory.
    check(&s);
    let s = s.restart().await;
    check(&s);
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/state/m.room.name/"), Some(&bob.token)).await;
    assert_eq!((status, body["name"].as_str()), (StatusCode::OK, Some("after the merge")));
}

/// A room run by another server, `remote.test`, built here as that server's signed events: Rita
/// created it, joined, set power levels and a public join rule, and wrote four messages;
/// Alice, a local user, joined after all that. This is what a federated join leaves a server
/// with: the room's state as outliers (from `send_join`), Alice's join as the room's first
/// event here, and no history before it. Paging back then fetches the history with
/// `/backfill`, newest first, each event with the state before it: the backfilled events
/// sort below the join, `/messages` reaches them after it (backwards and forwards, across
/// page boundaries, and after a restart), sync does not announce them as new, the state
/// events among them (outliers until then) are stored once, and an event that fails the auth
/// rules against its state is stored rejected and shown nowhere.
#[tokio::test]
async fn backfilled_history_sorts_before_a_late_join() {
    use conduit::matrix::pdu::{EventTemplate, GraphPosition, Pdu, build_pdu};
    use ruma::{RoomVersionId, ServerName, events::StateEventType};

    let s = TestServer::start().await;
    let alice = s.register("alice", "password-alice").await;
    let version = RoomVersionId::V12;
    let rules = conduit::matrix::room_version::rules(&version).unwrap();
    let key =
        ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), "r".into())
            .unwrap();
    let rita = "@rita:remote.test";

    // The remote server's room, event by event, with the state after each.
    type State = std::collections::BTreeMap<(StateEventType, String), OwnedEventId>;
    let mut events: Vec<(Pdu, State)> = Vec::new();
    let mut current = State::new();
    let mut ts = 1_000_000u64;
    let mut build = |sender: &str, template: EventTemplate, events: &mut Vec<(Pdu, State)>| {
        ts += 1;
        let user = UserId::parse(sender).unwrap();
        let content = serde_json::value::to_raw_value(&template.content).unwrap();
        let keys = conduit::matrix::auth::auth_event_keys(
            &rules.authorization,
            &template.kind,
            &user,
            template.state_key.as_deref(),
            &content,
        )
        .unwrap();
        let auth_events = keys.iter().filter_map(|k| current.get(k).cloned()).collect();
        let (room_id, prev_events, depth) = match events.last() {
            Some((last, _)) => {
                (Some(last.room_id.clone()), vec![last.event_id.clone()], u64::from(last.depth) + 1)
            }
            None => (None, vec![], 1),
        };
        let pdu = build_pdu(
            &rules,
            ServerName::parse(user.server_name().as_str()).unwrap().as_ref(),
            &key,
            &user,
            MilliSecondsSinceUnixEpoch(UInt::new_saturating(ts)),
            &template,
            GraphPosition {
                room_id: room_id.as_deref(),
                event_id: None,
                prev_events,
                auth_events,
                reference_hashes: Default::default(),
                depth: UInt::new_saturating(depth),
            },
        )
        .unwrap();
        let before = current.clone();
        if let Some(state_key) = &pdu.state_key {
            current.insert((pdu.kind.to_string().into(), state_key.clone()), pdu.event_id.clone());
        }
        events.push((pdu, before));
    };
    build(rita, state("m.room.create", "", json!({ "room_version": "12" })), &mut events);
    build(rita, state("m.room.member", rita, json!({ "membership": "join" })), &mut events);
    build(rita, state("m.room.power_levels", "", json!({ "users_default": 0 })), &mut events);
    build(rita, state("m.room.join_rules", "", json!({ "join_rule": "public" })), &mut events);
    for i in 1..=4 {
        let body = json!({ "msgtype": "m.text", "body": format!("before alice {i}") });
        build(rita, EventTemplate::message("m.room.message", body), &mut events);
    }
    build(
        &alice.user_id,
        state("m.room.member", &alice.user_id, json!({ "membership": "join" })),
        &mut events,
    );
    let room_id = events[0].0.room_id.clone();
    let room = room_id.to_string();
    let (join_pdu, join_state) = events.pop().unwrap();

    // The join: the state before it as outliers (oldest first), then the join itself.
    let timeline = Arc::clone(&s.services.timeline);
    let lock = timeline.lock_room(&room_id).await;
    for (pdu, _) in &events[..4] {
        let outcome = timeline.store_outlier(&lock, pdu.clone()).unwrap();
        assert_eq!(outcome.status, EventStatus::Outlier, "{:?}", outcome.reason);
    }
    let join_state: conduit::service::rooms::state::StateMap = join_state.into_iter().collect();
    let first = timeline.accept_first_event(&lock, &version, join_pdu.clone(), &join_state).await.unwrap();
    assert_eq!(first.status, EventStatus::Accepted, "{:?}", first.reason);
    drop(lock);

    // Alice sees the room, its state and members, and only her join in its history.
    let body = sync(&s, &alice, "timeout=0").await;
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let joined_room = &body["rooms"]["join"][&room];
    let timeline_ids: Vec<Value> =
        list(&joined_room["timeline"]["events"]).iter().map(|e| e["event_id"].clone()).collect();
    assert_eq!(timeline_ids, vec![json!(join_pdu.event_id)], "{joined_room}");
    assert_eq!(joined(&s, &alice, &room).await, vec![alice.user_id.clone(), rita.to_owned()]);
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/m.room.join_rules/"), Some(&alice.token)).await;
    assert_eq!((status, body["join_rule"].as_str()), (StatusCode::OK, Some("public")));
    assert_eq!(page_through(&s, &alice, &room, "b", 3).await, vec![join_pdu.event_id.to_string()]);

    // Backfill, newest first, each with the state before it; one forged event among them
    // (Mallory never joined) is rejected.
    let lock = timeline.lock_room(&room_id).await;
    let forged = {
        let mut forged_events = vec![events[3].clone()];
        let body = json!({ "msgtype": "m.text", "body": "forged" });
        build("@mallory:remote.test", EventTemplate::message("m.room.message", body), &mut forged_events);
        forged_events.pop().unwrap()
    };
    let outcome = timeline.backfill_event(&lock, forged.0.clone(), &forged.1.into_iter().collect()).unwrap();
    assert_eq!(outcome.status, EventStatus::Rejected);
    for (pdu, before) in events.iter().rev() {
        let outcome =
            timeline.backfill_event(&lock, pdu.clone(), &before.clone().into_iter().collect()).unwrap();
        assert_eq!(outcome.status, EventStatus::Accepted, "{:?}", outcome.reason);
        assert_eq!((outcome.event.stream, outcome.event.backfill.is_some()), (0, true));
    }
    drop(lock);
    let rita_join = &events[1].0.event_id;
    let stored = s.services.events.get_any(rita_join).unwrap().unwrap();
    assert_eq!((stored.status, stored.stream, stored.backfill.is_some()), (EventStatus::Accepted, 0, true));

    // Nothing new for sync, and no notification: Rita's messages in a room of two would
    // notify Alice if they were live.
    let body = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert!(list(&body["rooms"]["join"][&room]["timeline"]["events"]).is_empty(), "{body}");
    let (status, body) = s.get(&format!("{V3}/notifications"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(list(&body["notifications"]).is_empty(), "{body}");

    // The whole history, backwards then forwards, in pages that cross from the stream into
    // the backfilled positions.
    let mut expected: Vec<String> = vec![join_pdu.event_id.to_string()];
    expected.extend(events.iter().rev().map(|(pdu, _)| pdu.event_id.to_string()));
    for limit in [1, 3, 4, 20] {
        assert_eq!(page_through(&s, &alice, &room, "b", limit).await, expected, "limit {limit}");
    }
    let forwards: Vec<String> = expected.iter().rev().cloned().collect();
    assert_eq!(page_through(&s, &alice, &room, "f", 4).await, forwards);
    assert!(!expected.contains(&forged.0.event_id.to_string()));

    // `/context` around a backfilled message reaches both ways.
    let middle = &events[5].0.event_id;
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/context/{middle}?limit=2"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["events_before"][0]["event_id"], json!(events[4].0.event_id), "{body}");
    assert_eq!(body["events_after"][0]["event_id"], json!(events[6].0.event_id), "{body}");

    drop(timeline);
    let s = s.restart().await;
    assert_eq!(page_through(&s, &alice, &room, "b", 4).await, expected);
}

/// An event accepted on a fork is live: push rules are evaluated for it (Bob is notified of
/// Alice's message, in their room of two), and a redaction that arrives on a fork takes
/// effect on its target, which clients then see redacted.
#[tokio::test]
async fn a_live_event_on_a_fork_notifies_and_redacts() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "password-alice").await;
    let bob = s.register("bob", "password-bob").await;
    let room = create_room(&s, &alice, json!({ "preset": "public_chat" })).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let parent = set_state(&s, &alice, &room, "m.room.topic", json!({ "topic": "parent" })).await;
    let message = send_text(&s, &alice, &room, "t1", "to be redacted").await;
    let message = OwnedEventId::try_from(message.as_str()).unwrap();

    s.clock.advance_ms(1_000);
    let ping = conduit::matrix::pdu::EventTemplate::message(
        "m.room.message",
        json!({ "msgtype": "m.text", "body": "ping from a fork" }),
    );
    let ping = on_fork(&s, &room, &alice.user_id, ping, std::slice::from_ref(&parent)).await;
    assert_eq!(ping.status, EventStatus::Accepted, "{:?}", ping.reason);
    let (status, body) = s.get(&format!("{V3}/notifications"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let notified: Vec<Value> =
        list(&body["notifications"]).iter().map(|n| n["event"]["event_id"].clone()).collect();
    assert!(notified.contains(&json!(ping.event.pdu.event_id)), "{body}");

    let redaction = conduit::matrix::pdu::EventTemplate {
        kind: "m.room.redaction".into(),
        content: json!({ "reason": "from a fork" }),
        state_key: None,
        redacts: Some(message.clone()),
        origin_server_ts: None,
    };
    let redaction = on_fork(&s, &room, &alice.user_id, redaction, std::slice::from_ref(&parent)).await;
    assert_eq!(redaction.status, EventStatus::Accepted, "{:?}", redaction.reason);
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/event/{message}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["content"], json!({}), "{body}");
    assert_eq!(
        body["unsigned"]["redacted_because"]["event_id"],
        json!(redaction.event.pdu.event_id),
        "{body}"
    );
}
