//! Delayed events (MSC4140, `ruma::api::client::delayed_events`): the user's list, one
//! event, and the management actions, both as Synapse serves them (`POST` with the action in
//! the body, authenticated) and as MSC4140 defines them (`POST .../{action}`, where the
//! delay ID is the capability and no token is needed: lk-jwt-service calls them). Scheduling
//! rides on `PUT /send` and `PUT /state` with `?org.matrix.msc4140.delay=<ms>`; the query
//! parameter and the `{"delay_id"}` answer are read and built here for those handlers.

use axum::response::{IntoResponse, Response};
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::{
        OutgoingResponse,
        client::delayed_events::{
            DelayedEventData, delayed_message_event, get_all_delayed_events, get_delayed_event,
            update_delayed_event::{UpdateAction, unstable_v1, unstable_v2},
        },
    },
    serde::Raw,
};

use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Ruma, RumaResponse},
    },
    service::{delayed_events::Caller, rate_limits::Limiter, rooms::delayed::Action},
    storage::tables::DelayedEventRecord,
};

/// The query parameter that makes `PUT /send` or `PUT /state` schedule a delayed event.
const DELAY_PARAM: &str = "org.matrix.msc4140.delay";

/// The delay a `PUT /send` or `PUT /state` asks for, in milliseconds, if any: a
/// non-negative integer (`400 M_INVALID_PARAM` otherwise, as Synapse answers). A number too
/// large for 64 bits reads as the largest, which is then past any configured maximum.
pub fn delay_param(query: Option<&str>) -> Result<Option<u64>> {
    let Some(query) = query else { return Ok(None) };
    let Some((_, value)) = url::form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == DELAY_PARAM)
    else {
        return Ok(None);
    };
    let digits = value.strip_prefix('+').unwrap_or(&value);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Some(digits.parse().unwrap_or(u64::MAX)));
    }
    let negative =
        value.strip_prefix('-').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    Err(Error::invalid_param(if negative {
        format!("Query parameter {DELAY_PARAM} must be a positive integer.")
    } else {
        format!("Query parameter {DELAY_PARAM} must be an integer")
    }))
}

/// The answer of `PUT /send` and `PUT /state`: the endpoint's own, or `{"delay_id"}` when
/// the event was delayed.
pub enum SendAnswer<T> {
    Sent(T),
    Delayed(String),
}

impl<T: OutgoingResponse> IntoResponse for SendAnswer<T> {
    fn into_response(self) -> Response {
        match self {
            SendAnswer::Sent(response) => RumaResponse(response).into_response(),
            // The state endpoint's delayed answer has the same shape.
            SendAnswer::Delayed(delay_id) => {
                RumaResponse(delayed_message_event::unstable::Response::new(delay_id)).into_response()
            }
        }
    }
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events`: the user's waiting
/// delayed events, soonest first.
pub async fn get_all_delayed_events(
    services: AppState,
    req: Ruma<get_all_delayed_events::unstable::Request>,
) -> Result<get_all_delayed_events::unstable::Response> {
    services.rate_limits.check_user(Limiter::DelayedEventMgmt, &req.identity.user_id)?;
    let events = services.delayed_actions.list(&req.identity.user_id)?;
    let data = events.into_iter().map(|(delay_id, record)| data_of(delay_id, record)).collect();
    Ok(get_all_delayed_events::unstable::Response::new(data))
}

/// `GET /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}`: one of the
/// user's waiting delayed events (`404` for anyone else's).
pub async fn get_delayed_event(
    services: AppState,
    req: Ruma<get_delayed_event::unstable::Request>,
) -> Result<get_delayed_event::unstable::Response> {
    services.rate_limits.check_user(Limiter::DelayedEventMgmt, &req.identity.user_id)?;
    let record = services.delayed_actions.get(&req.identity.user_id, &req.body.delay_id)?;
    Ok(get_delayed_event::unstable::Response::new(data_of(req.body.delay_id, record)))
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}` with
/// `{"action": "cancel" | "restart" | "send"}`: for the owner only (`404` for others).
pub async fn update_delayed_event(
    services: AppState,
    req: Ruma<unstable_v1::Request>,
) -> Result<unstable_v1::Response> {
    services.rate_limits.check_user(Limiter::DelayedEventMgmt, &req.identity.user_id)?;
    let action = action_of(&req.body.action)
        .ok_or_else(|| Error::invalid_param("'action' is not one of 'cancel', 'restart', 'send'"))?;
    let caller = Caller::Owner(&req.identity.user_id);
    services.delayed_actions.act(&req.body.delay_id, action, caller).await?;
    Ok(unstable_v1::Response::new())
}

/// `POST /_matrix/client/unstable/org.matrix.msc4140/delayed_events/{delay_id}/{action}`
/// (`cancel`, `restart`, `send`), without authentication: knowing the delay ID is enough.
pub async fn update_delayed_event_by_path(
    services: AppState,
    req: Ruma<unstable_v2::Request>,
) -> Result<unstable_v2::Response> {
    // Other actions are other paths, which this server does not serve.
    let action = action_of(&req.body.action).ok_or_else(|| Error::unrecognized("Unrecognized request"))?;
    services.delayed_actions.act(&req.body.delay_id, action, Caller::DelayId).await?;
    Ok(unstable_v2::Response::new())
}

/// Synapse answers each delayed event with MSC4140's current field names (`delay_ms`,
/// `delayed_since_ts`) next to the earlier ones ruma writes (`delay`, `running_since`);
/// clients read either, so both are sent.
pub fn fill_synapse_fields(json: &mut serde_json::Value) {
    fn fill(event: &mut serde_json::Value) {
        let Some(event) = event.as_object_mut() else { return };
        for (old, new) in [("delay", "delay_ms"), ("running_since", "delayed_since_ts")] {
            if let Some(value) = event.get(old).cloned() {
                event.insert(new.to_owned(), value);
            }
        }
    }
    match json.get_mut("delayed_events").and_then(serde_json::Value::as_array_mut) {
        Some(events) => events.iter_mut().for_each(fill),
        None => fill(json),
    }
}

fn action_of(action: &UpdateAction) -> Option<Action> {
    match action {
        UpdateAction::Cancel => Some(Action::Cancel),
        UpdateAction::Restart => Some(Action::Restart),
        UpdateAction::Send => Some(Action::Send),
        _ => None,
    }
}

fn data_of(delay_id: String, record: DelayedEventRecord) -> DelayedEventData {
    DelayedEventData::new(
        delay_id,
        record.room_id,
        record.kind.into(),
        record.state_key,
        Raw::from_json(record.content),
        std::time::Duration::from_millis(record.delay_ms),
        MilliSecondsSinceUnixEpoch(UInt::new_saturating(record.running_since_ms)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_parameter_is_a_non_negative_integer() {
        let delay = |q: &str| delay_param(Some(q));
        assert_eq!(delay_param(None).unwrap(), None);
        assert_eq!(delay("").unwrap(), None);
        assert_eq!(delay("ts=5").unwrap(), None);
        assert_eq!(delay("org.matrix.msc4140.delay=1500").unwrap(), Some(1500));
        assert_eq!(delay("a=b&org.matrix.msc4140.delay=0").unwrap(), Some(0));
        assert_eq!(delay("org.matrix.msc4140.delay=%2B7").unwrap(), Some(7));
        assert_eq!(delay("org.matrix.msc4140.delay=99999999999999999999999").unwrap(), Some(u64::MAX));
        for bad in ["x", "", "1.5", "1e3", "-5", "-", " 5", "5 ", "0x10"] {
            let query = format!(
                "org.matrix.msc4140.delay={}",
                url::form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
            );
            match delay_param(Some(&query)) {
                Err(Error::Matrix { kind: ruma::api::error::ErrorKind::InvalidParam, .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn both_field_names_are_filled() {
        let mut list = serde_json::json!({"delayed_events": [{"delay": 5, "running_since": 7}]});
        fill_synapse_fields(&mut list);
        assert_eq!(list["delayed_events"][0]["delay_ms"], 5);
        assert_eq!(list["delayed_events"][0]["delayed_since_ts"], 7);
        let mut one = serde_json::json!({"delay": 5, "running_since": 7});
        fill_synapse_fields(&mut one);
        assert_eq!((one["delay_ms"].as_u64(), one["delayed_since_ts"].as_u64()), (Some(5), Some(7)));
    }
}
