//! What `POST /createRoom` puts in a new room before the caller's own state: the presets'
//! join rules, history visibility and guest access, and the default power levels.

use ruma::{UserId, api::client::room::create_room::v3::RoomPreset, room_version_rules::AuthorizationRules};
use serde_json::{Value as JsonValue, json};

/// The state events a preset sends, as `(type, content)` with empty state keys.
pub fn preset_state(preset: &RoomPreset) -> Vec<(&'static str, JsonValue)> {
    let (join_rule, guest_access) = match preset {
        RoomPreset::PublicChat => ("public", "forbidden"),
        // private_chat, trusted_private_chat and any future private preset.
        _ => ("invite", "can_join"),
    };
    vec![
        ("m.room.join_rules", json!({ "join_rule": join_rule })),
        ("m.room.history_visibility", json!({ "history_visibility": "shared" })),
        ("m.room.guest_access", json!({ "guest_access": guest_access })),
    ]
}

/// The power levels a new room starts with (before `power_level_content_override`), as
/// Synapse sets them. Creators of v12+ rooms hold unlimited power by the auth rules and must
/// not be listed in `users`; in older versions the creator gets 100. Under
/// `trusted_private_chat` invitees get the creator's power (in v12+ they become additional
/// creators instead, so they are not listed either).
pub fn default_power_levels(
    rules: &AuthorizationRules,
    creator: &UserId,
    preset: &RoomPreset,
    invitees: &[&UserId],
) -> JsonValue {
    let mut users = serde_json::Map::new();
    if !rules.explicitly_privilege_room_creators {
        users.insert(creator.to_string(), json!(100));
        if *preset == RoomPreset::TrustedPrivateChat {
            for invitee in invitees {
                users.insert(invitee.to_string(), json!(100));
            }
        }
    }
    json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": { "room": 50 },
    })
}

/// The preset a request without one gets: the spec derives it from `visibility`.
pub fn default_preset(public: bool) -> RoomPreset {
    if public { RoomPreset::PublicChat } else { RoomPreset::PrivateChat }
}

#[cfg(test)]
mod tests {
    use ruma::{RoomVersionId, user_id};

    use super::*;

    #[test]
    fn creator_listed_only_before_v12() {
        let creator = user_id!("@alice:example.org");
        let bob = user_id!("@bob:example.org");
        let v11 = RoomVersionId::V11.rules().unwrap().authorization;
        let v12 = RoomVersionId::V12.rules().unwrap().authorization;
        let pl = default_power_levels(&v11, creator, &RoomPreset::TrustedPrivateChat, &[bob]);
        assert_eq!(pl["users"][creator.as_str()], 100);
        assert_eq!(pl["users"][bob.as_str()], 100);
        let pl = default_power_levels(&v12, creator, &RoomPreset::TrustedPrivateChat, &[bob]);
        assert!(pl["users"].as_object().unwrap().is_empty());
        let pl = default_power_levels(&v11, creator, &RoomPreset::PrivateChat, &[bob]);
        assert!(pl["users"].get(bob.as_str()).is_none());
    }

    #[test]
    fn presets_set_join_rules() {
        let public = preset_state(&RoomPreset::PublicChat);
        assert_eq!(public[0].1["join_rule"], "public");
        assert_eq!(public[2].1["guest_access"], "forbidden");
        let private = preset_state(&RoomPreset::PrivateChat);
        assert_eq!(private[0].1["join_rule"], "invite");
    }
}
