//! `/sync` and the filters it uses.

use std::{collections::BTreeMap, time::Duration};

use axum::extract::{RawQuery, State};
use ruma::{
    api::client::{
        filter::{FilterDefinition, create_filter, get_filter},
        sync::sync_events::{self, v3::Filter},
    },
    presence::PresenceState,
};

use super::parse_stream_token;
use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{RewrittenResponse, Ruma},
    },
    service::{rate_limits::Limiter, sliding_sync::SlidingRequest, sync::SyncRequest},
};

/// The presence a sync sets, or none (`offline` sets nothing) once the user is over
/// `rc_presence.per_user`: dropped without a word, as Synapse drops it; the sync goes on.
fn presence_to_set(services: &AppState, user_id: &ruma::UserId, asked: PresenceState) -> PresenceState {
    if asked != PresenceState::Offline
        && !services.rate_limits.allows(Limiter::Presence, user_id.as_str(), Some(user_id))
    {
        return PresenceState::Offline;
    }
    asked
}

/// MSC4222's unstable name of `use_state_after`; matrix-js-sdk sends it on every sync and
/// then reads only `org.matrix.msc4222.state_after` (or else `state`).
const UNSTABLE_USE_STATE_AFTER: &str = "org.matrix.msc4222.use_state_after";

/// `GET /_matrix/client/v3/sync`. A plain handler rather than a ruma route: ruma reads the
/// stable `use_state_after` only, and the unstable spelling, which it ignores, also decides
/// the name of the answer's state section (`org.matrix.msc4222.state_after`).
pub fn sync_events(
    State(services): State<AppState>,
    RawQuery(query): RawQuery,
    req: Ruma<sync_events::v3::Request>,
) -> impl Future<Output = Result<RewrittenResponse<sync_events::v3::Response>>> {
    // A plain function returning the future, not an `async fn`: an async fn's arguments
    // stay in its future until it ends, and a parked long-poll would keep the whole parsed
    // request (its filter included) for as long as it waits. The service's request is
    // built here, and the future holds only it.
    let prepared = sync_request(&services, query.as_deref(), req);
    async move {
        let (request, rename_state_after) = prepared?;
        let response = services.sync.sync(request).await?;
        let rewrite = if rename_state_after { fill_limited_unstable_state_after } else { fill_limited };
        Ok(RewrittenResponse { response, rewrite })
    }
}

/// The sync service's request from the client's, and whether the answer's state section
/// takes the unstable name.
fn sync_request(
    services: &AppState,
    query: Option<&str>,
    req: Ruma<sync_events::v3::Request>,
) -> Result<(Box<SyncRequest>, bool)> {
    let body = req.body;
    let unstable_state_after = unstable_use_state_after(query)?;
    // The stable parameter wins: a client that sends it reads the stable `state_after`.
    let rename_state_after = unstable_state_after && !body.use_state_after;
    let identity = req.identity;
    let filter = match body.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(definition)) => definition,
        Some(Filter::FilterId(id)) => services
            .filters
            .get(&identity.user_id, &id)?
            .ok_or_else(|| Error::invalid_param(format!("Unknown filter {id}")))?,
        Some(_) => return Err(Error::invalid_param("Unsupported filter")),
    };
    let since = body.since.as_deref().map(parse_stream_token).transpose()?;
    let set_presence = presence_to_set(services, &identity.user_id, body.set_presence);
    let request = SyncRequest {
        device_id: identity.device()?.to_owned(),
        user_id: identity.user_id,
        since,
        filter,
        full_state: body.full_state,
        timeout: body.timeout.unwrap_or(Duration::ZERO),
        set_presence,
        use_state_after: body.use_state_after || unstable_state_after,
    };
    Ok((Box::new(request), rename_state_after))
}

/// The unstable `use_state_after` query parameter: `true` or `false` (Synapse's booleans),
/// anything else is refused.
fn unstable_use_state_after(query: Option<&str>) -> Result<bool> {
    let mut value = false;
    for (key, given) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key == UNSTABLE_USE_STATE_AFTER {
            value = match given.as_ref() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(Error::invalid_param(format!(
                        "Query parameter {UNSTABLE_USE_STATE_AFTER} must be true or false"
                    )));
                }
            };
        }
    }
    Ok(value)
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186)
pub async fn sliding_sync(
    services: AppState,
    req: Ruma<sync_events::v5::Request>,
) -> Result<sync_events::v5::Response> {
    let list_spaces = list_spaces(&req.raw_body)?;
    let mut body = req.body;
    body.set_presence = presence_to_set(&services, &req.identity.user_id, body.set_presence);
    let request = SlidingRequest {
        device_id: req.identity.device()?.to_owned(),
        user_id: req.identity.user_id,
        body,
        list_spaces,
    };
    services.sliding_sync.sync(request).await
}

/// Each list's `filters.spaces`, which ruma's request type does not keep.
fn list_spaces(body: &[u8]) -> Result<BTreeMap<String, Vec<ruma::OwnedRoomId>>> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        lists: BTreeMap<String, List>,
    }
    #[derive(serde::Deserialize)]
    struct List {
        #[serde(default)]
        filters: Option<Filters>,
    }
    #[derive(serde::Deserialize)]
    struct Filters {
        #[serde(default)]
        spaces: Option<Vec<ruma::OwnedRoomId>>,
    }
    if body.is_empty() {
        return Ok(BTreeMap::new());
    }
    let parsed: Body =
        serde_json::from_slice(body).map_err(|e| Error::bad_json(format!("Bad list filters: {e}")))?;
    Ok(parsed.lists.into_iter().filter_map(|(name, list)| Some((name, list.filters?.spaces?))).collect())
}

/// Ruma leaves `limited` out of a timeline when it is false, but the spec lists it and
/// clients read it (Synapse always sends it): put it back in every joined and left room's
/// timeline. One pass over the serialised bytes, copying them and inserting
/// `"limited":false` at the start of each such timeline object that lacks the key (ruma
/// writes `limited` first when it writes it). Events stay untouched: the scanner only
/// tracks strings, nesting and the keys on the way to a timeline, so a large initial sync
/// costs one copy rather than being re-read as a tree.
pub fn fill_limited(body: &[u8]) -> serde_json::Result<Vec<u8>> {
    Ok(rewrite_rooms(body, false))
}

/// As `fill_limited`, and each joined and left room's `state_after` is renamed to MSC4222's
/// unstable `org.matrix.msc4222.state_after`, for clients that asked with the unstable name.
pub fn fill_limited_unstable_state_after(body: &[u8]) -> serde_json::Result<Vec<u8>> {
    Ok(rewrite_rooms(body, true))
}

/// One open object or array while scanning: for objects, the key of the member being read
/// (a byte range of the input) and whether a key comes next.
struct Frame {
    object: bool,
    key: Option<(usize, usize)>,
    expect_key: bool,
}

fn rewrite_rooms(body: &[u8], rename_state_after: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut stack: Vec<Frame> = Vec::new();
    let key_is = |stack: &[Frame], depth: usize, names: &[&[u8]]| {
        stack[depth].key.is_some_and(|(from, to)| names.contains(&&body[from..to]))
    };
    let mut i = 0;
    while i < body.len() {
        let byte = body[i];
        match byte {
            b'"' => {
                // A string, copied whole; a key when its object expects one.
                let start = i + 1;
                let mut end = start;
                while end < body.len() && body[end] != b'"' {
                    end += if body[end] == b'\\' { 2 } else { 1 };
                }
                let end = end.min(body.len());
                let mut renamed = false;
                if let Some(top) = stack.last()
                    && top.object
                    && top.expect_key
                {
                    // rooms → join|leave → room ID → `state_after`: a key of the fourth open
                    // object.
                    renamed = rename_state_after
                        && &body[start..end] == b"state_after"
                        && stack.len() == 4
                        && stack.iter().all(|f| f.object)
                        && key_is(&stack, 0, &[b"rooms"])
                        && key_is(&stack, 1, &[b"join", b"leave"]);
                    let top = stack.last_mut().expect("checked above");
                    top.key = Some((start, end));
                    top.expect_key = false;
                }
                if renamed {
                    out.extend_from_slice(b"\"org.matrix.msc4222.state_after\"");
                } else {
                    out.extend_from_slice(&body[i..(end + 1).min(body.len())]);
                }
                i = end + 1;
                continue;
            }
            b'{' => {
                out.push(byte);
                // rooms → join|leave → room ID → timeline: the fourth open object's member.
                let is_timeline = stack.len() == 4
                    && stack.iter().all(|f| f.object)
                    && key_is(&stack, 0, &[b"rooms"])
                    && key_is(&stack, 1, &[b"join", b"leave"])
                    && key_is(&stack, 3, &[b"timeline"]);
                if is_timeline {
                    let next = body[i + 1..].iter().position(|b| !b.is_ascii_whitespace()).map(|p| i + 1 + p);
                    let rest = next.map_or(&b""[..], |n| &body[n..]);
                    if rest.starts_with(b"}") {
                        out.extend_from_slice(b"\"limited\":false");
                    } else if !rest.starts_with(b"\"limited\"") {
                        out.extend_from_slice(b"\"limited\":false,");
                    }
                }
                stack.push(Frame { object: true, key: None, expect_key: true });
            }
            b'[' => {
                out.push(byte);
                stack.push(Frame { object: false, key: None, expect_key: false });
            }
            b'}' | b']' => {
                out.push(byte);
                stack.pop();
            }
            b',' => {
                out.push(byte);
                if let Some(top) = stack.last_mut()
                    && top.object
                {
                    top.expect_key = true;
                }
            }
            _ => out.push(byte),
        }
        i += 1;
    }
    out
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(
    services: AppState,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    if req.body.user_id != req.identity.user_id {
        return Err(Error::forbidden("You can only create filters for yourself"));
    }
    let id = services.filters.create(&req.identity.user_id, &req.body.filter)?;
    Ok(create_filter::v3::Response::new(id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(
    services: AppState,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    if req.body.user_id != req.identity.user_id {
        return Err(Error::forbidden("You can only read your own filters"));
    }
    let filter = services
        .filters
        .get(&req.identity.user_id, &req.body.filter_id)?
        .ok_or_else(|| Error::not_found("No such filter"))?;
    Ok(get_filter::v3::Response::new(filter))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{fill_limited, fill_limited_unstable_state_after, unstable_use_state_after};

    fn filled(value: &Value) -> Value {
        serde_json::from_slice(&fill_limited(&serde_json::to_vec(value).unwrap()).unwrap()).unwrap()
    }

    #[test]
    fn limited_is_added_to_joined_and_left_timelines_only() {
        let body = json!({
            "next_batch": "s1",
            "rooms": {
                "join": {
                    "!a:x": {"timeline": {"prev_batch": "s0", "events": [
                        {"type": "m.room.message", "content": {"body": "\"timeline\": {\"x\": [}", "timeline": {"events": []}}}
                    ]}, "state": {"events": []}},
                    "!b:x": {"timeline": {"limited": true, "events": []}},
                    "!c:x": {"timeline": {}}
                },
                "leave": {"!d:x": {"timeline": {"events": []}}},
                "invite": {"!e:x": {"invite_state": {"events": []}, "timeline": {"events": []}}}
            },
            "timeline": {"events": []}
        });
        let out = filled(&body);
        assert_eq!(out["rooms"]["join"]["!a:x"]["timeline"]["limited"], false);
        assert_eq!(out["rooms"]["join"]["!b:x"]["timeline"]["limited"], true);
        assert_eq!(out["rooms"]["join"]["!c:x"]["timeline"], json!({"limited": false}));
        assert_eq!(out["rooms"]["leave"]["!d:x"]["timeline"]["limited"], false);
        // Nothing else changes: not event content that looks like a timeline, not other sections.
        let mut expected = body.clone();
        for (section, room) in [("join", "!a:x"), ("join", "!c:x"), ("leave", "!d:x")] {
            expected["rooms"][section][room]["timeline"]["limited"] = json!(false);
        }
        assert_eq!(out, expected);
    }

    #[test]
    fn state_after_is_renamed_in_joined_and_left_rooms_only() {
        let body = json!({
            "rooms": {
                "join": {"!a:x": {"state_after": {"events": [
                    {"type": "m.room.topic", "state_key": "", "content": {"state_after": 1}}
                ]}, "timeline": {"events": []}}},
                "leave": {"!b:x": {"state_after": {}}},
                "invite": {"!c:x": {"state_after": {}}}
            },
            "state_after": {}
        });
        let out: Value = serde_json::from_slice(
            &fill_limited_unstable_state_after(&serde_json::to_vec(&body).unwrap()).unwrap(),
        )
        .unwrap();
        let joined = &out["rooms"]["join"]["!a:x"];
        assert!(joined.get("state_after").is_none(), "{out}");
        assert_eq!(joined["org.matrix.msc4222.state_after"]["events"][0]["content"]["state_after"], 1);
        assert_eq!(joined["timeline"]["limited"], false);
        assert_eq!(out["rooms"]["leave"]["!b:x"], json!({"org.matrix.msc4222.state_after": {}}));
        assert_eq!(out["rooms"]["invite"]["!c:x"], json!({"state_after": {}}));
        assert_eq!(out["state_after"], json!({}));
        // The stable rewrite leaves the name alone.
        assert_eq!(
            filled(&body)["rooms"]["join"]["!a:x"]["state_after"]["events"][0]["type"],
            "m.room.topic"
        );
    }

    #[test]
    fn the_unstable_parameter_is_a_boolean() {
        assert!(!unstable_use_state_after(None).unwrap());
        assert!(unstable_use_state_after(Some("timeout=0&org.matrix.msc4222.use_state_after=true")).unwrap());
        assert!(!unstable_use_state_after(Some("org.matrix.msc4222.use_state_after=false")).unwrap());
        assert!(unstable_use_state_after(Some("org.matrix.msc4222.use_state_after=yes")).is_err());
    }

    #[test]
    fn bodies_without_rooms_and_raw_whitespace_pass_through() {
        assert_eq!(fill_limited(br#"{"next_batch":"s1"}"#).unwrap(), br#"{"next_batch":"s1"}"#);
        let spaced = br#"{"rooms": {"join": {"!a:x": {"timeline": { "events": [ { "content": {"a\\": "}"} } ] } } } } }"#;
        let out: Value = serde_json::from_slice(&fill_limited(spaced).unwrap()).unwrap();
        assert_eq!(out["rooms"]["join"]["!a:x"]["timeline"]["limited"], false);
        assert_eq!(out["rooms"]["join"]["!a:x"]["timeline"]["events"][0]["content"]["a\\"], "}");
    }
}
