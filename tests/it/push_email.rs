//! Email notifications through HTTP, with a real SMTP server: aiosmtpd (PyPI) on loopback,
//! started by each test (`tests/smtp/sink.py`), which reports every email it is handed,
//! decoded. `scripts/test` installs it in the Python it names in `CONDUIT_TEST_PYTHON`; a
//! run without it fails. The delay before an email is the server's manual clock.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use conduit::config::{Config, SmtpTls};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sdk::{provided_by_scripts_test, script},
};

const MINUTE: u64 = 60_000;
const ADDRESS: &str = "bob@example.org";

/// The SMTP server a test talks to.
struct Sink {
    port: u16,
    seen: Arc<Mutex<Vec<Value>>>,
    child: Child,
    /// Closed on drop, which ends the sink.
    _stdin: ChildStdin,
}

impl Sink {
    /// A sink answering `451` to the first `refuse` emails.
    fn start(refuse: usize) -> Self {
        let python = provided_by_scripts_test(
            "CONDUIT_TEST_PYTHON",
            "a Python with aiosmtpd (scripts/requirements-test.txt)",
        );
        let mut child = Command::new(python)
            .arg(script("smtp/sink.py"))
            .arg(refuse.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the SMTP sink starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (port_tx, port_rx) = mpsc::channel();
        let lines = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("sink said {line}"));
                if value["event"] == "listening" {
                    let _ = port_tx.send(value["port"].as_u64().unwrap() as u16);
                } else {
                    lines.lock().unwrap().push(value);
                }
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            panic!("the SMTP sink did not start: is aiosmtpd installed in CONDUIT_TEST_PYTHON? (scripts/test installs it)")
        });
        Sink { port, seen, child, _stdin: stdin }
    }

    fn emails(&self) -> Vec<Value> {
        self.seen.lock().unwrap().iter().filter(|v| v["event"] == "message").cloned().collect()
    }

    fn refused(&self) -> usize {
        self.seen.lock().unwrap().iter().filter(|v| v["event"] == "refused").count()
    }

    /// Wait (on the wall clock, as a deadline only) until `done` holds.
    async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..1000 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the SMTP server never saw {what}: {:?}", self.seen.lock().unwrap());
    }

    /// Let the server act on what it was just told, then check that no email came: absence
    /// cannot be waited for, so this gives the server a moment of wall-clock time.
    async fn none_after_a_moment(&self, what: &str, count: usize) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let emails = self.emails();
        assert_eq!(emails.len(), count, "{what}: {emails:?}");
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn smtp_on(port: u16) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| {
        config.smtp.host = Some("127.0.0.1".to_owned());
        config.smtp.port = Some(port);
        config.smtp.tls = SmtpTls::None;
        config.smtp.from = Some("Example Chat <noreply@example.org>".to_owned());
        config.smtp.timeout_secs = 5;
    }
}

async fn set_email_pusher(s: &TestServer, who: &Session, pushkey: &str) -> (StatusCode, Value) {
    s.post(
        &format!("{V3}/pushers/set"),
        Some(&who.token),
        json!({
            "kind": "email", "app_id": "m.email", "pushkey": pushkey,
            "app_display_name": "Email Notifications", "device_display_name": pushkey,
            "lang": "en", "data": {},
        }),
    )
    .await
}

/// Alice and Bob in a room named Lunch that Bob joined, Alice called "Alice A", and Bob's
/// email pusher set.
async fn dm_with_email(s: &TestServer) -> (Session, Session, String) {
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-123").await;
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alice A"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let room = create_room(
        s,
        &alice,
        json!({"is_direct": true, "invite": [bob.user_id], "name": "Lunch", "preset": "trusted_private_chat"}),
    )
    .await;
    assert_eq!(join(s, &bob, &room).await.0, StatusCode::OK);
    let (status, body) = set_email_pusher(s, &bob, ADDRESS).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (alice, bob, room)
}

fn part<'a>(email: &'a Value, kind: &str) -> &'a str {
    email["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == kind)
        .and_then(|p| p["body"].as_str())
        .unwrap_or_else(|| panic!("no {kind} part: {email}"))
}

/// The unsubscribe link's path and query, from the plain-text part.
fn unsubscribe_path(email: &Value) -> String {
    let text = part(email, "text/plain");
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/_matrix/client/unstable/pushers/remove?"))
        .unwrap_or_else(|| panic!("no unsubscribe link: {text}"));
    let at = link.find("/_matrix/").unwrap();
    link[at..].to_owned()
}

async fn pushers(s: &TestServer, who: &Session) -> Vec<Value> {
    let (status, body) = s.get(&format!("{V3}/pushers"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pushers"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_unread_message_is_emailed_once_after_the_delay() {
    let sink = Sink::start(0);
    let s = TestServer::start_with(smtp_on(sink.port)).await;
    let (alice, bob, room) = dm_with_email(&s).await;
    let listed = pushers(&s, &bob).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((&listed[0]["kind"], &listed[0]["pushkey"]), (&json!("email"), &json!(ADDRESS)));

    send_text(&s, &alice, &room, "e1", "hello bob").await;
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.encrypted/e2"),
            Some(&alice.token),
            json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "secret words", "sender_key": "k",
                   "session_id": "s", "device_id": "D"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Bob's own message notifies no one.
    send_text(&s, &bob, &room, "e3", "my own words").await;

    s.clock.advance_ms(9 * MINUTE);
    sink.none_after_a_moment("before the 10 minute delay", 0).await;
    s.clock.advance_ms(MINUTE + 1);
    sink.until("the email", |k| !k.emails().is_empty()).await;

    let email = &sink.emails()[0];
    assert_eq!(email["rcpt_tos"], json!([ADDRESS]));
    assert_eq!(email["to"], ADDRESS);
    assert_eq!(email["from"], "Example Chat <noreply@example.org>");
    assert_eq!(email["subject"], "[Matrix] 2 unread messages in Lunch", "{email}");
    let text = part(email, "text/plain");
    assert!(text.contains("Lunch"), "{text}");
    assert!(text.contains("Alice A: hello bob"), "{text}");
    assert!(text.contains("Alice A: encrypted message"), "{text}");
    assert!(!text.contains("secret words") && !text.contains("my own words"), "{text}");
    assert!(text.contains(&format!("https://matrix.to/#/{room}")), "{text}");
    let html = part(email, "text/html");
    assert!(html.contains("<b>Alice A</b>: hello bob"), "{html}");
    assert!(html.contains("<b>Alice A</b>: encrypted message"), "{html}");
    assert!(html.contains("Stop these emails"), "{html}");
    let path = unsubscribe_path(email);
    assert!(
        email["list_unsubscribe"].as_str().unwrap().contains(&path),
        "List-Unsubscribe names the same link: {email}"
    );
    assert!(path.contains("pushkey=bob%40example.org"), "{path}");

    // One email: the queue moved past what it listed.
    s.clock.advance_ms(60 * MINUTE);
    sink.none_after_a_moment("an hour later", 1).await;

    // A new message later gets an email of its own, listing only itself.
    send_text(&s, &alice, &room, "e4", "are you there?").await;
    s.clock.advance_ms(10 * MINUTE + 1);
    sink.until("the second email", |k| k.emails().len() == 2).await;
    let second = part(&sink.emails()[1], "text/plain").to_owned();
    assert!(second.contains("Alice A: are you there?") && !second.contains("hello bob"), "{second}");
}

#[tokio::test]
async fn a_message_read_before_the_delay_sends_no_email() {
    let sink = Sink::start(0);
    let s = TestServer::start_with(smtp_on(sink.port)).await;
    let (alice, bob, room) = dm_with_email(&s).await;
    let read = send_text(&s, &alice, &room, "r1", "read this soon").await;
    s.clock.advance_ms(5 * MINUTE);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{read}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    s.clock.advance_ms(10 * MINUTE);
    sink.none_after_a_moment("for a message read in time", 0).await;

    // The queue went past the read one: the next email lists only what is unread.
    send_text(&s, &alice, &room, "r2", "and this one later").await;
    s.clock.advance_ms(10 * MINUTE + 1);
    sink.until("the email of the unread message", |k| !k.emails().is_empty()).await;
    let emails = sink.emails();
    assert_eq!(emails.len(), 1, "{emails:?}");
    let text = part(&emails[0], "text/plain");
    assert!(text.contains("and this one later") && !text.contains("read this soon"), "{text}");
    assert_eq!(emails[0]["subject"], "[Matrix] 1 unread message in Lunch");
}

#[tokio::test]
async fn the_unsubscribe_link_removes_the_email_pusher_without_login() {
    let sink = Sink::start(0);
    let s = TestServer::start_with(smtp_on(sink.port)).await;
    let (alice, bob, room) = dm_with_email(&s).await;
    send_text(&s, &alice, &room, "u1", "hello").await;
    s.clock.advance_ms(10 * MINUTE + 1);
    sink.until("the email", |k| !k.emails().is_empty()).await;
    let path = unsubscribe_path(&sink.emails()[0]);

    // A token that is not this pusher's is refused, and the pusher stays.
    let forged = format!("{}AAAA", &path[..path.find("token=").unwrap() + "token=".len()]);
    expect_error(s.get(&forged, None).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let other = path.replace("app_id=m.email", "app_id=other");
    let (status, _) = s.get(&other, None).await;
    assert_eq!(status, StatusCode::OK, "a pusher that is not there is no error");
    assert_eq!(pushers(&s, &bob).await.len(), 1);

    // The link, without an access token: the pusher is gone; a second visit is fine.
    let page = s.http.get(format!("{}{path}", s.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let body = page.text().await.unwrap();
    assert!(body.contains("bob@example.org will get no more email notifications"), "{body}");
    assert!(pushers(&s, &bob).await.is_empty());
    assert_eq!(s.get(&path, None).await.0, StatusCode::OK);

    send_text(&s, &alice, &room, "u2", "still there?").await;
    s.clock.advance_ms(20 * MINUTE);
    sink.none_after_a_moment("after unsubscribing", 1).await;

    // Set again, the pusher is a new one: the old link does not remove it.
    assert_eq!(set_email_pusher(&s, &bob, ADDRESS).await.0, StatusCode::OK);
    expect_error(s.get(&path, None).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(pushers(&s, &bob).await.len(), 1);
}

#[tokio::test]
async fn a_failing_smtp_server_is_retried_with_backoff() {
    let sink = Sink::start(2);
    let s = TestServer::start_with(smtp_on(sink.port)).await;
    let (alice, _bob, room) = dm_with_email(&s).await;
    send_text(&s, &alice, &room, "f1", "when you can").await;
    s.clock.advance_ms(10 * MINUTE + 1);
    sink.until("a first attempt", |k| k.refused() >= 1).await;
    // Retries wait on the server's clock (1 s, 2 s, ...): none comes while it stands still.
    sink.none_after_a_moment("before the clock moves", 0).await;
    assert_eq!(sink.refused(), 1);
    s.advance_until(MINUTE, "a retry", || sink.refused() >= 2).await;
    assert!(sink.emails().is_empty());
    s.advance_until(MINUTE, "the email once the server takes it", || !sink.emails().is_empty()).await;
    assert!(part(&sink.emails()[0], "text/plain").contains("Alice A: when you can"));
    sink.none_after_a_moment("after the success", 1).await;
}

#[tokio::test]
async fn email_pushers_are_refused_without_smtp_and_need_an_address() {
    let off = TestServer::start().await;
    let bob = off.register("bob", "pw-bob-123").await;
    let refused =
        expect_error(set_email_pusher(&off, &bob, ADDRESS).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    assert!(refused["error"].as_str().unwrap().contains("SMTP"), "{refused}");
    assert!(pushers(&off, &bob).await.is_empty());
    expect_error(
        off.get(
            "/_matrix/client/unstable/pushers/remove?user_id=@bob:localhost&app_id=a&pushkey=b&token=c",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );

    // The SMTP server is not reached when a pusher is set.
    let on = TestServer::start_with(smtp_on(9)).await;
    let carol = on.register("carol", "pw-carol-123").await;
    for bad in ["not an address", "carol", "carol@", "@example.org", "a@b@c"] {
        let refused = expect_error(
            set_email_pusher(&on, &carol, bad).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
        assert!(refused["error"].as_str().unwrap().contains("email address"), "{bad}: {refused}");
    }
    assert!(pushers(&on, &carol).await.is_empty());
    assert_eq!(set_email_pusher(&on, &carol, "carol@example.org").await.0, StatusCode::OK);
    expect_error(
        on.get("/_matrix/client/unstable/pushers/remove?user_id=@carol:localhost&app_id=m.email", None).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
}
