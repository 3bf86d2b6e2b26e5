//! Push rules, pushers and the notification list.

use ruma::{
    MilliSecondsSinceUnixEpoch, UInt, UserId,
    api::client::push::{
        delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule,
        set_pushrule_actions, set_pushrule_enabled,
    },
    push::{RemovePushRuleError, RuleKind},
    serde::Raw,
};

use axum::{
    Json,
    extract::{Path, RawQuery, State},
    response::Html,
};

use super::parse_stream_token;
use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Authenticated, Ruma},
    },
    service::rooms::render::{Rendering, Shape, Viewer},
};

/// Default and largest page of `/notifications`.
const DEFAULT_NOTIFICATIONS: usize = 20;
const MAX_NOTIFICATIONS: usize = 100;

fn not_found() -> Error {
    Error::not_found("Push rule not found")
}

/// A kind outside the spec's five is a malformed path (400, as Synapse), not a missing rule.
fn known(kind: &RuleKind) -> Result<()> {
    match kind {
        RuleKind::Override | RuleKind::Underride | RuleKind::Sender | RuleKind::Room | RuleKind::Content => {
            Ok(())
        }
        other => Err(Error::MalformedPath(format!("Unknown push rule kind {:?}", other.as_str()))),
    }
}

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    services: AppState,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response> {
    let ruleset = services.notifications.ruleset(&req.identity.user_id)?;
    Ok(get_pushrules_all::v3::Response::new((*ruleset).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_scope(
    services: AppState,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response> {
    let ruleset = services.notifications.ruleset(&req.identity.user_id)?;
    Ok(get_pushrules_global_scope::v3::Response::new((*ruleset).clone()))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/`: the rules of one kind, highest
/// priority first. Not in ruma (the spec describes the whole set and single rules); Synapse
/// answers it, and clients and scripts use it.
pub async fn get_pushrules_of_kind(
    State(services): State<AppState>,
    Path(kind): Path<String>,
    caller: Authenticated,
) -> Result<Json<serde_json::Value>> {
    let ruleset = services.notifications.ruleset(&caller.identity.user_id)?;
    let key = match kind.as_str() {
        "override" => "override",
        "content" => "content",
        "room" => "room",
        "sender" => "sender",
        "underride" => "underride",
        _ => return Err(Error::MalformedPath(format!("Unknown push rule kind {kind:?}"))),
    };
    let mut all = serde_json::to_value(&*ruleset).map_err(|e| Error::internal(format!("push rules: {e}")))?;
    Ok(Json(all.get_mut(key).map(serde_json::Value::take).unwrap_or_else(|| serde_json::json!([]))))
}

/// Any other path under `/pushrules/` (another scope, an unknown kind, a missing trailing
/// slash, an unknown rule attribute): a malformed request, answered 400 `M_UNRECOGNIZED` as
/// Synapse does, rather than the 404 of an unknown endpoint.
pub async fn malformed_pushrule_path() -> Error {
    Error::MalformedPath("Unrecognized push rule request".to_owned())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn get_pushrule(
    services: AppState,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response> {
    let ruleset = services.notifications.ruleset(&req.identity.user_id)?;
    known(&req.body.kind)?;
    let rule = ruleset.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(not_found)?;
    Ok(get_pushrule::v3::Response::new(rule.into()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn set_pushrule(
    services: AppState,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response> {
    let body = req.body;
    services.notifications.update_ruleset(&req.identity.user_id, |ruleset| {
        ruleset.insert(body.rule, body.after.as_deref(), body.before.as_deref()).map_err(|e| {
            // A missing anchor is "a problem configuring this push rule" (400), not a
            // missing rule being updated (404).
            Error::invalid_param(e.to_string())
        })
    })?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub async fn delete_pushrule(
    services: AppState,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response> {
    let body = req.body;
    known(&body.kind)?;
    services.notifications.update_ruleset(&req.identity.user_id, |ruleset| {
        ruleset.remove(body.kind, &body.rule_id).map_err(|e| match e {
            RemovePushRuleError::ServerDefault => {
                Error::invalid_param("Server-default rules cannot be deleted")
            }
            _ => not_found(),
        })
    })?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn get_pushrule_enabled(
    services: AppState,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response> {
    let ruleset = services.notifications.ruleset(&req.identity.user_id)?;
    known(&req.body.kind)?;
    let rule = ruleset.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub async fn set_pushrule_enabled(
    services: AppState,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response> {
    let body = req.body;
    known(&body.kind)?;
    services.notifications.update_ruleset(&req.identity.user_id, |ruleset| {
        ruleset.set_enabled(body.kind, &body.rule_id, body.enabled).map_err(|_| not_found())
    })?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn get_pushrule_actions(
    services: AppState,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response> {
    let ruleset = services.notifications.ruleset(&req.identity.user_id)?;
    known(&req.body.kind)?;
    let rule = ruleset.get(req.body.kind.clone(), &req.body.rule_id).ok_or_else(not_found)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub async fn set_pushrule_actions(
    services: AppState,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response> {
    let body = req.body;
    known(&body.kind)?;
    services.notifications.update_ruleset(&req.identity.user_id, |ruleset| {
        ruleset.set_actions(body.kind, &body.rule_id, body.actions).map_err(|_| not_found())
    })?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushers`
pub async fn get_pushers(
    services: AppState,
    req: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response> {
    let pushers = services
        .notifications
        .pushers(&req.identity.user_id)?
        .into_iter()
        .map(|raw| {
            serde_json::from_str(raw.get()).map_err(|e| Error::internal(format!("stored pusher: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(get_pushers::v3::Response::new(pushers))
}

/// `POST /_matrix/client/v3/pushers/set`
pub async fn set_pusher(
    services: AppState,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response> {
    let user_id = &req.identity.user_id;
    match req.body.action {
        set_pusher::v3::PusherAction::Post(data) => {
            let pusher = data.pusher;
            let json =
                serde_json::value::to_raw_value(&pusher).map_err(|e| Error::bad_json(e.to_string()))?;
            services.push_gateways.set_pusher(
                user_id,
                req.identity.device()?,
                &pusher.ids.app_id,
                &pusher.ids.pushkey,
                Some(json),
                data.append,
            )?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            let device_id = req.identity.device()?;
            services.push_gateways.set_pusher(user_id, device_id, &ids.app_id, &ids.pushkey, None, false)?;
        }
        _ => return Err(Error::invalid_param("Unsupported pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}

/// `GET /_matrix/client/unstable/pushers/remove?user_id=…&app_id=…&pushkey=…&token=…` (and
/// `POST`, for RFC 8058's one-click unsubscribe): the link in notification emails, which
/// deletes that email pusher without a login; the token authorises it. Answers a page for
/// the browser.
pub async fn remove_email_pusher(
    State(services): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Html<String>> {
    let Some(email) = &services.email_notifier else {
        return Err(Error::unrecognized("Email notifications are not enabled on this server"));
    };
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .ok_or_else(|| Error::missing_param(format!("Missing parameter {name}")))
    };
    let user_id =
        UserId::parse(param("user_id")?).map_err(|e| Error::invalid_param(format!("user_id: {e}")))?;
    let pushkey = param("pushkey")?;
    email.unsubscribe(&user_id, param("app_id")?, pushkey, param("token")?)?;
    let address = pushkey.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    Ok(Html(format!(
        "<!DOCTYPE html>\n<html><head><title>Unsubscribed</title></head><body>\n\
         <p>{address} will get no more email notifications.</p>\n</body></html>\n"
    )))
}

/// `GET /_matrix/client/v3/notifications`
pub async fn get_notifications(
    services: AppState,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response> {
    let body = req.body;
    let user_id = &req.identity.user_id;
    let from = body.from.as_deref().map(parse_stream_token).transpose()?;
    let limit = body
        .limit
        .map_or(DEFAULT_NOTIFICATIONS, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_NOTIFICATIONS))
        .clamp(1, MAX_NOTIFICATIONS);
    let only_highlight = body.only.as_deref() == Some("highlight");
    let (entries, next) = services.notifications.list(user_id, from, limit, only_highlight)?;
    let viewer = Viewer { user_id, device_id: req.identity.device_id.as_deref() };
    let mut notifications = Vec::new();
    for entry in entries {
        let Some(event) = services.events.get(&entry.event_id)? else { continue };
        if !services.visibility.may_see_event(user_id, &event)? {
            continue;
        }
        let raw = services.renderer.raw(viewer, &event, Rendering { shape: Shape::Client, fields: None })?;
        notifications.push(get_notifications::v3::Notification::new(
            entry.actions,
            Raw::from_json(raw),
            entry.read,
            entry.room_id,
            MilliSecondsSinceUnixEpoch(UInt::new_saturating(entry.ts)),
        ));
    }
    let mut response = get_notifications::v3::Response::new(notifications);
    response.next_token = next.map(|n| format!("s{n}"));
    Ok(response)
}

/// `/notifications` entries carry `profile_tag` even when there is none (`null`), as Synapse
/// sends them; ruma leaves the key out.
pub fn fill_notifications(json: &mut serde_json::Value) {
    let Some(entries) = json.get_mut("notifications").and_then(serde_json::Value::as_array_mut) else {
        return;
    };
    for entry in entries.iter_mut().filter_map(serde_json::Value::as_object_mut) {
        entry.entry("profile_tag").or_insert(serde_json::Value::Null);
    }
}
