//! Event filters (the spec's `Filter` and `RoomEventFilter`): which events, rooms and
//! fields a client asked for. Pure matching, used by sync, history and search.

use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::filter::{Filter, RoomEventFilter, UrlFilter},
};
use serde_json::{Map, Value as JsonValue};

/// Whether an event type matches a filter pattern; `*` matches any run of characters.
/// Greedy with one backtrack point, so linear in pattern × type length whatever the stars.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    let (p, k) = (pattern.as_bytes(), kind.as_bytes());
    let (mut pi, mut ki) = (0, 0);
    // Where the last `*` was and how much of the type it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ki));
            pi += 1;
        } else if pi < p.len() && p[pi] == k[ki] {
            pi += 1;
            ki += 1;
        } else if let Some((star_at, swallowed)) = star {
            pi = star_at + 1;
            ki = swallowed + 1;
            star = Some((star_at, swallowed + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

fn types_allowed(types: Option<&[String]>, not_types: &[String], kind: &str) -> bool {
    if not_types.iter().any(|p| type_matches(p, kind)) {
        return false;
    }
    types.is_none_or(|types| types.iter().any(|p| type_matches(p, kind)))
}

fn senders_allowed(
    senders: Option<&[ruma::OwnedUserId]>,
    not_senders: &[ruma::OwnedUserId],
    sender: &UserId,
) -> bool {
    if not_senders.iter().any(|s| s == sender) {
        return false;
    }
    senders.is_none_or(|senders| senders.iter().any(|s| s == sender))
}

/// Whether a room passes a `rooms`/`not_rooms` pair.
pub fn room_allowed(rooms: Option<&[OwnedRoomId]>, not_rooms: &[OwnedRoomId], room_id: &RoomId) -> bool {
    if not_rooms.iter().any(|r| r == room_id) {
        return false;
    }
    rooms.is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
}

/// Whether a room event passes a room event filter.
pub fn room_event_allowed(
    filter: &RoomEventFilter,
    room_id: &RoomId,
    sender: &UserId,
    kind: &str,
    content: &JsonValue,
) -> bool {
    room_event_passes(filter, room_id, sender, kind, || content.get("url").is_some_and(JsonValue::is_string))
}

/// [`room_event_allowed`] for an event whose content is looked at only when the filter asks
/// about URLs: `has_url` says whether its content has a string `url`.
pub fn room_event_passes(
    filter: &RoomEventFilter,
    room_id: &RoomId,
    sender: &UserId,
    kind: &str,
    has_url: impl FnOnce() -> bool,
) -> bool {
    if !room_allowed(filter.rooms.as_deref(), &filter.not_rooms, room_id) {
        return false;
    }
    if !types_allowed(filter.types.as_deref(), &filter.not_types, kind)
        || !senders_allowed(filter.senders.as_deref(), &filter.not_senders, sender)
    {
        return false;
    }
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => has_url(),
        Some(UrlFilter::EventsWithoutUrl) => !has_url(),
        _ => true,
    }
}

/// Whether a non-room event (presence, global account data) passes a `Filter`.
pub fn event_allowed(filter: &Filter, sender: Option<&UserId>, kind: &str) -> bool {
    types_allowed(filter.types.as_deref(), &filter.not_types, kind)
        && sender.is_none_or(|s| senders_allowed(filter.senders.as_deref(), &filter.not_senders, s))
}

/// Keep only the listed fields of a client event (`event_fields`: dot-separated paths,
/// `\.` for a literal dot). An empty or absent list keeps everything.
pub fn select_fields(event: JsonValue, fields: Option<&[String]>) -> JsonValue {
    let Some(fields) = fields.filter(|f| !f.is_empty()) else { return event };
    let mut out = Map::new();
    for field in fields {
        let path = split_path(field);
        copy_path(&event, &mut out, &path);
    }
    JsonValue::Object(out)
}

fn split_path(field: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    parts.last_mut().expect("parts is never empty").push(next);
                }
            }
            '.' => parts.push(String::new()),
            c => parts.last_mut().expect("parts is never empty").push(c),
        }
    }
    parts
}

fn copy_path(from: &JsonValue, to: &mut Map<String, JsonValue>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(value) = from.get(first) else { return };
    if rest.is_empty() {
        to.insert(first.clone(), value.clone());
        return;
    }
    if !value.is_object() {
        return;
    }
    let entry = to.entry(first.clone()).or_insert_with(|| JsonValue::Object(Map::new()));
    if let JsonValue::Object(inner) = entry {
        copy_path(value, inner, rest);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn wildcards_match_any_run() {
        let long = "a".repeat(255);
        let cases = [
            ("m.room.message", "m.room.message", true),
            ("m.room.*", "m.room.message", true),
            ("m.room.*", "m.roomy", false),
            ("*", "anything", true),
            ("m.*.message", "m.room.message", true),
            ("m.*.message", "m.room.member", false),
            ("m.call.*", "m.room.message", false),
            ("*a*a*a*a*a*a*a*a*a*a*b", long.as_str(), false),
            ("*.message", "m.room.message", true),
            ("m.room.message*", "m.room.message", true),
        ];
        for (pattern, kind, expected) in &cases {
            assert_eq!(type_matches(pattern, kind), *expected, "{pattern} vs {kind}");
        }
    }

    #[test]
    fn room_event_filter_applies_every_clause() {
        let room: OwnedRoomId = "!a:x".try_into().unwrap();
        let other: OwnedRoomId = "!b:x".try_into().unwrap();
        let alice: ruma::OwnedUserId = "@alice:x".try_into().unwrap();
        let bob: ruma::OwnedUserId = "@bob:x".try_into().unwrap();
        let mut filter = RoomEventFilter::default();
        let text = json!({"body": "hi"});
        let file = json!({"body": "f", "url": "mxc://x/y"});
        assert!(room_event_allowed(&filter, &room, &alice, "m.room.message", &text));

        filter.not_types = vec!["m.room.member".into()];
        filter.types = Some(vec!["m.room.*".into()]);
        assert!(!room_event_allowed(&filter, &room, &alice, "m.room.member", &text));
        assert!(!room_event_allowed(&filter, &room, &alice, "m.reaction", &text));
        filter.senders = Some(vec![alice.clone()]);
        assert!(!room_event_allowed(&filter, &room, &bob, "m.room.message", &text));
        filter.not_rooms = vec![other.clone()];
        assert!(!room_event_allowed(&filter, &other, &alice, "m.room.message", &text));
        filter.url_filter = Some(UrlFilter::EventsWithUrl);
        assert!(!room_event_allowed(&filter, &room, &alice, "m.room.message", &text));
        assert!(room_event_allowed(&filter, &room, &alice, "m.room.message", &file));
    }

    #[test]
    fn event_fields_keep_only_named_paths() {
        let event = json!({"type": "m.room.message", "content": {"body": "hi", "msgtype": "m.text"}, "sender": "@a:x", "a.b": 1});
        let fields =
            vec!["type".to_owned(), "content.body".to_owned(), "a\\.b".to_owned(), "missing.x".to_owned()];
        assert_eq!(
            select_fields(event.clone(), Some(&fields)),
            json!({"type": "m.room.message", "content": {"body": "hi"}, "a.b": 1})
        );
        assert_eq!(select_fields(event.clone(), None), event);
    }

    #[test]
    fn type_patterns() {
        let check = |pattern: &str, kind: &str, expected: bool| {
            assert_eq!(type_matches(pattern, kind), expected, "{pattern} vs {kind}");
        };
        check("m.room.message", "m.room.message", true);
        check("m.room.message", "m.room.messages", false);
        check("m.room.*", "m.room.name", true);
        check("m.room.*", "m.roomx", false);
        check("*", "anything", true);
        check("*.topic", "m.room.topic", true);
        check("m.*.name", "m.room.name", true);
        check("m.*.name", "m.room.topic", false);
        check("a*a", "a", false);
        check("a*a", "aa", true);
    }
}
