//! Big rooms: many members long-polling one room (`fan-out`), and joining and sending into a
//! room of ten thousand (`big-room`). Users are made through the appservice registration when
//! `--appservice` is given (one request each, no password hash, a device and token each, on
//! both servers alike), else through the usual registration.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{
    sync::{Mutex, mpsc, watch},
    task::JoinSet,
};

use crate::{
    appservice::Registration,
    client::{CallResult, Http, User, encode, timed},
    process,
    report::Outcome,
    scenarios::{self, Plan},
};

/// The number in the big-room scenarios' users' names (apart from the other scenarios').
const FAN_OUT_USERS: usize = 4_000_000;
const BIG_ROOM_USERS: usize = 5_000_000;
pub const FED_USERS: usize = 6_000_000;
pub const FED_JOIN_USERS: usize = 7_000_000;

/// The filter the fan-out pollers sync with: Element's (lazy-loaded members, a timeline of
/// 20), unique to this run so that no response cache answers in the server's place.
fn poller_filter(run_id: &str) -> String {
    let filter = json!({
        "room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 20}},
        "presence": {"not_types": [format!("x.bench.{run_id}")]},
    });
    encode(&filter.to_string())
}

/// `count` users numbered from `first`: through the appservice (`@bench_<run><n>`) when one
/// is given, else registered with a password.
pub async fn provision(
    http: &Http,
    plan: &Plan,
    appservice: Option<&Registration>,
    first: usize,
    count: usize,
) -> CallResult<Vec<User>> {
    let Some(reg) = appservice else {
        let (users, _) = scenarios::register_users(http, plan, first, count, plan.clients).await?;
        return Ok(users);
    };
    let names: Vec<String> = (first..first + count).map(|i| format!("bench_{}x{i}", plan.run_id)).collect();
    let token = reg.as_token.clone();
    scenarios::bounded(plan.clients, names, |name| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let body = json!({"type": "m.login.application_service", "username": name});
            let (status, value) = http.call(Method::POST, "/register", Some(&token), Some(&body)).await?;
            if status != StatusCode::OK {
                return Err(format!("appservice register {name}: {status}: {value}"));
            }
            let token = value["access_token"]
                .as_str()
                .ok_or_else(|| format!("appservice register {name}: no access_token in {value}"))?;
            Ok(User::with_token(&http, token.to_owned()))
        }
    })
    .await
    .into_iter()
    .collect()
}

/// RSS growth per item in KiB, when both readings exist and it grew.
fn per_item_kib(before: Option<f64>, after: Option<f64>, items: usize) -> Option<f64> {
    let grew = after? - before?;
    (grew > 0.0).then(|| grew * 1024.0 / items.max(1) as f64)
}

fn kib_note(what: &str, per: Option<f64>) -> String {
    per.map_or_else(String::new, |kib| format!("; {what} {kib:.1} KiB each (RSS delta)"))
}

/// One poller's report: the run whose message it received and when.
struct Heard {
    run: usize,
    at: Instant,
}

/// `fanout_members` users in one room, each long-polling `/sync` as Element does (lazy-loaded
/// members, presence on); one message at a time from another member, timed from its send
/// request to each poller's response holding it, `fanout_runs` times. Before each message
/// the pollers are left to settle (no response for a second), so presence changes of their
/// first syncs do not mix with the message.
pub async fn fan_out(
    http: &Http,
    plan: &Plan,
    appservice: Option<&Registration>,
    pid: Option<u32>,
) -> CallResult<Outcome> {
    let rss = || pid.and_then(process::rss_mib);
    let members = plan.fanout_members.max(1);
    let before_users = rss();
    let mut users = provision(http, plan, appservice, FAN_OUT_USERS, members + 1).await?;
    let per_user = per_item_kib(before_users, rss(), members + 1);
    let sender = users.remove(0);
    let room = scenarios::public_room_with(plan, &sender, &users).await?;
    let filter = poller_filter(&plan.run_id);
    // Each member's first sync (untimed) gives the token its long-poll starts from.
    let tokens = scenarios::bounded(plan.clients, users.clone(), |user| {
        let filter = filter.clone();
        async move {
            let body = user.sync(&format!("filter={filter}&timeout=0")).await?;
            body["next_batch"].as_str().map(str::to_owned).ok_or_else(|| "sync: no next_batch".to_owned())
        }
    })
    .await
    .into_iter()
    .collect::<CallResult<Vec<String>>>()?;

    let before_polls = rss();
    let started = Instant::now();
    // The body each run's message carries: pollers recognise it before the send's answer.
    let (target_tx, target_rx) = watch::channel::<Option<(usize, String)>>(None);
    let (heard_tx, mut heard_rx) = mpsc::unbounded_channel::<Heard>();
    let last_answer = Arc::new(std::sync::Mutex::new(Instant::now()));
    let polling = Arc::new(AtomicUsize::new(0));
    let failure = Arc::new(Mutex::new(None::<String>));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut pollers = JoinSet::new();
    for (user, since) in users.iter().cloned().zip(tokens) {
        let (room, filter) = (room.clone(), filter.clone());
        let (target, heard) = (target_rx.clone(), heard_tx.clone());
        let (last_answer, polling, failure) = (last_answer.clone(), polling.clone(), failure.clone());
        let errors = errors.clone();
        pollers.spawn(async move {
            let mut since = since;
            let mut counted = false;
            let mut reported = None;
            loop {
                if !counted {
                    polling.fetch_add(1, Ordering::Relaxed);
                    counted = true;
                }
                let query = format!("filter={filter}&timeout=30000&since={}", encode(&since));
                let body = match user.sync(&query).await {
                    Ok(body) => body,
                    Err(e) => {
                        // A connection the server closed while idle, say: counted and reported,
                        // and polled again (its response would hold the message all the same).
                        errors.fetch_add(1, Ordering::Relaxed);
                        failure.lock().await.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                *last_answer.lock().unwrap_or_else(|p| p.into_inner()) = at;
                since = body["next_batch"].as_str().unwrap_or(&since).to_owned();
                let wanted = target.borrow().clone();
                if let Some((run, text)) = wanted
                    && reported != Some(run)
                    && holds_body(&body, &room, &text)
                {
                    reported = Some(run);
                    let _ = heard.send(Heard { run, at });
                }
            }
        });
    }
    drop(heard_tx);

    let cpu = || pid.and_then(process::cpu_seconds);
    let mut latencies = Vec::new();
    let mut last_served = Vec::new();
    let mut cpu_per_poll = Vec::new();
    let mut parked_rss = None;
    for run in 0..plan.fanout_runs.max(1) {
        settle(&last_answer, &polling, members, Duration::from_secs(1), Duration::from_secs(300)).await;
        if run == 0 {
            parked_rss = rss();
        }
        let text = format!("{} fan-out message {run}", plan.run_id);
        target_tx.send_replace(Some((run, text.clone())));
        let cpu_before = cpu();
        let sent_at = Instant::now();
        sender.send_text(&room, &format!("{}fo{run}", plan.run_id), &text).await?;
        let mut got = 0;
        let mut slowest = Duration::ZERO;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while got < members {
            match tokio::time::timeout_at(deadline, heard_rx.recv()).await {
                Ok(Some(h)) if h.run == run => {
                    let took = h.at.saturating_duration_since(sent_at);
                    slowest = slowest.max(took);
                    latencies.push(took);
                    got += 1;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let failed = failure.lock().await.clone().unwrap_or_else(|| "none failed".to_owned());
                    return Err(format!(
                        "run {run}: {got} of {members} pollers received the message within {:.0} s ({failed})",
                        sent_at.elapsed().as_secs_f64()
                    ));
                }
            }
        }
        last_served.push(slowest);
        if let (Some(a), Some(b)) = (cpu_before, cpu()) {
            cpu_per_poll.push((b - a) * 1000.0 / members as f64);
        }
    }
    pollers.abort_all();
    let wall = started.elapsed();
    let mut sorted = last_served.clone();
    sorted.sort_unstable();
    let median_last = sorted[sorted.len() / 2];
    let lasts: Vec<String> = last_served.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect();
    let cpu_note = if cpu_per_poll.is_empty() {
        String::new()
    } else {
        cpu_per_poll.sort_by(f64::total_cmp);
        format!("; server CPU {:.2} ms per woken poll (median)", cpu_per_poll[cpu_per_poll.len() / 2])
    };
    let failed = errors.load(Ordering::Relaxed);
    let error_note = match failure.lock().await.clone() {
        Some(first) if failed > 0 => format!("; {failed} polls failed and were repeated (first: {first})"),
        _ => String::new(),
    };
    let note = format!(
        "{members} pollers (lazy members, presence on); last response per run {} ms, median {:.0} ms{cpu_note}{}{}{error_note}",
        lasts.join("/"),
        median_last.as_secs_f64() * 1000.0,
        kib_note("users", per_user),
        kib_note("parked long-polls", per_item_kib(before_polls, parked_rss, members)),
    );
    Ok(Outcome::new(&format!("fan-out, 1 message to {members} long-polls"), &mut latencies, wall, note))
}

/// Wait until every poller has a long-poll out and none has answered for `quiet`, or `limit`.
async fn settle(
    last_answer: &std::sync::Mutex<Instant>,
    polling: &AtomicUsize,
    pollers: usize,
    quiet: Duration,
    limit: Duration,
) {
    let give_up = Instant::now() + limit;
    while Instant::now() < give_up {
        let last = *last_answer.lock().unwrap_or_else(|p| p.into_inner());
        if polling.load(Ordering::Relaxed) >= pollers && last.elapsed() >= quiet {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a sync response holds a message with this body in the room's timeline.
fn holds_body(sync: &Value, room: &str, text: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["content"]["body"] == text))
}

/// Joins timed one after another, by `users` in turn.
async fn timed_joins(users: &[User], room: &str) -> CallResult<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(users.len());
    for user in users {
        let (joined, took) = timed(user.join(room)).await;
        joined?;
        latencies.push(took);
    }
    Ok(latencies)
}

/// A room of `big_members` members: the joins of its 2nd to 21st members and of its last 20,
/// one after another (the rest join concurrently, untimed), then `big_messages` messages sent
/// one after another into it by its creator.
pub async fn big_room(
    http: &Http,
    plan: &Plan,
    appservice: Option<&Registration>,
    pid: Option<u32>,
) -> CallResult<Vec<Outcome>> {
    let rss = || pid.and_then(process::rss_mib);
    let members = plan.big_members.max(42);
    let before = rss();
    let users = provision(http, plan, appservice, BIG_ROOM_USERS, members).await?;
    let per_user = per_item_kib(before, rss(), members);
    let room = users[0].create_public_room().await?;
    let started = Instant::now();
    let mut first = timed_joins(&users[1..21], &room).await?;
    let first_wall = started.elapsed();
    let middle = users[21..members - 20].to_vec();
    for joined in scenarios::bounded(plan.clients, middle, |user| {
        let room = room.clone();
        async move { user.join(&room).await }
    })
    .await
    {
        joined?;
    }
    let started = Instant::now();
    let mut last = timed_joins(&users[members - 20..], &room).await?;
    let last_wall = started.elapsed();
    let mut latencies = Vec::with_capacity(plan.big_messages);
    let started = Instant::now();
    for i in 0..plan.big_messages {
        let (sent, took) = timed(users[0].send_text(
            &room,
            &format!("{}bs{i}", plan.run_id),
            &format!("a message to all {members} members, number {i}"),
        ))
        .await;
        sent?;
        latencies.push(took);
    }
    let send_wall = started.elapsed();
    let first_join = Outcome::new(
        "join, members 2-21",
        &mut first,
        first_wall,
        format!("one after another into a new room{}", kib_note("registered users", per_user)),
    );
    let mut last_join = Outcome::new(
        &format!("join, members {}-{members}", members - 19),
        &mut last,
        last_wall,
        String::new(),
    );
    let ratio = last_join.p50_ms / first_join.p50_ms.max(f64::MIN_POSITIVE);
    last_join.note = format!("one after another; p50 {ratio:.1}× that of members 2-21");
    let send = Outcome::new(
        &format!("send, {members}-member room"),
        &mut latencies,
        send_wall,
        "sequential, by the room's creator".to_owned(),
    );
    Ok(vec![first_join, last_join, send])
}
