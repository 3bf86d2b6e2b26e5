//! The scenarios: each sets up what it needs (untimed), then times one kind of request and
//! returns an `Outcome`. They speak only the client-server API, so any homeserver will do.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    client::{CallResult, Http, User, encode, timed},
    gateway::Gateway,
    report::Outcome,
};

/// Settings shared by the scenarios.
pub struct Plan {
    /// A prefix unique to this run, so runs against one server do not collide.
    pub run_id: String,
    pub users: usize,
    pub whoami: usize,
    pub messages: usize,
    pub clients: usize,
    pub per_client: usize,
    pub sync_rounds: usize,
    pub rooms: usize,
    pub members: usize,
    pub room_messages: usize,
    pub sync_runs: usize,
    pub history: usize,
    pub page: u32,
    pub sss_rooms: usize,
    pub sss_runs: usize,
    pub sss_connections: usize,
    pub push_members: usize,
    pub push_runs: usize,
    pub push_messages: usize,
    pub import_messages: usize,
    pub as_rate: u32,
    pub as_seconds: f64,
    pub fanout_members: usize,
    pub fanout_runs: usize,
    pub big_members: usize,
    pub big_messages: usize,
    pub fed_members: usize,
    pub fed_transactions: usize,
    pub fed_pdus: usize,
    pub fed_servers: usize,
    pub fed_rounds: usize,
    pub fed_join_rounds: usize,
}

pub const PASSWORD: &str = "bench-password-a1b2c3";

/// A public room created by `creator` that `members` join, `plan.clients` at a time.
pub async fn public_room_with(plan: &Plan, creator: &User, members: &[User]) -> CallResult<String> {
    let room = creator.create_public_room().await?;
    for joined in bounded(plan.clients, members.to_vec(), |user| {
        let room = room.clone();
        async move { user.join(&room).await }
    })
    .await
    {
        joined?;
    }
    Ok(room)
}

/// Register `count` users `count` at a time from `first`; returns them and each one's latency.
pub async fn register_users(
    http: &Http,
    plan: &Plan,
    first: usize,
    count: usize,
    concurrency: usize,
) -> CallResult<(Vec<User>, Vec<Duration>)> {
    let names: Vec<String> = (first..first + count).map(|i| format!("{}u{i}", plan.run_id)).collect();
    let results = bounded(concurrency, names, |name| {
        let http = http.clone();
        async move { timed(http.register(&name, PASSWORD)).await }
    })
    .await;
    let mut users = Vec::new();
    let mut latencies = Vec::new();
    for (result, took) in results {
        users.push(result?);
        latencies.push(took);
    }
    Ok((users, latencies))
}

pub async fn login(http: &Http, plan: &Plan, users: &[User]) -> CallResult<Outcome> {
    let names: Vec<String> = (0..users.len()).map(|i| format!("{}u{i}", plan.run_id)).collect();
    let started = Instant::now();
    let results = bounded(plan.clients, names, |name| {
        let http = http.clone();
        async move { timed(http.login(&name, PASSWORD)).await }
    })
    .await;
    let wall = started.elapsed();
    let mut latencies = Vec::new();
    for (result, took) in results {
        result?;
        latencies.push(took);
    }
    Ok(Outcome::new("login", &mut latencies, wall, "includes password verification".to_owned()))
}

pub async fn whoami(plan: &Plan, users: &[User]) -> CallResult<Outcome> {
    let jobs: Vec<User> = (0..plan.whoami).map(|i| users[i % users.len()].clone()).collect();
    let started = Instant::now();
    let results = bounded(plan.clients, jobs, |user| async move { timed(user.whoami()).await }).await;
    let wall = started.elapsed();
    collect("whoami", results, wall, format!("{} clients", plan.clients))
}

/// One client sends `messages` messages one after another into one room.
pub async fn send_sequential(plan: &Plan, sender: &User) -> CallResult<Outcome> {
    let room = sender.create_public_room().await?;
    let mut latencies = Vec::with_capacity(plan.messages);
    let started = Instant::now();
    for i in 0..plan.messages {
        let (sent, took) =
            timed(sender.send_text(&room, &format!("{}s{i}", plan.run_id), &message_body(i))).await;
        sent?;
        latencies.push(took);
    }
    Ok(Outcome::new("send, 1 client", &mut latencies, started.elapsed(), "sequential, one room".to_owned()))
}

/// `clients` users send `per_client` messages each at the same time, into one shared room
/// or into a room each.
pub async fn send_concurrent(plan: &Plan, users: &[User], shared_room: bool) -> CallResult<Outcome> {
    let senders = &users[..plan.clients];
    let rooms: Vec<String> = if shared_room {
        let room = senders[0].create_public_room().await?;
        for user in &senders[1..] {
            user.join(&room).await?;
        }
        vec![room; senders.len()]
    } else {
        let mut rooms = Vec::new();
        for user in senders {
            rooms.push(user.create_public_room().await?);
        }
        rooms
    };
    let jobs: Vec<(usize, User, String)> =
        senders.iter().cloned().zip(rooms).enumerate().map(|(i, (u, r))| (i, u, r)).collect();
    let per_client = plan.per_client;
    let run_id = plan.run_id.clone();
    let started = Instant::now();
    let mut set = JoinSet::new();
    for (i, user, room) in jobs {
        let run_id = run_id.clone();
        set.spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for m in 0..per_client {
                let txn = format!("{run_id}c{}{i}-{m}", u8::from(shared_room));
                let (sent, took) = timed(user.send_text(&room, &txn, &message_body(m))).await;
                sent?;
                latencies.push(took);
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(joined) = set.join_next().await {
        latencies.extend(joined.map_err(|e| e.to_string())??);
    }
    let wall = started.elapsed();
    let (name, note) = if shared_room {
        (format!("send, {} clients, 1 room", plan.clients), "all into one room")
    } else {
        (format!("send, {} clients, own rooms", plan.clients), "a room each")
    };
    Ok(Outcome::new(&name, &mut latencies, wall, note.to_owned()))
}

/// A sends a message; B's long-polling `/sync` returns it. Timed from the start of A's send
/// to B receiving the sync response that holds the event.
pub async fn send_to_sync(plan: &Plan, a: &User, b: &User) -> CallResult<Outcome> {
    let room = a.create_public_room().await?;
    b.join(&room).await?;
    let filter = encode(&json!({"room": {"rooms": [room], "timeline": {"limit": 10}}}).to_string());
    let mut since = b.sync(&format!("filter={filter}&timeout=0")).await?["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut latencies = Vec::with_capacity(plan.sync_rounds);
    let started = Instant::now();
    for i in 0..plan.sync_rounds {
        let poller = b.clone();
        let query = format!("filter={filter}&timeout=30000&since={}", encode(&since));
        let mut poll = tokio::spawn(async move { poller.sync(&query).await });
        // Give the poll time to reach the server and park there.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent_at = Instant::now();
        let event_id = a.send_text(&room, &format!("{}w{i}", plan.run_id), &message_body(i)).await?;
        loop {
            let response = (&mut poll).await.map_err(|e| e.to_string())??;
            since = response["next_batch"].as_str().unwrap_or_default().to_owned();
            if timeline_holds(&response, &room, &event_id) {
                latencies.push(sent_at.elapsed());
                break;
            }
            // Woken by something else: wait again from where that response left off.
            let poller = b.clone();
            let query = format!("filter={filter}&timeout=30000&since={}", encode(&since));
            poll = tokio::spawn(async move { poller.sync(&query).await });
        }
    }
    let wall = started.elapsed();
    Ok(Outcome::new(
        "send → sync",
        &mut latencies,
        wall,
        "send request start → long-poll response".to_owned(),
    ))
}

pub fn timeline_holds(sync: &Value, room: &str, event_id: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == event_id))
}

/// The rooms of the initial-sync scenarios: an owner in `rooms` rooms with `members - 1`
/// other members and `room_messages` messages each, sent by the members in turn.
pub async fn populate_rooms(http: &Http, plan: &Plan, users: &[User]) -> CallResult<User> {
    let (owner, _) = register_users(http, plan, 1_000_000, 1, 1).await?;
    let owner = owner.into_iter().next().ok_or("no owner")?;
    let members: Vec<User> = std::iter::once(owner.clone())
        .chain(users.iter().take(plan.members.saturating_sub(1)).cloned())
        .collect();
    let room_ids = bounded(plan.clients, (0..plan.rooms).collect(), |_| {
        let owner = owner.clone();
        async move { owner.create_public_room().await }
    })
    .await
    .into_iter()
    .collect::<CallResult<Vec<String>>>()?;
    let joins: Vec<(User, String)> = room_ids
        .iter()
        .flat_map(|room| members[1..].iter().map(move |m| (m.clone(), room.clone())))
        .collect();
    for joined in bounded(plan.clients, joins, |(m, room)| async move { m.join(&room).await }).await {
        joined?;
    }
    let sends: Vec<(User, String, String)> = room_ids
        .iter()
        .flat_map(|room| {
            let members = &members;
            (0..plan.room_messages).map(move |i| {
                (
                    members[i % members.len()].clone(),
                    room.clone(),
                    format!("{}p{}-{i}", plan.run_id, &room[1..8]),
                )
            })
        })
        .collect();
    for sent in bounded(plan.clients, sends, |(m, room, txn)| async move {
        m.send_text(&room, &txn, "a message in a populated room").await
    })
    .await
    {
        sent?;
    }
    Ok(owner)
}

/// The owner's initial sync, `sync_runs` times. Each run asks with its own filter, so no
/// response cache can answer in place of the server (Synapse caches sync responses by
/// request).
pub async fn initial_sync(plan: &Plan, owner: &User, lazy: bool) -> CallResult<Outcome> {
    let mut latencies = Vec::new();
    let mut note = String::new();
    let started = Instant::now();
    for run in 0..plan.sync_runs {
        let mut filter = json!({"room": {"timeline": {"limit": 10}}, "presence": {"not_types": [format!("x.bench.{run}")]}});
        if lazy {
            filter["room"]["state"] = json!({"lazy_load_members": true});
        }
        let query = format!("filter={}", encode(&filter.to_string()));
        let (response, took) = timed(owner.sync(&query)).await;
        let response = response?;
        latencies.push(took);
        let rooms = response["rooms"]["join"].as_object().map_or(0, |r| r.len());
        let bytes = response.to_string().len();
        note = format!("{rooms} rooms, {} KiB", bytes / 1024);
    }
    let name = if lazy { "initial sync, lazy members" } else { "initial sync" };
    Ok(Outcome::new(name, &mut latencies, started.elapsed(), note))
}

/// Incremental syncs with nothing new (`timeout=0`, from the token of the sync before),
/// in every one of the owner's rooms: what each idle client's poll costs when it returns.
pub async fn empty_sync(plan: &Plan, owner: &User) -> CallResult<Outcome> {
    let filter = json!({"room": {"timeline": {"limit": 10}}});
    let filter = encode(&filter.to_string());
    let first = owner.sync(&format!("filter={filter}")).await?;
    let mut since = first["next_batch"].as_str().ok_or("no next_batch")?.to_owned();
    let mut latencies = Vec::new();
    let mut rooms_seen = 0;
    let started = Instant::now();
    for _ in 0..plan.sync_runs * 20 {
        let query = format!("filter={filter}&timeout=0&since={}", encode(&since));
        let (response, took) = timed(owner.sync(&query)).await;
        let response = response?;
        latencies.push(took);
        rooms_seen += response["rooms"]["join"].as_object().map_or(0, |r| r.len());
        since = response["next_batch"].as_str().ok_or("no next_batch")?.to_owned();
    }
    let note = format!("rooms in the responses: {rooms_seen}");
    Ok(Outcome::new("incremental sync, nothing new", &mut latencies, started.elapsed(), note))
}

/// The request Element X's room list opens with (matrix-sdk-ui 0.18): the 17 state entries,
/// the first 20 rooms, one event each, and the extensions the room list enables.
pub fn room_list_request(conn_id: &str) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": {"all_rooms": {
            "ranges": [[0, 19]],
            "required_state": [
                ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
                ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
                ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
                ["org.matrix.msc3401.call.member", "*"], ["m.room.join_rules", ""],
                ["m.room.tombstone", ""], ["m.room.create", ""], ["m.room.history_visibility", ""],
                ["io.element.functional_members", ""], ["m.space.parent", "*"],
                ["m.space.child", "*"], ["org.matrix.msc3672.beacon_info", "*"]
            ],
            "timeline_limit": 1,
            "filters": {}
        }},
        "extensions": {
            "account_data": {"enabled": true},
            "receipts": {"enabled": true, "rooms": ["*"]},
            "typing": {"enabled": true}
        }
    })
}

/// The number in the sliding-sync owner's name (apart from the other scenarios' users).
const SLIDING_OWNER: usize = 2_000_000;

/// A user in `sss_rooms` named rooms with one message each, for the sliding-sync scenarios.
pub async fn populate_sliding(http: &Http, plan: &Plan) -> CallResult<(User, Vec<String>)> {
    let (owner, _) = register_users(http, plan, SLIDING_OWNER, 1, 1).await?;
    let owner = owner.into_iter().next().ok_or("no owner")?;
    let rooms = bounded(plan.clients, (0..plan.sss_rooms).collect(), |i| {
        let owner = owner.clone();
        async move { owner.create_named_room(&format!("Room {i}")).await }
    })
    .await
    .into_iter()
    .collect::<CallResult<Vec<String>>>()?;
    let sends: Vec<(String, usize)> = rooms.iter().cloned().zip(0..).collect();
    let run_id = plan.run_id.clone();
    for sent in bounded(plan.clients, sends, |(room, i)| {
        let (owner, txn) = (owner.clone(), format!("{run_id}s{i}"));
        async move { owner.send_text(&room, &txn, &message_body(i)).await }
    })
    .await
    {
        sent?;
    }
    Ok((owner, rooms))
}

/// Element X's first room-list request, on a new connection each time.
pub async fn sliding_first(plan: &Plan, owner: &User) -> CallResult<Outcome> {
    let mut latencies = Vec::new();
    let mut note = String::new();
    let started = Instant::now();
    for run in 0..plan.sss_runs {
        let body = room_list_request(&format!("room-list-{run}"));
        let (response, took) = timed(owner.sliding_sync(None, &body)).await;
        let response = response?;
        latencies.push(took);
        let rooms = response["rooms"].as_object().map_or(0, |r| r.len());
        let count = &response["lists"]["all_rooms"]["count"];
        if rooms != 20.min(plan.sss_rooms) {
            return Err(format!("first room-list response held {rooms} rooms: {response}"));
        }
        note = format!("{rooms} of {count} rooms, {} KiB", response.to_string().len() / 1024);
    }
    Ok(Outcome::new("sliding sync, first room list", &mut latencies, started.elapsed(), note))
}

/// On one connection: a message into one of the rooms (untimed), then the incremental
/// response that brings it.
pub async fn sliding_incremental(plan: &Plan, owner: &User, rooms: &[String]) -> CallResult<Outcome> {
    let body = room_list_request("room-list-incremental");
    let mut pos = owner.sliding_sync(None, &body).await?["pos"].as_str().ok_or("no pos")?.to_owned();
    let mut latencies = Vec::new();
    // Only the sync requests are timed, not the sends between them.
    let mut wall = Duration::ZERO;
    for run in 0..plan.sss_runs {
        let room = &rooms[run % rooms.len()];
        let event = owner.send_text(room, &format!("{}i{run}", plan.run_id), "one more").await?;
        let (response, took) = timed(owner.sliding_sync(Some(&pos), &body)).await;
        let response = response?;
        wall += took;
        latencies.push(took);
        let delivered = response["rooms"][room]["timeline"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["event_id"] == event.as_str()));
        if !delivered {
            return Err(format!("incremental response lacks the new message: {response}"));
        }
        pos = response["pos"].as_str().ok_or("no pos")?.to_owned();
    }
    Ok(Outcome::new(
        "sliding sync, after one message",
        &mut latencies,
        wall,
        "room-list connection, timeout 0".to_owned(),
    ))
}

/// Connections one device may hold on conduit (its `MAX_CONNECTIONS_PER_DEVICE`): more on
/// one device would replace each other, so the connections are spread over devices.
pub const CONNECTIONS_PER_DEVICE: usize = 16;

/// Log the sliding-sync owner in on enough devices for `sss_connections` connections;
/// logging in is not part of the measurement (the caller reads memory after this).
pub async fn sliding_devices(http: &Http, plan: &Plan) -> CallResult<Vec<User>> {
    let owner = format!("{}u{SLIDING_OWNER}", plan.run_id);
    let devices = plan.sss_connections.div_ceil(CONNECTIONS_PER_DEVICE);
    bounded(plan.clients, (0..devices).collect(), |_| {
        let (http, owner) = (http.clone(), owner.clone());
        async move { http.login(&owner, PASSWORD).await }
    })
    .await
    .into_iter()
    .collect()
}

/// Open `sss_connections` room-list connections, `CONNECTIONS_PER_DEVICE` on each of
/// `devices`; the caller reads the server's memory before and after.
pub async fn sliding_connections(plan: &Plan, devices: &[User]) -> CallResult<Outcome> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    for run in 0..plan.sss_connections {
        let device = &devices[run / CONNECTIONS_PER_DEVICE];
        let body = room_list_request(&format!("memory-{}", run % CONNECTIONS_PER_DEVICE));
        let (response, took) = timed(device.sliding_sync(None, &body)).await;
        response?;
        latencies.push(took);
    }
    Ok(Outcome::new("sliding sync, open connections", &mut latencies, started.elapsed(), String::new()))
}

/// Back-paginate with `/messages` through a room of `history` messages, from the end to the
/// start, timing each page.
pub async fn back_paginate(plan: &Plan, users: &[User]) -> CallResult<Outcome> {
    let senders = &users[..plan.clients.min(users.len())];
    let room = senders[0].create_public_room().await?;
    for user in &senders[1..] {
        user.join(&room).await?;
    }
    let sends: Vec<(User, usize)> =
        (0..plan.history).map(|i| (senders[i % senders.len()].clone(), i)).collect();
    let run_id = plan.run_id.clone();
    for sent in bounded(plan.clients, sends, |(user, i)| {
        let (room, txn) = (room.clone(), format!("{run_id}h{i}"));
        async move { user.send_text(&room, &txn, &message_body(i)).await }
    })
    .await
    {
        sent?;
    }

    let reader = &senders[0];
    let mut latencies = Vec::new();
    let mut from: Option<String> = None;
    let mut messages_read = 0usize;
    let started = Instant::now();
    loop {
        let (page, took) = timed(reader.messages_back(&room, from.as_deref(), plan.page)).await;
        let page = page?;
        latencies.push(took);
        let chunk = page["chunk"].as_array().map_or(&[][..], Vec::as_slice);
        messages_read += chunk.iter().filter(|e| e["type"] == "m.room.message").count();
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
            _ => break,
        }
    }
    let wall = started.elapsed();
    if messages_read < plan.history {
        return Err(format!("back-pagination saw {messages_read} of {} messages", plan.history));
    }
    let rate = messages_read as f64 / wall.as_secs_f64();
    Ok(Outcome::new(
        &format!("/messages back, {} events", plan.history),
        &mut latencies,
        wall,
        format!("pages of {}; {rate:.0} events/s", plan.page),
    ))
}

fn message_body(i: usize) -> String {
    format!("benchmark message number {i}, about as long as a short chat line")
}

fn collect(
    name: &str,
    results: Vec<(CallResult<()>, Duration)>,
    wall: Duration,
    note: String,
) -> CallResult<Outcome> {
    let mut latencies = Vec::with_capacity(results.len());
    for (result, took) in results {
        result?;
        latencies.push(took);
    }
    Ok(Outcome::new(name, &mut latencies, wall, note))
}

/// Run `f` over `items` with at most `limit` in flight; results in item order.
pub async fn bounded<I, F, Fut, T>(limit: usize, items: Vec<I>, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    for (index, item) in items.into_iter().enumerate() {
        let permit = std::sync::Arc::clone(&semaphore).acquire_owned().await.ok();
        let job = f(item);
        set.spawn(async move {
            let out = job.await;
            drop(permit);
            (index, out)
        });
    }
    let mut out: Vec<(usize, T)> = Vec::new();
    while let Some(Ok(done)) = set.join_next().await {
        out.push(done);
    }
    out.sort_unstable_by_key(|(index, _)| *index);
    out.into_iter().map(|(_, t)| t).collect()
}

/// The number in the push scenario's users' names (apart from the other scenarios' users).
const PUSH_USERS: usize = 3_000_000;

/// A room of `push_members` users (the first is the sender); answers the sender, the others
/// and the room.
pub async fn populate_push(http: &Http, plan: &Plan) -> CallResult<(User, Vec<User>, String)> {
    let (mut users, _) =
        register_users(http, plan, PUSH_USERS, plan.push_members.max(2), plan.clients).await?;
    let sender = users.remove(0);
    let room = sender.create_public_room().await?;
    for joined in bounded(plan.clients, users.clone(), |user| {
        let room = room.clone();
        async move { user.join(&room).await }
    })
    .await
    {
        joined?;
    }
    Ok((sender, users, room))
}

/// Sequential sends into the push room, `messages` of them, as `label`.
pub async fn push_room_sends(
    plan: &Plan,
    sender: &User,
    room: &str,
    label: &str,
    tag: &str,
) -> CallResult<(Outcome, Vec<String>)> {
    let mut latencies = Vec::with_capacity(plan.push_messages);
    let mut events = Vec::with_capacity(plan.push_messages);
    let started = Instant::now();
    for i in 0..plan.push_messages {
        let (sent, took) =
            timed(sender.send_text(room, &format!("{}{tag}{i}", plan.run_id), &message_body(i))).await;
        events.push(sent?);
        latencies.push(took);
    }
    let note = format!("sequential, one room of {} members", plan.push_members.max(2));
    Ok((Outcome::new(label, &mut latencies, started.elapsed(), note), events))
}

/// Every member but the sender sets a pusher to `url`.
pub async fn set_pushers(plan: &Plan, members: &[User], url: &str) -> CallResult<()> {
    let work: Vec<(User, usize)> = members.iter().cloned().zip(0..).collect();
    for set in bounded(plan.clients, work, |(user, i)| {
        let url = url.to_owned();
        async move { user.set_pusher(&url, &format!("bench-{i}")).await }
    })
    .await
    {
        set?;
    }
    Ok(())
}

/// One message at a time: from the send request to the gateway holding a notification for
/// every other member.
pub async fn push_fan_out(
    plan: &Plan,
    sender: &User,
    room: &str,
    members: usize,
    gateway: &Gateway,
) -> CallResult<Outcome> {
    let mut latencies = Vec::new();
    let started = Instant::now();
    for run in 0..plan.push_runs {
        let begun = Instant::now();
        let event =
            sender.send_text(room, &format!("{}f{run}", plan.run_id), "a message for everyone").await?;
        if !gateway.wait_for(&event, members, Duration::from_secs(120)).await {
            return Err(format!("{event} did not reach all {members} pushers within 120 s"));
        }
        latencies.push(begun.elapsed());
    }
    let note =
        format!("{members} pushers, event_id_only, send request start → last notification at the gateway");
    Ok(Outcome::new("push, one message to every member", &mut latencies, started.elapsed(), note))
}
