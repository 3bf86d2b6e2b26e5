//! The form of `m.room.power_levels` content beyond what the auth rules check. The auth
//! rules of v1–v9 accept levels written as strings (`"50"`), and the spec asks servers to
//! keep their users from sending such events; like Synapse, this server sends integers only,
//! in every room version. Rooms that hold string levels anyway (older rooms, or events from
//! other servers) have them turned into integers when the levels are carried into a
//! replacement room, whose version may require integers.

use serde_json::{Map, Value as JsonValue};

/// The fields whose value is a power level.
const LEVEL_FIELDS: [&str; 7] =
    ["ban", "events_default", "invite", "kick", "redact", "state_default", "users_default"];
/// The fields whose value maps names to power levels.
const MAP_FIELDS: [&str; 3] = ["events", "notifications", "users"];
/// The largest magnitude canonical JSON allows for an integer.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Check power levels content a local user sends: every level an integer in canonical JSON's
/// range, and `events`, `notifications` and `users` objects of such integers. `Err` names the
/// offending field.
pub fn check_integers(content: &JsonValue) -> Result<(), String> {
    let map = content.as_object().ok_or("power levels content must be an object")?;
    for_each_level(map, |path, value| match value.as_i64() {
        Some(level) if level.abs() <= MAX_SAFE_INTEGER => Ok(()),
        _ => Err(format!("{path} must be an integer, not {value}")),
    })
}

/// A copy of power levels content with every level that is a string representing an
/// integer (the spec's format for v1–v9: optional whitespace and sign, then decimal digits)
/// turned into that integer. Other fields are copied as they are. `Err` names a level that
/// is neither an integer nor such a string.
pub fn to_integers(content: &JsonValue) -> Result<JsonValue, String> {
    let mut map = content.as_object().cloned().ok_or("power levels content must be an object")?;
    let integer = |path: &str, value: &JsonValue| -> Result<JsonValue, String> {
        let parsed = match value {
            JsonValue::Number(n) => n.as_i64(),
            JsonValue::String(s) => parse_level(s),
            _ => None,
        };
        match parsed {
            Some(level) if level.abs() <= MAX_SAFE_INTEGER => Ok(level.into()),
            _ => Err(format!("{path} is not an integer: {value}")),
        }
    };
    for field in LEVEL_FIELDS {
        if let Some(value) = map.get_mut(field) {
            *value = integer(field, value)?;
        }
    }
    for field in MAP_FIELDS {
        if let Some(JsonValue::Object(levels)) = map.get_mut(field) {
            for (name, value) in levels.iter_mut() {
                *value = integer(&format!("{field}.{name}"), value)?;
            }
        }
    }
    Ok(JsonValue::Object(map))
}

/// Visit every power level of the content, with its path for messages. Map fields that are
/// present must be objects.
fn for_each_level(
    map: &Map<String, JsonValue>,
    mut check: impl FnMut(&str, &JsonValue) -> Result<(), String>,
) -> Result<(), String> {
    for field in LEVEL_FIELDS {
        if let Some(value) = map.get(field) {
            check(field, value)?;
        }
    }
    for field in MAP_FIELDS {
        match map.get(field) {
            None => {}
            Some(JsonValue::Object(levels)) => {
                for (name, value) in levels {
                    check(&format!("{field}.{name}"), value)?;
                }
            }
            Some(other) => return Err(format!("{field} must be an object, not {other}")),
        }
    }
    Ok(())
}

/// A string level as the v1 rules allow it: surrounding whitespace, an optional `+` or `-`,
/// then decimal digits (leading zeros allowed).
fn parse_level(s: &str) -> Option<i64> {
    let trimmed = s.trim();
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    trimmed.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn local_levels_must_be_integers() {
        let cases = [
            (
                json!({ "ban": 50, "users": { "@a:x": 100 }, "events": {}, "notifications": { "room": 50 } }),
                true,
            ),
            (json!({ "historical": "anything", "unknown": [1] }), true),
            (json!({ "ban": "50" }), false),
            (json!({ "users": { "@a:x": "100" } }), false),
            (json!({ "events": { "m.room.name": true } }), false),
            (json!({ "notifications": { "room": null } }), false),
            (json!({ "users": [] }), false),
            (json!({ "kick": 9_007_199_254_740_992_i64 }), false),
            (json!({ "kick": -9_007_199_254_740_991_i64 }), true),
            (json!("levels"), false),
        ];
        for (content, ok) in cases {
            assert_eq!(check_integers(&content).is_ok(), ok, "{content}");
        }
        let error = check_integers(&json!({ "users": { "@a:x": "100" } })).unwrap_err();
        assert!(error.contains("users.@a:x"), "{error}");
    }

    #[test]
    fn string_levels_become_integers() {
        let old = json!({
            "ban": "50",
            "kick": " +040 ",
            "redact": "-1",
            "invite": 0,
            "users": { "@a:x": "100", "@b:x": 7 },
            "events": { "m.room.name": "0050" },
            "notifications": { "room": "20" },
            "historical": "100",
        });
        let fixed = to_integers(&old).unwrap();
        assert_eq!(
            fixed,
            json!({
                "ban": 50,
                "kick": 40,
                "redact": -1,
                "invite": 0,
                "users": { "@a:x": 100, "@b:x": 7 },
                "events": { "m.room.name": 50 },
                "notifications": { "room": 20 },
                // Not a level the spec defines: copied as it is.
                "historical": "100",
            })
        );
        assert_eq!(check_integers(&fixed), Ok(()));
        for bad in
            [json!({ "ban": "5o" }), json!({ "ban": "1.5" }), json!({ "ban": "" }), json!({ "ban": "+-1" })]
        {
            assert!(to_integers(&bad).is_err(), "{bad}");
        }
    }
}
