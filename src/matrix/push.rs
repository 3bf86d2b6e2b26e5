//! Push rules evaluated for a whole room at once, with the same outcome as evaluating every
//! member's own rules against the event (ruma's evaluation, which the spec describes).
//!
//! Most members' rules differ only in their own user ID: the server-default rules name the
//! user in `.m.rule.invite_for_me` (`state_key`) and `.m.rule.is_user_mention`
//! (`content.m.mentions.user_ids`). A member's rules with their own user ID replaced by a
//! placeholder are their [`Template`]; members with one template form a class, whose rules
//! are evaluated once per event for a *neutral* user nobody can name. A member's outcome can
//! differ from their class's only if a condition compares the event with their user ID, and
//! such a comparison only holds when a string of the event contains `@<localpart>:` (the
//! user ID, in any case: `event_match` ignores case): [`named_localparts`] lists those, and
//! the members they name are evaluated on their own. Rules that read other per-user inputs
//! (the display name, or a pattern equal to the user's localpart) make a template
//! [`Template::personal`]: its members are always evaluated on their own.

use std::{
    collections::HashSet,
    future::Future,
    task::{Context, Poll, Waker},
};

use ruma::{
    UserId,
    push::{Action, FlattenedJson, PushConditionRoomCtx, Ruleset},
};
use serde_json::Value as JsonValue;

/// What stands for the member's user ID in a template.
const USER_PLACEHOLDER: &str = "\u{0}user_id\u{0}";
/// What stands for the member's localpart in a template.
const LOCALPART_PLACEHOLDER: &str = "\u{0}localpart\u{0}";

/// A member's rules with their own user ID taken out, as a canonical JSON text: equal
/// templates mean rules that treat every event alike for every user but the one they name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Template {
    pub text: String,
    /// The rules also read the user's display name or a pattern equal to their localpart,
    /// which events name without `@…:`: the members of such a template are always evaluated
    /// with their own rules.
    pub personal: bool,
}

/// The template of `user_id`'s rules.
pub fn template_of(ruleset: &Ruleset, user_id: &UserId) -> Template {
    let mut value = serde_json::to_value(ruleset).unwrap_or(JsonValue::Null);
    let mut personal = false;
    abstract_user(&mut value, user_id.as_str(), user_id.localpart(), &mut personal);
    Template { text: value.to_string(), personal }
}

/// The rules of a template's class, for the neutral user `neutral` (a user ID no event
/// names), or `None` when the text is not a ruleset (never, for a template of a ruleset).
pub fn instantiate(template: &Template, neutral: &UserId) -> Option<Ruleset> {
    let text = template
        .text
        .replace(&escaped(USER_PLACEHOLDER), &escaped(neutral.as_str()))
        .replace(&escaped(LOCALPART_PLACEHOLDER), &escaped(neutral.localpart()));
    serde_json::from_str(&text).ok()
}

/// A string as it appears inside a JSON text (without the quotes).
fn escaped(s: &str) -> String {
    let quoted = JsonValue::from(s).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Replace, in the `pattern` and `value` strings of rules and conditions, the user's ID and
/// localpart by placeholders; note in `personal` whether the rules read what a neutral
/// evaluation cannot stand in for.
fn abstract_user(value: &mut JsonValue, user_id: &str, localpart: &str, personal: &mut bool) {
    match value {
        JsonValue::Object(map) => {
            if map.get("kind").and_then(JsonValue::as_str) == Some("contains_display_name") {
                *personal = true;
            }
            for (key, field) in map.iter_mut() {
                match field {
                    JsonValue::String(s) if key == "pattern" || key == "value" => {
                        if s == user_id {
                            *s = USER_PLACEHOLDER.to_owned();
                        } else if s.eq_ignore_ascii_case(localpart) {
                            // Matched against text without `@…:` around it.
                            *s = LOCALPART_PLACEHOLDER.to_owned();
                            *personal = true;
                        }
                    }
                    other => abstract_user(other, user_id, localpart, personal),
                }
            }
        }
        JsonValue::Array(items) => {
            for item in items {
                abstract_user(item, user_id, localpart, personal);
            }
        }
        _ => {}
    }
}

/// The localparts an event names as `@<localpart>:`, as written and lowercased, from every
/// string in it (values and array items, at any depth). A member none of these names gets
/// their class's outcome.
pub fn named_localparts(event: &JsonValue) -> HashSet<String> {
    let mut found = HashSet::new();
    collect_named(event, &mut found);
    found
}

fn collect_named(value: &JsonValue, found: &mut HashSet<String>) {
    match value {
        JsonValue::String(s) => {
            if !s.contains('@') {
                return;
            }
            for (at, _) in s.match_indices('@') {
                let rest = &s[at + 1..];
                // A user ID's localpart never holds `:`; without one after it there is no ID.
                if let Some(end) = rest.find(':') {
                    let localpart = &rest[..end];
                    found.insert(localpart.to_owned());
                    found.insert(localpart.to_lowercase());
                }
            }
        }
        JsonValue::Array(items) => items.iter().for_each(|item| collect_named(item, found)),
        JsonValue::Object(map) => map.values().for_each(|item| collect_named(item, found)),
        _ => {}
    }
}

/// The actions of the first enabled rule that matches, as ruma's `Ruleset::get_actions`
/// does, over an event flattened once; `None` when a condition would have to wait (thread
/// subscriptions, which this server does not configure).
pub fn first_match<'r>(
    ruleset: &'r Ruleset,
    event: &FlattenedJson,
    context: &PushConditionRoomCtx,
) -> Option<&'r [Action]> {
    now_or_never(async {
        for rule in ruleset {
            if rule.applies(event, context).await {
                return rule.actions();
            }
        }
        &[]
    })
}

/// Run a future that does not wait on anything to completion.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use ruma::{
        OwnedUserId, RoomVersionId, UInt,
        events::room::power_levels::{RoomPowerLevels, RoomPowerLevelsSource},
        owned_room_id,
        serde::Raw,
        user_id,
    };
    use serde_json::json;

    use super::*;

    /// The outcome of evaluating `ruleset` for `user` against `event` the plain way.
    fn plain(ruleset: &Ruleset, user: &UserId, name: &str, event: &JsonValue, members: u64) -> Vec<Action> {
        let raw: Raw<JsonValue> = Raw::new(event).unwrap();
        let flat = FlattenedJson::from_raw(&raw);
        let mut context = PushConditionRoomCtx::new(
            owned_room_id!("!room:x"),
            UInt::new(members).unwrap(),
            user.to_owned(),
            name.to_owned(),
        );
        // The sender, @zed:x, created the room: they may notify the whole room.
        let rules = crate::matrix::room_version::rules(&RoomVersionId::V11).unwrap();
        let power = RoomPowerLevels::new(
            RoomPowerLevelsSource::None,
            &rules.authorization,
            [user_id!("@zed:x").to_owned()],
        );
        context.power_levels = Some(power.into());
        first_match(ruleset, &flat, &context).unwrap().to_vec()
    }

    /// The defaults plus rules of the given kinds, as a client would add them.
    fn with_rules(user: &UserId, content: JsonValue, overrides: JsonValue) -> Ruleset {
        let mut value = serde_json::to_value(Ruleset::server_default(user)).unwrap();
        for (kind, rules) in [("content", content), ("override", overrides)] {
            // Empty kinds are left out of the JSON.
            let list = value.as_object_mut().unwrap().entry(kind).or_insert_with(|| json!([]));
            let list = list.as_array_mut().unwrap();
            for rule in rules.as_array().unwrap().iter().rev() {
                list.insert(0, rule.clone());
            }
        }
        serde_json::from_value(value).unwrap()
    }

    fn cake_rules(user: &UserId) -> Ruleset {
        let cake = json!([{"rule_id": "cake", "pattern": "cake", "default": false, "enabled": true,
                           "actions": ["notify", {"set_tweak": "highlight"}]}]);
        with_rules(user, cake, json!([]))
    }

    #[test]
    fn members_with_default_rules_share_one_template() {
        let (a, b) = (user_id!("@alice:x"), user_id!("@bob:x"));
        let ta = template_of(&Ruleset::server_default(a), a);
        let tb = template_of(&Ruleset::server_default(b), b);
        assert_eq!(ta, tb);
        assert!(!ta.personal);
        assert!(!ta.text.contains("alice"));
        // A custom keyword rule makes another class, still shared by whoever has it.
        let ca = template_of(&cake_rules(a), a);
        assert_ne!(ca, ta);
        assert_eq!(ca, template_of(&cake_rules(b), b));
        // Rules that read the display name or the bare localpart are personal.
        let name = json!([{"rule_id": "name", "default": false, "enabled": true, "actions": ["notify"],
                           "conditions": [{"kind": "contains_display_name"}]}]);
        assert!(template_of(&with_rules(a, json!([]), name), a).personal);
        let me = json!([{"rule_id": "me", "pattern": "alice", "default": false, "enabled": true,
                         "actions": ["notify"]}]);
        assert!(template_of(&with_rules(a, me, json!([])), a).personal);
    }

    #[test]
    fn a_template_instantiated_for_its_own_user_is_their_rules() {
        let a = user_id!("@alice:x");
        for rules in [Ruleset::server_default(a), cake_rules(a)] {
            let template = template_of(&rules, a);
            let back = instantiate(&template, a).unwrap();
            assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&rules).unwrap());
        }
    }

    #[test]
    fn named_localparts_come_from_every_string() {
        let event = json!({
            "sender": "@carol:x",
            "state_key": "@Dave:x",
            "content": {
                "body": "hi @Bob:x and bob@mail.example, @eve",
                "m.mentions": {"user_ids": ["@frank:x"]},
                "nested": [{"deep": "x @gina:x"}],
            },
        });
        let named = named_localparts(&event);
        for l in ["carol", "Dave", "dave", "Bob", "bob", "frank", "gina"] {
            assert!(named.contains(l), "{l} missing from {named:?}");
        }
        assert!(!named.contains("eve"));
    }

    /// For many events and users, the class evaluation (neutral, then the members the event
    /// names, by lowercased localpart, on their own) gives every member the outcome of their
    /// own rules.
    #[test]
    fn class_outcomes_equal_every_members_own() {
        let neutral = user_id!("@neutral-8f3a2c:x");
        let users: Vec<OwnedUserId> = ["@alice:x", "@bob:x", "@Carol:x", "@dave.smith:x", "@eve:x"]
            .iter()
            .map(|u| (*u).try_into().unwrap())
            .collect();
        let rules_of = |u: &UserId, i: usize| {
            if i.is_multiple_of(2) { Ruleset::server_default(u) } else { cake_rules(u) }
        };
        let message =
            |content: JsonValue| json!({"type": "m.room.message", "sender": "@zed:x", "content": content});
        let events = [
            message(json!({"msgtype": "m.text", "body": "hello"})),
            message(
                json!({"msgtype": "m.text", "body": "cake for @bob:x", "m.mentions": {"user_ids": ["@bob:x"]}}),
            ),
            message(json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}})),
            message(json!({"msgtype": "m.notice", "body": "bot"})),
            message(
                json!({"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": ["@DAVE.SMITH:x", "@eve:x"]}}),
            ),
            json!({"type": "m.room.member", "sender": "@zed:x", "state_key": "@Carol:x", "content": {"membership": "invite"}}),
            json!({"type": "m.room.member", "sender": "@zed:x", "state_key": "@carol:x", "content": {"membership": "invite"}}),
            json!({"type": "m.room.member", "sender": "@zed:x", "state_key": "@zed:x", "content": {"membership": "join"}}),
            json!({"type": "m.room.encrypted", "sender": "@zed:x", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}),
        ];
        for members in [2u64, 5] {
            for event in &events {
                let named = named_localparts(event);
                for (i, user) in users.iter().enumerate() {
                    let own = plain(&rules_of(user, i), user, user.localpart(), event, members);
                    let via_class = if named.contains(&user.localpart().to_lowercase()) {
                        own.clone()
                    } else {
                        let class = instantiate(&template_of(&rules_of(user, i), user), neutral).unwrap();
                        plain(&class, neutral, neutral.localpart(), event, members)
                    };
                    assert_eq!(
                        serde_json::to_value(&via_class).unwrap(),
                        serde_json::to_value(&own).unwrap(),
                        "{user} for {event}"
                    );
                }
            }
        }
    }
}
