//! Two conduit servers cut off from each other while both sides keep talking (a network
//! partition, not a stop): each server's federation listener sits behind a TCP relay at
//! the address its name points to, and the test opens and closes the relays. While they
//! are closed, both servers' users send messages and change the room's state, so the room
//! forks; once the relays open again, the senders' retries (moved on each server's manual
//! clock) deliver the other side's fork, and both servers must end with every message and
//! the same state.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    federation_rooms::{encode, eventually, message_bodies},
    harness::{Pki, Relay, Session, TestServer, free_port},
    rooms::{V3, create_room, send_text},
};

/// A federating server whose name is `127.0.0.1:{relay port}` while its federation
/// listener is on another port, and the relay between them.
async fn server_behind_relay(pki: &Pki) -> (TestServer, Relay) {
    let listener_port = free_port();
    let server = TestServer::start_federating(pki, |config| {
        for listener in &mut config.listeners {
            if listener.resources.contains(&conduit::config::ListenerResource::Federation) {
                listener.port = listener_port;
            }
        }
    })
    .await;
    let name_port: u16 = server.name().rsplit(':').next().unwrap().parse().unwrap();
    let relay = Relay::start(name_port, SocketAddr::from(([127, 0, 0, 1], listener_port))).await;
    (server, relay)
}

async fn state_content(s: &TestServer, who: &Session, room: &str, kind: &str, key: &str) -> Value {
    let (status, body) =
        s.get(&format!("{V3}/rooms/{}/state/{kind}/{}", encode(room), encode(key)), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{kind}/{key}: {body}");
    body
}

/// The room's current state as `(type, state_key, content)`, sorted.
async fn whole_state(s: &TestServer, who: &Session, room: &str) -> Vec<(String, String, Value)> {
    let (status, body) = s.get(&format!("{V3}/rooms/{}/state", encode(room)), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut state: Vec<(String, String, Value)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["state_key"].as_str().unwrap().to_owned(),
                e["content"].clone(),
            )
        })
        .collect();
    state.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
    state
}

/// Move both servers' clocks until `check` holds (their senders' retries are timed on
/// them), for at most 200 steps of 30 s.
async fn retry_until<F, Fut>(a: &TestServer, b: &TestServer, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        a.clock.advance_ms(30_000);
        b.clock.advance_ms(30_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_sides_of_a_partition_keep_talking_and_end_with_every_message_and_the_same_state() {
    partition_in_room_version("11").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_sides_of_a_partition_in_a_v12_room_end_with_every_message_and_the_same_state() {
    partition_in_room_version("12").await;
}

async fn partition_in_room_version(version: &str) {
    let pki = Pki::new();
    let (a, relay_a) = server_behind_relay(&pki).await;
    let (b, relay_b) = server_behind_relay(&pki).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
    // Alice's room, where Bob may set the topic too.
    let room = create_room(
        &a,
        &alice,
        json!({"preset": "public_chat", "name": "Partitioned", "room_version": version}),
    )
    .await;
    let (status, joined) = b
        .post(&format!("{V3}/join/{}?via={}", encode(&room), encode(&a.name())), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let mut levels = state_content(&a, &alice, &room, "m.room.power_levels", "").await;
    levels["users"][&bob.user_id] = json!(50);
    let (status, body) = a
        .put(&format!("{V3}/rooms/{}/state/m.room.power_levels/", encode(&room)), Some(&alice.token), levels)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    send_text(&a, &alice, &room, "before", "before the partition").await;
    eventually("the first message on B", || async {
        message_bodies(&b, &bob, &room).await.contains(&"before the partition".to_owned())
    })
    .await;

    // The partition: neither server reaches the other; both sides keep talking and each
    // changes the room's state on its own fork.
    relay_a.set_open(false);
    relay_b.set_open(false);
    // Time passes (the servers' clocks are manual): the changes made during the partition
    // are later than the room's first name. In a v12 room this is what decides between the
    // two names: state resolution v2.1 orders non-power events by the power levels resolved
    // from the conflicted power events alone, none here, so by time (then event ID).
    a.clock.advance_ms(60_000);
    b.clock.advance_ms(60_000);
    let mut every = vec!["before the partition".to_owned()];
    for i in 1..=3 {
        let (from_a, from_b) = (format!("A during {i}"), format!("B during {i}"));
        send_text(&a, &alice, &room, &format!("a{i}"), &from_a).await;
        send_text(&b, &bob, &room, &format!("b{i}"), &from_b).await;
        every.extend([from_a, from_b]);
    }
    let (status, body) = a
        .put(
            &format!("{V3}/rooms/{}/state/m.room.name/", encode(&room)),
            Some(&alice.token),
            json!({"name": "Renamed on A"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .put(
            &format!("{V3}/rooms/{}/state/m.room.topic/", encode(&room)),
            Some(&bob.token),
            json!({"topic": "Set on B"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(state_content(&a, &alice, &room, "m.room.name", "").await["name"], "Renamed on A");
    assert_eq!(state_content(&b, &bob, &room, "m.room.topic", "").await["topic"], "Set on B");
    // Each side sees only its own fork.
    let only_a = message_bodies(&a, &alice, &room).await;
    assert!(!only_a.iter().any(|m| m.starts_with("B during")), "{only_a:?}");
    let only_b = message_bodies(&b, &bob, &room).await;
    assert!(!only_b.iter().any(|m| m.starts_with("A during")), "{only_b:?}");
    // The senders have failed at least once by now.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Healed: the retries deliver each fork to the other side.
    relay_a.set_open(true);
    relay_b.set_open(true);
    let want: BTreeSet<String> = every.iter().cloned().collect();
    retry_until(&a, &b, "every message on both servers", || async {
        let on_a: BTreeSet<String> = message_bodies(&a, &alice, &room).await.into_iter().collect();
        let on_b: BTreeSet<String> = message_bodies(&b, &bob, &room).await.into_iter().collect();
        on_a == want && on_b == want
    })
    .await;
    // The same state on both sides: A's name and B's topic, both members joined.
    assert_eq!(state_content(&a, &alice, &room, "m.room.name", "").await["name"], "Renamed on A");
    assert_eq!(state_content(&b, &bob, &room, "m.room.name", "").await["name"], "Renamed on A");
    assert_eq!(state_content(&a, &alice, &room, "m.room.topic", "").await["topic"], "Set on B");
    assert_eq!(state_content(&b, &bob, &room, "m.room.topic", "").await["topic"], "Set on B");
    let (state_a, state_b) = (whole_state(&a, &alice, &room).await, whole_state(&b, &bob, &room).await);
    assert_eq!(state_a, state_b);
    // Each message once on each side.
    for (s, who) in [(&a, &alice), (&b, &bob)] {
        let bodies = message_bodies(s, who, &room).await;
        assert_eq!(bodies.len(), every.len(), "{bodies:?}");
    }

    // The forks are joined: a message from each side after the partition, citing both
    // forks, reaches the other.
    send_text(&a, &alice, &room, "after-a", "A after").await;
    send_text(&b, &bob, &room, "after-b", "B after").await;
    retry_until(&a, &b, "the messages after the partition on both servers", || async {
        let on_a = message_bodies(&a, &alice, &room).await;
        let on_b = message_bodies(&b, &bob, &room).await;
        ["A after", "B after"].iter().all(|m| on_a.iter().any(|x| x == m) && on_b.iter().any(|x| x == m))
    })
    .await;
    assert_eq!(whole_state(&a, &alice, &room).await, whole_state(&b, &bob, &room).await);
}
