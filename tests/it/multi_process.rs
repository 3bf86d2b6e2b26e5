//! Several conduit processes on one PostgreSQL database (`multi_process`): a client's
//! requests may land on any of them, as behind a load balancer. Each test starts two
//! processes (in this test process) on a database of the shared test cluster.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, start_sharing_pair, start_sharing_pair_with},
    rooms::{V3, create_room, join, send_text},
};

/// The `m.room.message` event IDs of a sync answer's timeline in `room`, in order.
fn messages_in(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn sync(s: &TestServer, who: &Session, since: Option<&str>, timeout_ms: u64) -> Value {
    let filter = r#"{"room":{"timeline":{"limit":1000}}}"#;
    let mut path = format!("{V3}/sync?timeout={timeout_ms}&filter={}", urlencode(filter));
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    let (status, body) = s.get(&path, Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A token from which `who`'s next long-poll on `s` waits for something new: their sync
/// taken until it has nothing more to answer.
async fn caught_up(s: &TestServer, who: &Session) -> String {
    let mut token = sync(s, who, None, 0).await["next_batch"].as_str().unwrap().to_owned();
    loop {
        let next = sync(s, who, Some(&token), 0).await["next_batch"].as_str().unwrap().to_owned();
        if next == token {
            return token;
        }
        token = next;
    }
}

/// Long-poll `s` as `who` from `token` for up to `timeout_ms` in the background (with room
/// for every message in the timeline); answers when the answer came, and the answer.
fn long_poll(
    s: &TestServer,
    who: &Session,
    token: &str,
    timeout_ms: u64,
) -> tokio::task::JoinHandle<(Instant, Value)> {
    let (base, token, access, http) = (s.base.clone(), token.to_owned(), who.token.clone(), s.http.clone());
    tokio::spawn(async move {
        let filter = urlencode(r#"{"room":{"timeline":{"limit":1000}}}"#);
        let answer = http
            .get(format!("{base}{V3}/sync?timeout={timeout_ms}&since={token}&filter={filter}"))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap();
        (Instant::now(), answer.json::<Value>().await.unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_sent_on_one_process_wakes_a_long_poll_on_the_other() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    // Bob's sync on B is caught up: the next long-poll has nothing to answer until the
    // message comes. Bob long-polls on B for 30 s; Alice sends on A.
    let token = caught_up(&b, &bob).await;
    let poll = long_poll(&b, &bob, &token, 30_000);
    let sent_at = Instant::now();
    let id = send_text(&a, &alice, &room, "wake", "wake up, bob").await;
    let (answered_at, answer) = poll.await.unwrap();
    let waited = answered_at.saturating_duration_since(sent_at);
    eprintln!("send on A -> long-poll on B answered after {waited:?}");
    assert!(waited < Duration::from_secs(5), "the long-poll waited {waited:?}");
    assert_eq!(messages_in(&answer, &room), vec![id], "{answer}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sends_on_both_processes_reach_a_client_syncing_from_both_once_each_in_stream_order() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let carol = a.register("carol", "carol-password-1").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    assert_eq!(join(&a, &carol, &room).await.0, StatusCode::OK);
    let first = sync(&a, &carol, None, 0).await;
    let mut token = first["next_batch"].as_str().unwrap().to_owned();

    const EACH: usize = 25;
    let senders = {
        let (a, b) = (&a, &b);
        let (alice, bob, room) = (&alice, &bob, &room);
        async move {
            let on_a = async {
                for i in 0..EACH {
                    send_text(a, alice, room, &format!("a{i}"), &format!("from A {i}")).await;
                }
            };
            let on_b = async {
                for i in 0..EACH {
                    send_text(b, bob, room, &format!("b{i}"), &format!("from B {i}")).await;
                }
            };
            tokio::join!(on_a, on_b);
        }
    };
    // Carol syncs alternately from A and B while the sends go on, and after until she has
    // seen them all.
    let reader = async {
        let mut seen: Vec<String> = Vec::new();
        let mut turn = 0usize;
        let give_up = Instant::now() + Duration::from_secs(60);
        while seen.len() < 2 * EACH && Instant::now() < give_up {
            let server = if turn.is_multiple_of(2) { &a } else { &b };
            turn += 1;
            let answer = sync(server, &carol, Some(&token), 1_000).await;
            assert_ne!(answer["rooms"]["join"][&room]["timeline"]["limited"], json!(true), "{answer}");
            seen.extend(messages_in(&answer, &room));
            token = answer["next_batch"].as_str().unwrap().to_owned();
        }
        (seen, turn)
    };
    let ((), (seen, turns)) = tokio::join!(senders, reader);
    eprintln!("{} events seen in {turns} syncs alternating between the processes", seen.len());
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event came twice: {seen:?}");
    assert_eq!(seen.len(), 2 * EACH, "{seen:?}");
    // In stream order: the order the room's history lists them in, on either process.
    for server in [&a, &b] {
        let (status, history) =
            server.get(&format!("{V3}/rooms/{room}/messages?dir=f&limit=1000"), Some(&carol.token)).await;
        assert_eq!(status, StatusCode::OK, "{history}");
        let listed: Vec<String> = history["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(listed, seen);
    }
    // A sync from either process now has nothing more.
    for server in [&a, &b] {
        let answer = sync(server, &carol, Some(&token), 0).await;
        assert!(messages_in(&answer, &room).is_empty(), "{answer}");
    }
    a.stop().await;
    b.stop().await;
}

async fn name_on(s: &TestServer, who: &Session, room: &str) -> Value {
    s.get(&format!("{V3}/rooms/{room}/state/m.room.name"), Some(&who.token)).await.1["name"].clone()
}

async fn members_on(s: &TestServer, who: &Session, room: &str) -> Vec<String> {
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut users: Vec<String> = body["joined"].as_object().unwrap().keys().cloned().collect();
    users.sort();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_and_membership_changed_on_one_process_are_read_on_the_other() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat", "name": "before"})).await;
    // B reads (and caches) the room's name and members first.
    assert_eq!(name_on(&b, &alice, &room).await, json!("before"));
    assert_eq!(members_on(&b, &alice, &room).await, vec![alice.user_id.clone()]);
    let (status, joined) = b.get(&format!("{V3}/joined_rooms"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["joined_rooms"], json!([]));

    // Changed on A: the name; Bob joins through A.
    let (status, body) = a
        .put(&format!("{V3}/rooms/{room}/state/m.room.name/"), Some(&alice.token), json!({"name": "after"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(join(&a, &bob, &room).await.0, StatusCode::OK);
    // Read on B: each write returned before these requests began.
    assert_eq!(name_on(&b, &alice, &room).await, json!("after"));
    let mut both = vec![alice.user_id.clone(), bob.user_id.clone()];
    both.sort();
    assert_eq!(members_on(&b, &alice, &room).await, both);
    let (_, joined) = b.get(&format!("{V3}/joined_rooms"), Some(&bob.token)).await;
    assert_eq!(joined["joined_rooms"], json!([room]));
    // Bob's sync on B shows the room under its new name; his leaving through B is read on A.
    let synced = sync(&b, &bob, None, 0).await;
    let state = synced["rooms"]["join"][&room]["state"]["events"].as_array().cloned().unwrap_or_default();
    let timeline =
        synced["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    let name = state
        .iter()
        .chain(timeline.iter())
        .rfind(|e| e["type"] == "m.room.name")
        .map(|e| e["content"]["name"].clone());
    assert_eq!(name, Some(json!("after")), "{synced}");
    let (status, _) = b.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(members_on(&a, &alice, &room).await, vec![alice.user_id.clone()]);
    let (_, joined) = a.get(&format!("{V3}/joined_rooms"), Some(&bob.token)).await;
    assert_eq!(joined["joined_rooms"], json!([]));
    a.stop().await;
    b.stop().await;
}

/// Long-poll `s` as `who` from `token` until an answer satisfies `done`; answers it and its
/// `next_batch`. Panics after 20 s.
async fn sync_until(
    s: &TestServer,
    who: &Session,
    token: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, String) {
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut token = token.to_owned();
    loop {
        assert!(Instant::now() < give_up, "never saw {what}");
        let answer = sync(s, who, Some(&token), 5_000).await;
        token = answer["next_batch"].as_str().unwrap().to_owned();
        if done(&answer) {
            return (answer, token);
        }
    }
}

/// The event `id` as a sync answer's timeline in `room` has it.
fn timeline_event(sync: &Value, room: &str, id: &str) -> Option<Value> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["event_id"] == id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_redacted_on_one_process_is_served_redacted_by_the_other() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    let secret = send_text(&a, &alice, &room, "secret", "the launch code is 1234").await;
    // B reads the event every way a client can, so that it holds it in memory.
    let first = sync(&b, &bob, None, 0).await;
    let token = first["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(timeline_event(&first, &room, &secret).unwrap()["content"]["body"], "the launch code is 1234");
    let (status, event) = b.get(&format!("{V3}/rooms/{room}/event/{secret}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], "the launch code is 1234");

    // Alice redacts it on A; Bob's long-poll on B hears of the redaction.
    let (status, body) = a
        .put(&format!("{V3}/rooms/{room}/redact/{secret}/r1"), Some(&alice.token), json!({"reason": "oops"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let redaction = body["event_id"].as_str().unwrap().to_owned();
    sync_until(&b, &bob, &token, "the redaction on B", |answer| {
        timeline_event(answer, &room, &redaction).is_some()
    })
    .await;

    // From then on B serves the event redacted, wherever it is read.
    let redacted =
        |e: &Value| e["content"] == json!({}) && e["unsigned"]["redacted_because"]["event_id"] == redaction;
    let (status, event) = b.get(&format!("{V3}/rooms/{room}/event/{secret}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert!(redacted(&event), "/event on B: {event}");
    let (status, history) =
        b.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let listed = history["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == secret).cloned();
    assert!(listed.as_ref().is_some_and(redacted), "/messages on B: {history}");
    let (status, context) = b.get(&format!("{V3}/rooms/{room}/context/{secret}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{context}");
    assert!(redacted(&context["event"]), "/context on B: {context}");
    let fresh = sync(&b, &bob, None, 0).await;
    let synced = timeline_event(&fresh, &room, &secret);
    assert!(synced.as_ref().is_some_and(redacted), "an initial /sync on B: {fresh}");
    assert!(!fresh.to_string().contains("launch code"), "{fresh}");
    a.stop().await;
    b.stop().await;
}

/// The event IDs of `who`'s notifications, read on `s`.
async fn notified(s: &TestServer, who: &Session) -> Vec<String> {
    let (status, body) = s.get(&format!("{V3}/notifications"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["event"]["event_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_rule_changed_on_one_process_is_applied_by_the_other() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room =
        create_room(&b, &alice, json!({"preset": "trusted_private_chat", "invite": [bob.user_id]})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    // A message sent on B notifies Bob under the default rules (a room of two), and B now
    // holds his rules in memory.
    let first = send_text(&b, &alice, &room, "m1", "first").await;
    let before = notified(&b, &bob).await;
    assert!(before.contains(&first), "{before:?}");
    let token = sync(&b, &bob, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Bob turns every notification off through A (the master rule) ...
    let (status, body) = a
        .put(
            &format!("{V3}/pushrules/global/override/.m.rule.master/enabled"),
            Some(&bob.token),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // ... and his sync on B hears of it, with the new rules.
    let (answer, _) = sync_until(&b, &bob, &token, "the push rules on B", |answer| {
        answer["account_data"]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["type"] == "m.push_rules"))
    })
    .await;
    let rules =
        answer["account_data"]["events"].as_array().unwrap().iter().find(|e| e["type"] == "m.push_rules");
    let master = rules.unwrap()["content"]["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule_id"] == ".m.rule.master")
        .cloned()
        .unwrap();
    assert_eq!(master["enabled"], json!(true), "{answer}");

    // A message sent on B now notifies nobody.
    send_text(&b, &alice, &room, "m2", "second").await;
    assert_eq!(notified(&b, &bob).await, before);
    assert_eq!(notified(&a, &bob).await, before);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ended_on_one_process_is_refused_by_the_other_at_once() {
    let (a, b) = start_sharing_pair().await;
    let bob = a.register("bob", "bob-password-1").await;
    let (status, login) = b
        .post(
            &format!("{V3}/login"),
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "bob-password-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    let second = login["access_token"].as_str().unwrap().to_owned();
    let second_device = login["device_id"].as_str().unwrap().to_owned();
    // Both tokens work on both processes (and each process has used each).
    for s in [&a, &b] {
        for token in [&bob.token, &second] {
            let (status, body) = s.get(&format!("{V3}/account/whoami"), Some(token)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    }
    // Logged out on A: B refuses the token in the very next request.
    let (status, body) = a.post(&format!("{V3}/logout"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b.get(&format!("{V3}/account/whoami"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN");
    // The other device deleted on B (with the password): A refuses its token at once.
    let (status, body) = b
        .post(
            &format!("{V3}/delete_devices"),
            Some(&second),
            json!({"devices": [second_device], "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "bob-password-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = a.get(&format!("{V3}/account/whoami"), Some(&second)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_is_woken_for_what_was_sent_while_its_process_was_not_listening() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    let token = caught_up(&b, &bob).await;
    let poll = long_poll(&b, &bob, &token, 20_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B's listening connection is cut (as by a network fault), and Alice sends on A before
    // B has made it again: B does not hear the NOTIFY.
    let url = a.services.config.database_url.clone().unwrap();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let b_name = format!("conduit-{:x}", b.services.stream.member().unwrap());
    let killed = crate::harness::shared_cluster()
        .psql(
            &database,
            &format!(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = '{b_name}' \
                 AND (query LIKE 'LISTEN%' OR query LIKE '%pg_try_advisory_lock%') \
                 AND pid <> pg_backend_pid()) AS k"
            ),
        )
        .unwrap();
    assert_eq!(killed.trim(), "1", "one listening connection per process");
    let sent_at = Instant::now();
    let id = send_text(&a, &alice, &room, "unheard", "while B did not listen").await;
    let (answered_at, answer) = poll.await.unwrap();
    let waited = answered_at.saturating_duration_since(sent_at);
    eprintln!("send on A while unheard -> long-poll on B answered after {waited:?}");
    assert_eq!(messages_in(&answer, &room), vec![id], "{answer}");
    assert!(waited < Duration::from_secs(10), "the long-poll waited {waited:?}");
    a.stop().await;
    b.stop().await;
}

/// The `content.n` of the to-device events in a sync answer, in order.
fn to_device_numbers(sync: &Value) -> Vec<i64> {
    sync["to_device"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["content"]["n"].as_i64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_to_device_queue_emptied_on_one_process_takes_messages_again_on_the_other() {
    let (a, b) = start_sharing_pair_with(|config| config.to_device_queue_max_messages = 2).await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = a.register("bob", "bob-password-1").await;
    let send = |n: i64| {
        let (b, alice, bob) = (&b, &alice, &bob);
        async move {
            let body = json!({"messages": {&bob.user_id: {&bob.device_id: {"n": n}}}});
            let (status, resp) =
                b.put(&format!("{V3}/sendToDevice/org.example.test/t{n}"), Some(&alice.token), body).await;
            assert_eq!(status, StatusCode::OK, "{resp}");
        }
    };
    // Two messages sent through B fill Bob's queue (B counts them) ...
    send(1).await;
    send(2).await;
    // ... Bob takes them on A and acknowledges them (his next sync), emptying it ...
    let first = sync(&a, &bob, None, 0).await;
    assert_eq!(to_device_numbers(&first), vec![1, 2], "{first}");
    let token = first["next_batch"].as_str().unwrap().to_owned();
    let second = sync(&a, &bob, Some(&token), 0).await;
    assert!(to_device_numbers(&second).is_empty(), "{second}");
    let token = second["next_batch"].as_str().unwrap().to_owned();
    // ... so B takes the next message rather than count it against a full queue.
    send(3).await;
    let (answer, _) =
        sync_until(&a, &bob, &token, "the third message", |answer| !to_device_numbers(answer).is_empty())
            .await;
    assert_eq!(to_device_numbers(&answer), vec![3], "{answer}");
    a.stop().await;
    b.stop().await;
}

/// The users typing in `room` as an initial sync on `s` shows them.
async fn typing_on(s: &TestServer, who: &Session, room: &str) -> Value {
    let answer = sync(s, who, None, 0).await;
    answer["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == "m.typing"))
        .map_or(json!([]), |e| e["content"]["user_ids"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typing_through_one_process_is_shown_through_the_other_and_wakes_its_long_polls() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    let token = caught_up(&b, &bob).await;
    let typing_path = |user: &str| format!("{V3}/rooms/{}/typing/{}", urlencode(&room), urlencode(user));

    // Bob long-polls on B; Alice starts typing on A: the poll answers with her typing.
    let poll = long_poll(&b, &bob, &token, 30_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, body) = a
        .put(&typing_path(&alice.user_id), Some(&alice.token), json!({"typing": true, "timeout": 30000}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (answered_at, answer) = poll.await.unwrap();
    assert!(answered_at.saturating_duration_since(started) < Duration::from_secs(5));
    let ephemeral = &answer["rooms"]["join"][&room]["ephemeral"]["events"];
    assert_eq!(
        ephemeral
            .as_array()
            .and_then(|e| e.iter().find(|e| e["type"] == "m.typing"))
            .map(|e| &e["content"]["user_ids"]),
        Some(&json!([alice.user_id])),
        "{answer}"
    );
    assert_eq!(typing_on(&b, &bob, &room).await, json!([alice.user_id]));

    // Bob types on B too: both processes show both; Alice stops on A: both show Bob alone.
    let (status, body) =
        b.put(&typing_path(&bob.user_id), Some(&bob.token), json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut both = vec![alice.user_id.clone(), bob.user_id.clone()];
    both.sort();
    for (s, who) in [(&a, &alice), (&b, &bob)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while typing_on(s, who, &room).await != json!(both) {
            assert!(Instant::now() < deadline, "{} never showed both typing", who.user_id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (status, body) =
        a.put(&typing_path(&alice.user_id), Some(&alice.token), json!({"typing": false})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (s, who) in [(&a, &alice), (&b, &bob)] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while typing_on(s, who, &room).await != json!([bob.user_id]) {
            assert!(Instant::now() < deadline, "{} never showed Bob alone", who.user_id);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_syncing_through_the_other_process_is_not_marked_offline() {
    let (a, b) = start_sharing_pair().await;
    let alice = a.register("alice", "alice-password-1").await;
    let online = |s: &TestServer| {
        let (s, token) = (s.base.clone(), alice.token.clone());
        let http = a.http.clone();
        async move {
            let answer = http
                .get(format!("{s}{V3}/sync?set_presence=online&timeout=0"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
        }
    };
    let advance = |ms: u64| {
        a.clock.advance_ms(ms);
        b.clock.advance_ms(ms);
    };
    // Seen by A, then only by B, four minutes later; A's sweep a minute after that finds
    // her unseen here for five minutes (the timeout) but active through B.
    online(&a).await;
    advance(250_000);
    online(&b).await;
    advance(60_000);
    assert_eq!(a.services.presence.sweep().unwrap(), 0);
    let path = format!("{V3}/presence/{}/status", urlencode(&alice.user_id));
    let (_, got) = b.get(&path, Some(&alice.token)).await;
    assert_eq!(got["presence"], "online", "{got}");
    // Five minutes without any sync: the process that saw her last marks her offline.
    advance(300_000);
    assert_eq!(b.services.presence.sweep().unwrap(), 1);
    let (_, got) = b.get(&path, Some(&alice.token)).await;
    assert_eq!(got["presence"], "offline", "{got}");
    a.stop().await;
    b.stop().await;
}

/// Wait (up to 10 s of wall-clock time) until `s` leads or, with `false`, does not.
async fn until_leading(s: &TestServer, leads: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.services.leader.is_leading() != leads || s.services.outbox.is_leading() != leads {
        assert!(
            Instant::now() < deadline,
            "the process never {}",
            if leads { "led" } else { "stopped leading" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_process_pushes_each_notification_once_and_another_takes_over_when_it_stops() {
    use crate::push_delivery::{Gateway, Mode, allow_loopback, set_pusher};
    let (a, b) = start_sharing_pair_with(allow_loopback).await;
    // The first process leads; the second never does while the first runs.
    until_leading(&a, true).await;
    assert!(!b.services.leader.is_leading() && !b.services.outbox.is_leading());

    // A slow gateway: two processes delivering one queue would both be under way at once.
    let gateway = Gateway::start(Mode::Slow).await;
    let alice = a.register("alice", "alice-password-1").await;
    let bob = b.register("bob", "bob-password-1").await;
    let room =
        create_room(&b, &alice, json!({"preset": "trusted_private_chat", "invite": [bob.user_id]})).await;
    assert_eq!(join(&b, &bob, &room).await.0, StatusCode::OK);
    // Bob's pusher is set through the process that does not deliver.
    let (status, body) = set_pusher(&b, &bob, "phone", &gateway.url, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Messages sent through each process reach the gateway once each, in order.
    let mut sent = Vec::new();
    sent.push(send_text(&b, &alice, &room, "m1", "through the second").await);
    sent.push(send_text(&a, &alice, &room, "m2", "through the first").await);
    sent.push(send_text(&b, &alice, &room, "m3", "through the second again").await);
    let pushed = |gateway: &Gateway| -> Vec<String> {
        gateway.accepted().iter().filter_map(|n| n["event_id"].as_str().map(str::to_owned)).collect()
    };
    gateway.until("three notifications", |g| pushed(g).len() >= 3).await;
    // A second deliverer would have pushed each again by the time a fourth message arrives.
    sent.push(send_text(&a, &alice, &room, "m4", "a marker").await);
    gateway.until("the marker", |g| pushed(g).contains(&sent[3])).await;
    assert_eq!(pushed(&gateway), sent, "each message pushed once, in order");

    // The leader stops: the other process takes over its deliveries.
    a.stop().await;
    until_leading(&b, true).await;
    sent.push(send_text(&b, &alice, &room, "m5", "after the takeover").await);
    gateway.until("the message after the takeover", |g| pushed(g).contains(&sent[4])).await;
    assert_eq!(pushed(&gateway), sent, "each message pushed once, in order");
    b.stop().await;
}

/// `who`'s notification and highlight counts in `room`, as an initial sync on `s` gives them.
async fn unread_on(s: &TestServer, who: &Session, room: &str) -> (u64, u64) {
    let answer = sync(s, who, None, 0).await;
    let unread = &answer["rooms"]["join"][room]["unread_notifications"];
    (unread["notification_count"].as_u64().unwrap_or(0), unread["highlight_count"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn push_rules_new_to_each_process_keep_their_own_counts_on_both() {
    let (a, b) = start_sharing_pair().await;
    let zed = a.register("zed", "zed-password-1").await;
    let xena = a.register("xena", "xena-password-1").await;
    let yuri = b.register("yuri", "yuri-password-1").await;
    let room = create_room(&a, &zed, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&a, &xena, &room).await.0, StatusCode::OK);
    assert_eq!(join(&b, &yuri, &room).await.0, StatusCode::OK);
    // Each sets a rule no one had before, through a different process: each process meets
    // a new set of rules at about the same time.
    let highlight = json!({"actions": ["notify", {"set_tweak": "highlight"}]});
    for (s, who, word) in [(&a, &xena, "lunch"), (&b, &yuri, "dinner")] {
        let mut rule = highlight.clone();
        rule["pattern"] = json!(word);
        let (status, body) =
            s.put(&format!("{V3}/pushrules/global/content/{word}"), Some(&who.token), rule).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Messages through both processes: each is evaluated with both users' rules by the
    // process it was sent through.
    send_text(&b, &zed, &room, "m1", "lunch at noon?").await;
    send_text(&a, &zed, &room, "m2", "dinner at eight?").await;
    send_text(&b, &zed, &room, "m3", "or both").await;
    send_text(&a, &zed, &room, "m4", "lunch it is").await;
    // Each user highlights on their own word only, read through either process.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = [
            unread_on(&a, &xena, &room).await,
            unread_on(&b, &xena, &room).await,
            unread_on(&a, &yuri, &room).await,
            unread_on(&b, &yuri, &room).await,
        ];
        if seen == [(4, 2), (4, 2), (4, 1), (4, 1)] {
            break;
        }
        assert!(Instant::now() < deadline, "xena on A and B, yuri on A and B: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}
