//! Redactions: which event a client's `m.room.redaction` names, whether a redaction takes
//! effect on its target, and what this server lets its own users redact.
//!
//! From room version 3 the authorization rules accept every well-formed redaction; whether it
//! is *applied* is decided when both the redaction and its target are known
//! ([`redaction_applies`]). A redaction that fails that rule is still stored (it passed the
//! auth rules), it just never changes its target. Requests of this server's own users are held
//! to a stricter rule before any event is built ([`check_local_redaction`]), answering them as
//! Synapse does. Pure: callers hand in the events and the power levels in force.

use ruma::{
    EventId, OwnedEventId, RoomId, UserId,
    events::{TimelineEventType, room::power_levels::RoomPowerLevels},
    room_version_rules::AuthorizationRules,
};
use serde_json::Value as JsonValue;

use super::pdu::{EventTemplate, Pdu};

/// Why a client's redaction content names no usable target.
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    /// No `redacts` at all.
    Missing,
    /// `redacts` is not a string holding an event ID.
    Invalid,
}

/// The template for an event a client asked to send with `PUT /send` or `PUT /state`. An
/// `m.room.redaction` names its target in `content.redacts`; the target is taken out of the
/// content into the template, so the builder puts it where the room version wants it (the top
/// level before v11, as `PUT /send` must do, and back into the content from v11).
pub fn client_template(
    kind: &str,
    state_key: Option<&str>,
    mut content: JsonValue,
) -> Result<EventTemplate, TargetError> {
    let kind = TimelineEventType::from(kind);
    let redacts = if kind == TimelineEventType::RoomRedaction {
        let target = content.as_object_mut().and_then(|c| c.remove("redacts")).ok_or(TargetError::Missing)?;
        let target = target.as_str().ok_or(TargetError::Invalid)?;
        Some(EventId::parse(target).map_err(|_| TargetError::Invalid)?)
    } else {
        None
    };
    Ok(EventTemplate {
        kind,
        content,
        state_key: state_key.map(str::to_owned),
        redacts,
        origin_server_ts: None,
    })
}

/// The spec's rule for applying a redaction to its target ("Handling redactions" in room
/// versions 3+; rule 11 of the v1/v2 authorization rules): the target must be in the same
/// room, and the redaction's sender must hold the room's `redact` level (in the power levels
/// in force for the redaction), or come from the same server as the target — compared by
/// sender in v3+, by event ID in v1 and v2, whose event IDs name their server.
pub fn redaction_applies(
    rules: &AuthorizationRules,
    redaction: &Pdu,
    target: &Pdu,
    power: &RoomPowerLevels,
) -> bool {
    if redaction.room_id != target.room_id {
        return false;
    }
    if power.for_user(&redaction.sender) >= power.redact {
        return true;
    }
    if rules.special_case_room_redaction {
        let origin = |id: &OwnedEventId| id.server_name().map(ToOwned::to_owned);
        let redaction_origin = origin(&redaction.event_id);
        redaction_origin.is_some() && redaction_origin == origin(&target.event_id)
    } else {
        redaction.sender.server_name() == target.sender.server_name()
    }
}

/// Why this server refuses a local user's redaction.
#[derive(Debug, PartialEq, Eq)]
pub enum LocalRefusal {
    /// The target is unknown, and the sender may only redact events they can be shown to own.
    UnknownTarget,
    /// The target belongs to another room.
    OtherRoom,
    /// The sender may not redact this event; the reason is fit to show them.
    Forbidden(&'static str),
}

/// What a user of this server may redact, checked before the redaction is built (Synapse's
/// rule for its own users, stricter than [`redaction_applies`], so a redaction that passes
/// always takes effect): not the create event or the server ACL, nothing of another room, and
/// others' events only with the `redact` level. An unknown target is allowed only to a sender
/// with that level (the redaction is stored and applies to nothing).
pub fn check_local_redaction(
    sender: &UserId,
    room_id: &RoomId,
    target: Option<&Pdu>,
    power: &RoomPowerLevels,
) -> Result<(), LocalRefusal> {
    let may_redact_others = power.for_user(sender) >= power.redact;
    let Some(target) = target else {
        return if may_redact_others { Ok(()) } else { Err(LocalRefusal::UnknownTarget) };
    };
    if target.kind == TimelineEventType::RoomCreate {
        return Err(LocalRefusal::Forbidden("Redacting create events is not permitted"));
    }
    if target.room_id != room_id {
        return Err(LocalRefusal::OtherRoom);
    }
    if target.kind == TimelineEventType::RoomServerAcl {
        return Err(LocalRefusal::Forbidden("Redacting server ACL events is not permitted"));
    }
    if may_redact_others || target.sender == sender {
        Ok(())
    } else {
        Err(LocalRefusal::Forbidden("You don't have permission to redact events"))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{
        RoomVersionId,
        events::room::power_levels::{RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        owned_user_id,
    };
    use serde_json::json;

    use super::*;

    const ROOM: &str = "!room:example.org";

    fn event(event_id: &str, room_id: &str, sender: &str, kind: &str) -> Pdu {
        serde_json::from_value(json!({
            "event_id": event_id,
            "room_id": room_id,
            "sender": sender,
            "origin_server_ts": 1,
            "type": kind,
            "content": {},
            "prev_events": [],
            "auth_events": [],
            "depth": 1,
        }))
        .unwrap()
    }

    /// Power levels where `@mod:example.org` holds the default `redact` level (50).
    fn power(version: &RoomVersionId) -> RoomPowerLevels {
        let rules = version.rules().unwrap().authorization;
        let mut content = RoomPowerLevelsEventContent::new(&rules);
        content.users.insert(owned_user_id!("@mod:example.org"), 50.into());
        RoomPowerLevels::new(
            RoomPowerLevelsSource::Original(content),
            &rules,
            Vec::<ruma::OwnedUserId>::new(),
        )
    }

    #[test]
    fn client_templates_take_the_target_out_of_the_content() {
        let template = client_template("m.room.redaction", None, json!({ "redacts": "$e", "reason": "r" }));
        let template = template.unwrap();
        assert_eq!(template.redacts.as_deref().map(EventId::as_str), Some("$e"));
        assert_eq!(template.content, json!({ "reason": "r" }));
        assert_eq!(
            client_template("m.room.redaction", Some(""), json!({})).unwrap_err(),
            TargetError::Missing
        );
        for bad in [json!({ "redacts": 5 }), json!({ "redacts": "not an id" })] {
            assert_eq!(client_template("m.room.redaction", None, bad).unwrap_err(), TargetError::Invalid);
        }
        // Other types keep a `redacts` key as ordinary content.
        let message = client_template("m.room.message", None, json!({ "redacts": "$e" })).unwrap();
        assert_eq!((message.redacts, message.content), (None, json!({ "redacts": "$e" })));
    }

    /// (redaction sender, target sender, applies) in a v3+ room.
    #[test]
    fn redactions_apply_with_power_or_from_the_same_server() {
        let cases = [
            ("@mod:example.org", "@alice:example.org", true),
            ("@alice:example.org", "@alice:example.org", true),
            // Same server, no power: the spec leaves it to that server, which vouched for it.
            ("@bob:example.org", "@alice:example.org", true),
            ("@mallory:evil.example", "@alice:example.org", false),
        ];
        for version in [RoomVersionId::V6, RoomVersionId::V11, RoomVersionId::V12] {
            let rules = version.rules().unwrap().authorization;
            for (redactor, author, applies) in cases {
                let target = event("$target", ROOM, author, "m.room.message");
                let redaction = event("$redaction", ROOM, redactor, "m.room.redaction");
                assert_eq!(
                    redaction_applies(&rules, &redaction, &target, &power(&version)),
                    applies,
                    "{redactor} redacting {author} in v{version}"
                );
            }
            // Never across rooms, whatever the power.
            let target = event("$target", "!other:example.org", "@alice:example.org", "m.room.message");
            let redaction = event("$redaction", ROOM, "@mod:example.org", "m.room.redaction");
            assert!(!redaction_applies(&rules, &redaction, &target, &power(&version)));
        }
    }

    #[test]
    fn v1_and_v2_compare_the_servers_of_event_ids() {
        let rules = RoomVersionId::V1.rules().unwrap().authorization;
        assert!(rules.special_case_room_redaction);
        let power = power(&RoomVersionId::V1);
        let target = event("$t:example.org", ROOM, "@alice:example.org", "m.room.message");
        let same = event("$r:example.org", ROOM, "@mallory:evil.example", "m.room.redaction");
        let other = event("$r:evil.example", ROOM, "@bob:example.org", "m.room.redaction");
        assert!(redaction_applies(&rules, &same, &target, &power));
        assert!(!redaction_applies(&rules, &other, &target, &power));
    }

    #[test]
    fn local_users_redact_their_own_events_or_with_power() {
        let power = power(&RoomVersionId::V11);
        let room = RoomId::parse(ROOM).unwrap();
        let alice = UserId::parse("@alice:example.org").unwrap();
        let moderator = UserId::parse("@mod:example.org").unwrap();
        let bob = UserId::parse("@bob:example.org").unwrap();
        let message = event("$m", ROOM, alice.as_str(), "m.room.message");
        let check =
            |sender: &UserId, target: Option<&Pdu>| check_local_redaction(sender, &room, target, &power);

        assert_eq!(check(&alice, Some(&message)), Ok(()));
        assert_eq!(check(&moderator, Some(&message)), Ok(()));
        // Same server is not enough for a local request: it must be the same user.
        assert!(matches!(check(&bob, Some(&message)), Err(LocalRefusal::Forbidden(_))));
        assert_eq!(check(&bob, None), Err(LocalRefusal::UnknownTarget));
        assert_eq!(check(&moderator, None), Ok(()));
        let elsewhere = event("$o", "!other:example.org", alice.as_str(), "m.room.message");
        assert_eq!(check(&alice, Some(&elsewhere)), Err(LocalRefusal::OtherRoom));
        for kind in ["m.room.create", "m.room.server_acl"] {
            let protected = event("$p", ROOM, moderator.as_str(), kind);
            assert!(matches!(check(&moderator, Some(&protected)), Err(LocalRefusal::Forbidden(_))), "{kind}");
        }
    }
}
