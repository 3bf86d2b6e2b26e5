//! Glue between the room graph and ruma's authorization rules: which state events authorize
//! a new event, and the check of an event against its auth events and the state before it.

use ruma::{
    EventId, OwnedEventId, UserId,
    events::{StateEventType, TimelineEventType},
    room_version_rules::AuthorizationRules,
    state_res,
};
use serde_json::value::RawValue as RawJsonValue;

use super::pdu::Pdu;

/// The `(type, state_key)` pairs whose current events a new event must cite as `auth_events`.
pub fn auth_event_keys(
    rules: &AuthorizationRules,
    kind: &TimelineEventType,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
) -> Result<Vec<(StateEventType, String)>, String> {
    state_res::auth_types_for_event(kind, sender, state_key, content, rules)
}

/// Check `event` by the room version's rules: first against the events it cites as
/// `auth_events` (state-independent rules), then against `state_before`, the room state the
/// event applies to. `Err` carries the rule that failed, fit to show to the sender.
pub fn check_event<'a>(
    rules: &AuthorizationRules,
    event: &Pdu,
    auth_event: impl Fn(&EventId) -> Option<&'a Pdu>,
    state_before: impl Fn(&StateEventType, &str) -> Option<&'a Pdu>,
) -> Result<(), String> {
    state_res::check_state_independent_auth_rules(rules, event, &auth_event)?;
    state_res::check_state_dependent_auth_rules(rules, event, &state_before)
}

/// The auth event IDs for an event, picked from a lookup of the current state.
pub fn select_auth_events<'a>(
    keys: &[(StateEventType, String)],
    current: impl Fn(&StateEventType, &str) -> Option<&'a OwnedEventId>,
) -> Vec<OwnedEventId> {
    keys.iter().filter_map(|(kind, key)| current(kind, key).cloned()).collect()
}
