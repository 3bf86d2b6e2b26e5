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
