//! Joining a room of another server, as the joining server: the join asks the resident to
//! leave the members out of its answer, is answered once the resident has accepted it, and
//! the room is seated after that with the state before the join fetched from the resident.
//! Reads, sends and syncs of the joining user wait for the room. A join whose state cannot
//! be had stays pending, and is seated when the server starts again. With several processes
//! on one database, the room is seated before the join is answered: the joiner's next
//! request may reach another process.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    fake_peer::{FakePeer, answer},
    federation_rooms::{TwoServers, encode, two_servers},
    harness::{Pki, Session, TestServer, expect_error, start_federating_sharing_pair},
    rooms::{V3, create_room, send_text},
};

/// Joined members on `server` as `who` sees them, sorted.
async fn joined_members(server: &TestServer, token: &str, room: &str) -> (StatusCode, Vec<String>, Value) {
    let (status, body) =
        server.get(&format!("{V3}/rooms/{}/joined_members", encode(room)), Some(token)).await;
    let mut members: Vec<String> =
        body["joined"].as_object().map(|joined| joined.keys().cloned().collect()).unwrap_or_default();
    members.sort();
    (status, members, body)
}

#[tokio::test]
async fn a_remote_join_answers_before_the_member_list_and_the_joiner_reads_it_whole_at_once() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat", "name": "Crowd"})).await;
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone()];
    for name in ["carol", "dave", "erin"] {
        let user = a.register(name, &format!("pw-{name}-12345")).await;
        let (status, body) =
            a.post(&format!("{V3}/rooms/{}/join", encode(&room)), Some(&user.token), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        expected.push(user.user_id);
    }
    expected.sort();

    let (status, joined) = b
        .post(
            &format!("{V3}/join/{}?server_name={}", encode(&room), encode(&a.name())),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    // At once, without waiting: the members (none were in the join's answer), a sync, a send.
    let (status, members, body) = joined_members(&b, &bob.token, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(members, expected, "{body}");
    let (status, synced) = b.get(&format!("{V3}/sync"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{synced}");
    let summary = &synced["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], json!(5), "{synced}");
    send_text(&b, &bob, &room, "t1", "hello everyone").await;
}

/// A room of the fake peer, version 11: its creator, a second member, public.
struct PeerRoom {
    id: String,
    /// create, creator's join, power levels, join rules: what a join's auth needs.
    auth: Vec<(Value, String)>,
    /// The second member's join, the room's last event.
    member: (Value, String),
}

fn peer_room(peer: &FakePeer) -> PeerRoom {
    let id = format!("!hall:{}", peer.name);
    let creator = peer.user("creator");
    let member = peer.user("member");
    let v11 = ruma::RoomVersionId::V11;
    let mut depth = 0;
    let mut last: Vec<String> = Vec::new();
    let mut auth_ids: Vec<String> = Vec::new();
    let mut event = |kind: &str, sender: &str, key: &str, content: Value, auth: &[String]| {
        depth += 1;
        let (event, event_id) = peer.sign_event(
            json!({
                "type": kind, "state_key": key, "sender": sender, "room_id": id, "content": content,
                "prev_events": last, "auth_events": auth, "depth": depth,
                "origin_server_ts": 1_700_000_000_000_u64 + depth,
            }),
            &v11,
        );
        last = vec![event_id.clone()];
        (event, event_id)
    };
    let create = event("m.room.create", &creator, "", json!({"room_version": "11"}), &[]);
    auth_ids.push(create.1.clone());
    let joined = event("m.room.member", &creator, &creator, json!({"membership": "join"}), &auth_ids);
    auth_ids.push(joined.1.clone());
    let levels =
        event("m.room.power_levels", &creator, "", json!({"users": {creator.clone(): 100}}), &auth_ids);
    auth_ids.push(levels.1.clone());
    let rules = event("m.room.join_rules", &creator, "", json!({"join_rule": "public"}), &auth_ids);
    let member_auth = vec![create.1.clone(), levels.1.clone(), rules.1.clone()];
    let member_join = event("m.room.member", &member, &member, json!({"membership": "join"}), &member_auth);
    PeerRoom { id, auth: vec![create, joined, levels, rules], member: member_join }
}

/// A resident the test scripts: the fake peer's room (built once its name is known), joins
/// answered with the members left out, `/state` refused until `state_allowed`, leaves taken.
struct ScriptedResident {
    peer: FakePeer,
    room_id: String,
    state_allowed: Arc<AtomicBool>,
    joiner: Arc<OnceLock<String>>,
}

async fn scripted_resident(pki: &Pki) -> ScriptedResident {
    let room_slot: Arc<OnceLock<PeerRoom>> = Arc::new(OnceLock::new());
    let joiner_slot: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let state_allowed = Arc::new(AtomicBool::new(false));
    let (slot, joiner, allowed) =
        (Arc::clone(&room_slot), Arc::clone(&joiner_slot), Arc::clone(&state_allowed));
    let peer = FakePeer::start(pki, move |_, path, _| {
        let (slot, joiner, allowed) = (Arc::clone(&slot), Arc::clone(&joiner), Arc::clone(&allowed));
        async move {
            let (Some(room), Some(user)) = (slot.get(), joiner.get()) else {
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"errcode": "M_UNKNOWN", "error": "not yet"}),
                );
            };
            let events = |list: &[(Value, String)]| list.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>();
            let template = |membership: &str| {
                let auth: Vec<&String> = [0, 2, 3].iter().map(|i| &room.auth[*i].1).collect();
                json!({"room_version": "11", "event": {
                    "type": "m.room.member", "state_key": user, "sender": user, "room_id": room.id,
                    "content": {"membership": membership}, "prev_events": [room.member.1],
                    "auth_events": auth, "depth": 6, "origin_server_ts": 1_700_000_000_100_u64,
                }})
            };
            if path.starts_with("/_matrix/federation/v1/make_join/") {
                return answer(StatusCode::OK, template("join"));
            }
            if path.starts_with("/_matrix/federation/v1/make_leave/") {
                return answer(StatusCode::OK, template("leave"));
            }
            if path.starts_with("/_matrix/federation/v2/send_leave/") {
                return answer(StatusCode::OK, json!({}));
            }
            if path.starts_with("/_matrix/federation/v2/send_join/") {
                assert!(path.ends_with("?omit_members=true"), "{path}");
                return answer(
                    StatusCode::OK,
                    json!({"state": events(&room.auth), "auth_chain": events(&room.auth),
                           "members_omitted": true, "servers_in_room": []}),
                );
            }
            if path.starts_with("/_matrix/federation/v1/state/") {
                if !allowed.load(Ordering::SeqCst) {
                    return answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"errcode": "M_UNKNOWN", "error": "busy"}),
                    );
                }
                let mut state = events(&room.auth);
                state.push(room.member.0.clone());
                return answer(StatusCode::OK, json!({"pdus": state, "auth_chain": events(&room.auth)}));
            }
            answer(StatusCode::NOT_FOUND, json!({"errcode": "M_UNRECOGNIZED", "error": "not here"}))
        }
    })
    .await;
    let room_id = room_slot.get_or_init(|| peer_room(&peer)).id.clone();
    ScriptedResident { peer, room_id, state_allowed, joiner: joiner_slot }
}

/// A scripted resident, and a server `b` whose user Bob joined the resident's room: the
/// join answered, though the room's state was refused.
struct Unseated {
    _pki: Pki,
    resident: ScriptedResident,
    b: TestServer,
    bob: Session,
}

async fn joined_unseated() -> Unseated {
    let pki = Pki::new();
    let resident = scripted_resident(&pki).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let bob = b.register("bob", "pw-bob-12345").await;
    resident.joiner.set(bob.user_id.clone()).unwrap();
    let (status, joined) = b
        .post(
            &format!("{V3}/join/{}?server_name={}", encode(&resident.room_id), encode(&resident.peer.name)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(resident.peer.count("/_matrix/federation/v1/state/"), 1, "{:?}", resident.peer.requests());
    // Not seated: no member list, no room in sync.
    expect_error(
        b.get(&format!("{V3}/rooms/{}/joined_members", encode(&resident.room_id)), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (_, synced) = b.get(&format!("{V3}/sync"), Some(&bob.token)).await;
    assert!(synced["rooms"]["join"].get(&resident.room_id).is_none(), "{synced}");
    assert!(pending(&b, &bob.user_id, &resident.room_id), "the join is not kept as pending");
    Unseated { _pki: pki, resident, b, bob }
}

/// Whether the server keeps `user`'s join of `room` as pending.
fn pending(server: &TestServer, user: &str, room: &str) -> bool {
    let (user, room) = (ruma::UserId::parse(user).unwrap(), ruma::RoomId::parse(room).unwrap());
    server.services.room_federation.has_pending_join(&user, &room).unwrap()
}

#[tokio::test]
async fn a_join_whose_state_could_not_be_had_is_seated_when_the_server_starts_again() {
    let Unseated { _pki, resident, b, bob } = joined_unseated().await;
    let (peer, room_id) = (&resident.peer, resident.room_id.clone());

    // The peer answers again; the server starts again and seats the room it was joining.
    resident.state_allowed.store(true, Ordering::SeqCst);
    let b = b.restart_as_before().await;
    let mut seated = Vec::new();
    for _ in 0..200 {
        let (status, members, _) = joined_members(&b, &bob.token, &room_id).await;
        if status == StatusCode::OK {
            seated = members;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut expected = vec![bob.user_id.clone(), peer.user("creator"), peer.user("member")];
    expected.sort();
    assert_eq!(seated, expected, "{:?}", peer.requests());
    assert_eq!(peer.count("/_matrix/federation/v1/state/"), 2, "{:?}", peer.requests());
    let (_, synced) = b.get(&format!("{V3}/sync"), Some(&bob.token)).await;
    assert_eq!(synced["rooms"]["join"][&room_id]["summary"]["m.joined_member_count"], json!(3), "{synced}");
}

#[tokio::test]
async fn leaving_a_room_that_was_never_seated_leaves_through_the_resident() {
    let Unseated { _pki, resident, b, bob } = joined_unseated().await;
    let (peer, room_id) = (&resident.peer, resident.room_id.clone());

    let (status, body) =
        b.post(&format!("{V3}/rooms/{}/leave", encode(&room_id)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(peer.count("/_matrix/federation/v2/send_leave/"), 1, "{:?}", peer.requests());
    // Nothing left to seat.
    assert!(!pending(&b, &bob.user_id, &room_id), "the join is still pending after the leave");
    // A second leave finds nothing to leave.
    expect_error(
        b.post(&format!("{V3}/rooms/{}/leave", encode(&room_id)), Some(&bob.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_several_processes_a_remote_join_is_seated_before_the_answer_for_the_other_process() {
    let pki = Pki::new();
    let resident = TestServer::start_federating(&pki, |_| {}).await;
    let (a, b) = start_federating_sharing_pair(&pki).await;
    let alice = resident.register("alice", "pw-alice-123").await;
    let room = create_room(&resident, &alice, json!({"preset": "public_chat", "name": "Far away"})).await;
    let carol = resident.register("carol", "pw-carol-123").await;
    let (status, body) =
        resident.post(&format!("{V3}/rooms/{}/join", encode(&room)), Some(&carol.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Bob joins through the second process (the resident leaves the members out of its
    // answer); his very next requests go to the first, which never saw the join made.
    let bob = a.register("bob", "pw-bob-12345").await;
    let path = format!("{V3}/join/{}?server_name={}", encode(&room), encode(&resident.name()));
    let (status, body) = b.post(&path, Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, members, body) = joined_members(&a, &bob.token, &room).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut expected = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    expected.sort();
    assert_eq!(members, expected);
    let (status, name) =
        a.get(&format!("{V3}/rooms/{}/state/m.room.name", encode(&room)), Some(&bob.token)).await;
    assert_eq!((status, &name["name"]), (StatusCode::OK, &json!("Far away")), "{name}");
    let synced = crate::sync::sync(&a, &bob, "timeout=0").await;
    assert!(synced["rooms"]["join"][&room].is_object(), "{synced}");
    send_text(&a, &bob, &room, "t1", "from the other process").await;
}
