//! Email notifications: each pusher of kind `email` (its push key the address) is an outbox
//! queue over its user's notifications, as Synapse's email pushers are. Nothing is sent
//! while the oldest unread notification is younger than `smtp.notif_delay_before_mail`;
//! once it is older and still unread, one email lists every unread notification pending
//! (room, sender's display name, message text; encrypted events as "encrypted message"), as
//! plain text and HTML, and the queue moves past them all. A notification of a room the user
//! has read since is skipped. Each email carries a link that deletes its pusher without a
//! login, authorised by a token: an HMAC over the pusher's identity and creation time with a
//! key generated on first start, so a link dies with its pusher. An SMTP server that is down
//! or answers `4xx` is retried by the outbox; a `5xx` drops that email.
//!
//! The SMTP server is the operator's, so it is not behind the outbound address guard.
//! Owns the `email_secrets` table.

use std::{collections::HashMap, fmt::Write as _, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart,
        header::{HeaderName, HeaderValue},
    },
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
        extension::ClientId,
    },
};
use rand::RngCore;
use ring::hmac;
use ruma::{OwnedRoomId, RoomId, UserId, events::StateEventType};
use serde_json::Value as JsonValue;

use super::{
    clock::Clock,
    outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
    push::{Notifications, parse_pusher_queue, pusher_kind, pusher_queue, user_queues},
    rooms::{events::Events, state::RoomStates, state::StateMap},
    stream::Stream,
};
use crate::{
    Error, Result,
    config::{Config, SmtpTls},
    matrix::html::{escape, escape_lines},
    storage::{
        KvStore, Table,
        tables::{EMAIL_SECRETS, NotificationRecord, PusherRecord},
    },
};

/// The path of the unsubscribe link (Synapse serves its own at the same path).
pub const UNSUBSCRIBE_PATH: &str = "/_matrix/client/unstable/pushers/remove";
/// The `email_secrets` row holding the unsubscribe tokens' key.
const UNSUBSCRIBE_KEY: &str = "unsubscribe";
/// Most notifications one email lists; more go in the next one.
const DIGEST_SIZE: usize = 50;
/// Most characters of a message's text an email quotes.
const MAX_BODY_CHARS: usize = 600;
/// Most members named for a room without a name or alias.
const NAMED_MEMBERS: usize = 3;

/// What one email queue delivers.
pub enum EmailParcel {
    /// A notification still unread.
    Unread(NotificationRecord),
    /// A notification of a room read since: not emailed, the queue moves past it.
    Read,
}

pub struct EmailNotifier {
    outbox: Arc<Outbox>,
    notifications: Arc<Notifications>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    delay_ms: u64,
    app_name: String,
    /// The unsubscribe link up to its query.
    unsubscribe_url: String,
    client_base_url: String,
    unsubscribe_key: hmac::Key,
}

/// One email's content.
struct Digest {
    app_name: String,
    user_id: String,
    rooms: Vec<RoomDigest>,
    unsubscribe: String,
}

struct RoomDigest {
    name: String,
    link: String,
    messages: Vec<(String, String)>,
}

impl EmailNotifier {
    /// The notifier, when `smtp.host` is configured; `None` turns email pushers off.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        store: &Arc<dyn KvStore>,
        outbox: Arc<Outbox>,
        notifications: Arc<Notifications>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Self>> {
        let smtp = &config.smtp;
        let Some(host) = smtp.host.clone() else { return Ok(None) };
        let from: Mailbox = smtp
            .from
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| Error::internal(format!("smtp.from: {e}")))?;
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|e| Error::internal(format!("SMTP TLS: {e}")))
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(smtp.port())
            .timeout(Some(Duration::from_secs(smtp.timeout_secs)))
            .hello_name(ClientId::Domain(config.server_name.to_string()));
        builder = match smtp.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::Starttls => builder.tls(Tls::Required(tls(&host)?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls(&host)?)),
        };
        if let (Some(user), Some(password)) = (&smtp.user, &smtp.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let base = smtp
            .public_baseurl
            .clone()
            .or_else(|| config.well_known.client.clone())
            .unwrap_or_else(|| format!("https://{}", config.server_name));
        Ok(Some(Self {
            outbox,
            notifications,
            events,
            states,
            stream,
            clock,
            transport: builder.build(),
            from,
            delay_ms: smtp.notif_delay_before_mail.as_millis(),
            app_name: smtp.app_name.clone(),
            unsubscribe_url: format!("{}{UNSUBSCRIBE_PATH}", base.trim_end_matches('/')),
            client_base_url: smtp.client_base_url.trim_end_matches('/').to_owned(),
            unsubscribe_key: unsubscribe_key(&EMAIL_SECRETS.open(store))?,
        }))
    }

    /// What `POST /pushers/set` refuses of an email pusher: a push key that is not an
    /// email address.
    pub fn check(&self, pushkey: &str) -> Result<()> {
        pushkey.parse::<Address>().map(drop).map_err(|_| {
            Error::invalid_param(format!(
                "An email pusher's pushkey must be an email address, not {pushkey:?}"
            ))
        })
    }

    /// Give a pusher a queue (a new one starts from now; `restart` replaces its place) and
    /// run it.
    pub fn open(
        self: &Arc<Self>,
        user_id: &UserId,
        app_id: &str,
        pushkey: &str,
        restart: bool,
    ) -> Result<()> {
        let queue = pusher_queue(user_id, app_id, pushkey);
        self.outbox.open(Self::KIND, &queue, self.stream.committed(), restart)?;
        self.outbox.run(self, &queue);
        Ok(())
    }

    /// Ring one pusher's queue (it finds its pusher changed or gone).
    pub fn ring(&self, user_id: &UserId, app_id: &str, pushkey: &str) {
        self.outbox.ring(Self::KIND, &pusher_queue(user_id, app_id, pushkey));
    }

    /// Events notified this user: their queues learn when the oldest falls due.
    pub fn notified(&self, user_id: &UserId) {
        self.outbox.ring(Self::KIND, &user_queues(user_id));
    }

    /// The token of a pusher's unsubscribe link.
    fn token(&self, user_id: &UserId, app_id: &str, pushkey: &str, created_ms: u64) -> String {
        let tag = hmac::sign(&self.unsubscribe_key, &token_input(user_id, app_id, pushkey, created_ms));
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    }

    /// The unsubscribe link of a pusher.
    fn unsubscribe_link(&self, user_id: &UserId, app_id: &str, pushkey: &str, created_ms: u64) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("user_id", user_id.as_str())
            .append_pair("app_id", app_id)
            .append_pair("pushkey", pushkey)
            .append_pair("token", &self.token(user_id, app_id, pushkey, created_ms))
            .finish();
        format!("{}?{query}", self.unsubscribe_url)
    }

    /// Delete an email pusher from its unsubscribe link. A pusher already gone is no error
    /// (the link may be followed twice); a token that is not this pusher's is refused.
    pub fn unsubscribe(&self, user_id: &UserId, app_id: &str, pushkey: &str, token: &str) -> Result<()> {
        let Some(record) = self.notifications.pusher(user_id, app_id, pushkey)? else { return Ok(()) };
        let tag = URL_SAFE_NO_PAD.decode(token).unwrap_or_default();
        let input = token_input(user_id, app_id, pushkey, record.created_ms);
        if pusher_kind(&record).as_deref() != Some("email")
            || hmac::verify(&self.unsubscribe_key, &input, &tag).is_err()
        {
            return Err(Error::forbidden("This unsubscribe link is not valid"));
        }
        self.notifications.remove_pusher(user_id, app_id, pushkey)?;
        self.ring(user_id, app_id, pushkey);
        tracing::info!(user = %user_id, "email pusher removed by its unsubscribe link");
        Ok(())
    }

    /// The email for `unread`, or `None` when none of their events is left.
    fn compose(
        &self,
        user_id: &UserId,
        app_id: &str,
        record: &PusherRecord,
        pushkey: &str,
        unread: &[&NotificationRecord],
    ) -> Result<Option<Digest>> {
        let mut rooms: Vec<RoomDigest> = Vec::new();
        let mut index: HashMap<OwnedRoomId, usize> = HashMap::new();
        let mut states: HashMap<OwnedRoomId, Arc<StateMap>> = HashMap::new();
        for notification in unread {
            let Some(event) = self.events.get(&notification.event_id)? else { continue };
            let pdu = &event.pdu;
            if !states.contains_key(&pdu.room_id) {
                states.insert(pdu.room_id.clone(), self.states.current_state(&pdu.room_id)?);
            }
            let state = &states[&pdu.room_id];
            let sender =
                self.member_name(state, pdu.sender.as_str())?.unwrap_or_else(|| pdu.sender.to_string());
            let text =
                describe(&pdu.kind.to_string(), &pdu.content_value(), pdu.state_key.as_deref(), user_id);
            let at = match index.get(&pdu.room_id) {
                Some(at) => *at,
                None => {
                    rooms.push(RoomDigest {
                        name: self.room_name(state, user_id)?,
                        link: self.room_link(&pdu.room_id),
                        messages: Vec::new(),
                    });
                    index.insert(pdu.room_id.clone(), rooms.len() - 1);
                    rooms.len() - 1
                }
            };
            rooms[at].messages.push((sender, text));
        }
        if rooms.is_empty() {
            return Ok(None);
        }
        Ok(Some(Digest {
            app_name: self.app_name.clone(),
            user_id: user_id.to_string(),
            rooms,
            unsubscribe: self.unsubscribe_link(user_id, app_id, pushkey, record.created_ms),
        }))
    }

    fn state_string(
        &self,
        state: &StateMap,
        kind: StateEventType,
        key: &str,
        field: &str,
    ) -> Result<Option<String>> {
        let Some(id) = state.get(&(kind, key.to_owned())) else { return Ok(None) };
        Ok(self.events.get(id)?.and_then(|e| {
            e.pdu
                .content_value()
                .get(field)
                .and_then(JsonValue::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        }))
    }

    fn member_name(&self, state: &StateMap, user: &str) -> Result<Option<String>> {
        self.state_string(state, StateEventType::RoomMember, user, "displayname")
    }

    /// The room's name, else its alias, else who else is in it.
    fn room_name(&self, state: &StateMap, user_id: &UserId) -> Result<String> {
        if let Some(name) = self.state_string(state, StateEventType::RoomName, "", "name")? {
            return Ok(name);
        }
        if let Some(alias) = self.state_string(state, StateEventType::RoomCanonicalAlias, "", "alias")? {
            return Ok(alias);
        }
        let mut others: Vec<&str> = state
            .keys()
            .filter(|(kind, key)| *kind == StateEventType::RoomMember && key != user_id.as_str())
            .map(|(_, key)| key.as_str())
            .collect();
        others.sort_unstable();
        let mut names = Vec::new();
        for user in others {
            let Some(id) = state.get(&(StateEventType::RoomMember, user.to_owned())) else { continue };
            let joined = self.events.get(id)?.is_some_and(|e| {
                matches!(
                    e.pdu.content_value().get("membership").and_then(JsonValue::as_str),
                    Some("join" | "invite")
                )
            });
            if joined {
                names.push(self.member_name(state, user)?.unwrap_or_else(|| user.to_owned()));
                if names.len() == NAMED_MEMBERS {
                    break;
                }
            }
        }
        Ok(if names.is_empty() { "a room".to_owned() } else { names.join(", ") })
    }

    fn room_link(&self, room_id: &RoomId) -> String {
        if self.client_base_url == "https://matrix.to" {
            format!("https://matrix.to/#/{room_id}")
        } else {
            format!("{}/#/room/{room_id}", self.client_base_url)
        }
    }

    fn message(&self, to: &str, digest: &Digest) -> std::result::Result<Message, String> {
        let to: Mailbox = to.parse().map_err(|e| format!("the address is not valid: {e}"))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(digest.subject())
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{}>", digest.unsubscribe),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ))
            .multipart(MultiPart::alternative_plain_html(digest.text(), digest.html()))
            .map_err(|e| format!("building the email failed: {e}"))
    }

    async fn send(&self, message: Message) -> Delivery {
        match self.transport.send(message).await {
            Ok(_) => Delivery::Done,
            // 5xx: the SMTP server refused this email for good.
            Err(e) if e.is_permanent() => Delivery::Dropped(format!("SMTP server refused the email: {e}")),
            Err(e) => Delivery::Retry(format!("SMTP server unavailable: {e}")),
        }
    }
}

/// The HMAC key of unsubscribe tokens: stored, or made and stored on first use.
fn unsubscribe_key(secrets: &Table<String, String>) -> Result<hmac::Key> {
    let stored = secrets.get(&UNSUBSCRIBE_KEY.to_owned())?;
    let key = match stored.map(|s| STANDARD.decode(s)) {
        Some(Ok(key)) if key.len() == 32 => key,
        Some(_) => return Err(Error::internal("stored email unsubscribe key is corrupt")),
        None => {
            let mut key = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            secrets.insert(&UNSUBSCRIBE_KEY.to_owned(), &STANDARD.encode(&key))?;
            key
        }
    };
    Ok(hmac::Key::new(hmac::HMAC_SHA256, &key))
}

/// What an unsubscribe token signs: the pusher and when it was first set, so a link dies
/// with its pusher and does not work for one set again later.
fn token_input(user_id: &UserId, app_id: &str, pushkey: &str, created_ms: u64) -> Vec<u8> {
    serde_json::json!([user_id, app_id, pushkey, created_ms]).to_string().into_bytes()
}

/// How an email tells of one event.
fn describe(kind: &str, content: &JsonValue, state_key: Option<&str>, user_id: &UserId) -> String {
    let text = |field: &str| content.get(field).and_then(JsonValue::as_str).unwrap_or_default();
    match kind {
        "m.room.encrypted" => "encrypted message".to_owned(),
        "m.room.message" => match text("msgtype") {
            "m.image" => "sent an image".to_owned(),
            "m.video" => "sent a video".to_owned(),
            "m.audio" => "sent an audio message".to_owned(),
            "m.file" => "sent a file".to_owned(),
            "m.emote" => format!("* {}", shorten(text("body"))),
            _ => shorten(text("body")),
        },
        "m.sticker" => "sent a sticker".to_owned(),
        "m.room.member" if text("membership") == "invite" && state_key == Some(user_id.as_str()) => {
            "invited you to the room".to_owned()
        }
        "m.call.invite" => "is calling".to_owned(),
        other => format!("sent an event of type {other}"),
    }
}

fn shorten(body: &str) -> String {
    match body.char_indices().nth(MAX_BODY_CHARS) {
        Some((at, _)) => format!("{}…", &body[..at]),
        None => body.to_owned(),
    }
}

impl Digest {
    fn count(&self) -> usize {
        self.rooms.iter().map(|r| r.messages.len()).sum()
    }

    fn subject(&self) -> String {
        let n = self.count();
        let messages = if n == 1 { "1 unread message".to_owned() } else { format!("{n} unread messages") };
        let first = &self.rooms[0].name;
        match self.rooms.len() {
            1 => format!("[{}] {messages} in {first}", self.app_name),
            2 => format!("[{}] {messages} in {first} and 1 other room", self.app_name),
            rooms => format!("[{}] {messages} in {first} and {} other rooms", self.app_name, rooms - 1),
        }
    }

    fn text(&self) -> String {
        let mut out = format!("You have unread messages on {} ({}):\n", self.app_name, self.user_id);
        for room in &self.rooms {
            let _ = write!(out, "\n{} — {}\n", room.name, room.link);
            for (sender, text) in &room.messages {
                let _ = writeln!(out, "  {sender}: {}", text.replace('\n', "\n    "));
            }
        }
        let _ = write!(out, "\nTo stop these emails, open:\n{}\n", self.unsubscribe);
        out
    }

    fn html(&self) -> String {
        let mut out = format!(
            "<!DOCTYPE html>\n<html><body>\n<p>You have unread messages on {} ({}):</p>\n",
            escape(&self.app_name),
            escape(&self.user_id)
        );
        for room in &self.rooms {
            let _ =
                writeln!(out, "<h3><a href=\"{}\">{}</a></h3>\n<ul>", escape(&room.link), escape(&room.name));
            for (sender, text) in &room.messages {
                let _ = writeln!(out, "<li><b>{}</b>: {}</li>", escape(sender), escape_lines(text));
            }
            out.push_str("</ul>\n");
        }
        let _ = writeln!(
            out,
            "<p><a href=\"{}\">Stop these emails</a></p>\n</body></html>",
            escape(&self.unsubscribe)
        );
        out
    }
}

impl Courier for EmailNotifier {
    type Parcel = EmailParcel;
    const KIND: &'static str = "email";
    const BATCH: usize = DIGEST_SIZE;

    fn pending(&self, destination: &str, after: u64, limit: usize) -> Result<Option<Parcels<EmailParcel>>> {
        let Some((user_id, app_id, pushkey)) = parse_pusher_queue(destination) else { return Ok(None) };
        let Some(record) = self.notifications.pusher(&user_id, &app_id, &pushkey)? else { return Ok(None) };
        if pusher_kind(&record).as_deref() != Some("email") {
            return Ok(None);
        }
        Ok(Some(
            self.notifications
                .pending_after(&user_id, after, limit)?
                .into_iter()
                .map(|(stream, record, read)| {
                    (stream, if read { EmailParcel::Read } else { EmailParcel::Unread(record) })
                })
                .collect(),
        ))
    }

    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, EmailParcel)]) -> Delivering<'a> {
        Box::pin(async move {
            let Some((user_id, app_id, pushkey)) = parse_pusher_queue(destination) else {
                return Delivery::Gone("not a pusher".to_owned());
            };
            let record = match self.notifications.pusher(&user_id, &app_id, &pushkey) {
                Ok(Some(record)) if pusher_kind(&record).as_deref() == Some("email") => record,
                Ok(_) => return Delivery::Gone("email pusher removed".to_owned()),
                Err(e) => return Delivery::Retry(format!("reading the pusher failed: {e}")),
            };
            let unread: Vec<&NotificationRecord> = parcels
                .iter()
                .filter_map(|(_, p)| match p {
                    EmailParcel::Unread(record) => Some(record),
                    EmailParcel::Read => None,
                })
                .collect();
            let Some(oldest) = unread.iter().map(|r| r.ts).min() else { return Delivery::Done };
            let due = oldest.saturating_add(self.delay_ms);
            if self.clock.now_ms() < due {
                return Delivery::NotBefore(due);
            }
            let digest = match self.compose(&user_id, &app_id, &record, &pushkey, &unread) {
                Ok(Some(digest)) => digest,
                Ok(None) => return Delivery::Done,
                Err(e) => return Delivery::Retry(format!("composing the email failed: {e}")),
            };
            match self.message(&pushkey, &digest) {
                Ok(message) => self.send(message).await,
                Err(why) => Delivery::Dropped(why),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Digest {
        Digest {
            app_name: "Matrix".to_owned(),
            user_id: "@bob:example.org".to_owned(),
            rooms: vec![
                RoomDigest {
                    name: "Lunch <& co>".to_owned(),
                    link: "https://matrix.to/#/!r:example.org".to_owned(),
                    messages: vec![
                        ("Alice".to_owned(), "<script>alert(1)</script>".to_owned()),
                        ("Alice".to_owned(), "encrypted message".to_owned()),
                    ],
                },
                RoomDigest {
                    name: "Other".to_owned(),
                    link: "l".to_owned(),
                    messages: vec![("C".to_owned(), "x".to_owned())],
                },
            ],
            unsubscribe: "https://m.example.org/u?a=1&b=2".to_owned(),
        }
    }

    #[test]
    fn the_html_part_escapes_what_users_wrote() {
        let html = digest().html();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("Lunch &lt;&amp; co&gt;"), "{html}");
        assert!(html.contains("href=\"https://m.example.org/u?a=1&amp;b=2\""), "{html}");
        let text = digest().text();
        assert!(text.contains("  Alice: <script>alert(1)</script>"), "{text}");
        assert!(text.contains("https://m.example.org/u?a=1&b=2"), "{text}");
        assert_eq!(digest().subject(), "[Matrix] 3 unread messages in Lunch <& co> and 1 other room");
    }

    #[test]
    fn events_are_described_without_leaking_what_is_encrypted() {
        let bob = UserId::parse("@bob:example.org").unwrap();
        let json = |v: &str| serde_json::from_str::<JsonValue>(v).unwrap();
        for (kind, content, state_key, expected) in [
            ("m.room.encrypted", r#"{"ciphertext":"abc"}"#, None, "encrypted message"),
            ("m.room.message", r#"{"msgtype":"m.text","body":"hi"}"#, None, "hi"),
            ("m.room.message", r#"{"msgtype":"m.emote","body":"waves"}"#, None, "* waves"),
            ("m.room.message", r#"{"msgtype":"m.image","body":"cat.png"}"#, None, "sent an image"),
            (
                "m.room.member",
                r#"{"membership":"invite"}"#,
                Some("@bob:example.org"),
                "invited you to the room",
            ),
            ("org.example", r#"{}"#, None, "sent an event of type org.example"),
        ] {
            assert_eq!(describe(kind, &json(content), state_key, &bob), expected, "{kind} {content}");
        }
        let long = "é".repeat(MAX_BODY_CHARS + 10);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), MAX_BODY_CHARS + 1);
    }
}
