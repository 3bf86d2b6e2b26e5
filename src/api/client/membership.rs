//! Membership: join, invite, leave, forget, kick, ban, unban, and membership listings.

use std::collections::BTreeMap;

use ruma::{
    api::client::membership::{
        Invite3pid, ban_user, forget_room, get_member_events, get_mutual_rooms, invite_user, join_room_by_id,
        join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
    serde::Raw,
};

use super::{event_json, parse_stream_token};
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rate_limits::Limiter,
};

/// Joins are limited per user and per room (Synapse's `rc_joins.local`, `rc_joins_per_room`).
fn limit_join(services: &AppState, user_id: &ruma::UserId, room_id: &ruma::RoomId) -> Result<()> {
    services.rate_limits.check_user(Limiter::JoinsLocal, user_id)?;
    services.rate_limits.check(Limiter::JoinsPerRoom, room_id.as_str(), Some(user_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_room_by_id(
    services: AppState,
    req: Ruma<join_room_by_id::v3::Request>,
) -> Result<join_room_by_id::v3::Response> {
    let body = req.body;
    let user_id = &req.identity.user_id;
    limit_join(&services, user_id, &body.room_id)?;
    services.membership.join(user_id, &body.room_id, body.reason.as_deref(), Default::default()).await?;
    Ok(join_room_by_id::v3::Response::new(body.room_id))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`. `via` names servers to join through,
/// which only matters with federation. The body's other keys (a display name for this room,
/// custom keys) go into the member event, as on Synapse.
pub async fn join_room_by_id_or_alias(
    services: AppState,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let mut content: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&req.raw_body)
        .map_err(|e| Error::bad_json(format!("The body must be a JSON object: {e}")))?;
    // Not member content: the signed third-party invite is checked, not stored.
    content.remove("third_party_signed");
    let body = req.body;
    let (room_id, via) = services.membership.resolve_with_servers(&body.room_id_or_alias, &body.via).await?;
    limit_join(&services, &req.identity.user_id, &room_id)?;
    services
        .membership
        .join_via(&req.identity.user_id, &room_id, &via, body.reason.as_deref(), content)
        .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite_user(
    services: AppState,
    req: Ruma<invite_user::v3::Request>,
) -> Result<invite_user::v3::Response> {
    let body = req.body;
    match body.recipient {
        invite_user::v3::InvitationRecipient::UserId(invite) => {
            // Per room, per invitee and per inviter (Synapse's `rc_invites`).
            let inviter = &req.identity.user_id;
            let limits = &services.rate_limits;
            limits.check(Limiter::InvitesPerRoom, body.room_id.as_str(), Some(inviter))?;
            limits.check(Limiter::InvitesPerUser, invite.user_id.as_str(), Some(inviter))?;
            limits.check_user(Limiter::InvitesPerIssuer, inviter)?;
            services
                .membership
                .invite(
                    &req.identity.user_id,
                    &body.room_id,
                    &invite.user_id,
                    invite.reason.as_deref(),
                    Default::default(),
                )
                .await?;
        }
        invite_user::v3::InvitationRecipient::ThirdPartyId(Invite3pid { .. }) => {
            return Err(Error::invalid_param("Third-party invites are not supported by this server"));
        }
        _ => return Err(Error::bad_json("Unknown invite recipient")),
    }
    Ok(invite_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave_room(
    services: AppState,
    req: Ruma<leave_room::v3::Request>,
) -> Result<leave_room::v3::Response> {
    let body = req.body;
    services
        .membership
        .leave(&req.identity.user_id, &body.room_id, body.reason.as_deref(), Default::default())
        .await?;
    Ok(leave_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget_room(
    services: AppState,
    req: Ruma<forget_room::v3::Request>,
) -> Result<forget_room::v3::Response> {
    services.membership.forget(&req.identity.user_id, &req.body.room_id)?;
    Ok(forget_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick_user(
    services: AppState,
    req: Ruma<kick_user::v3::Request>,
) -> Result<kick_user::v3::Response> {
    let body = req.body;
    services
        .membership
        .kick(&req.identity.user_id, &body.room_id, &body.user_id, body.reason.as_deref(), Default::default())
        .await?;
    Ok(kick_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban_user(
    services: AppState,
    req: Ruma<ban_user::v3::Request>,
) -> Result<ban_user::v3::Response> {
    let body = req.body;
    services
        .membership
        .ban(&req.identity.user_id, &body.room_id, &body.user_id, body.reason.as_deref(), Default::default())
        .await?;
    Ok(ban_user::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban_user(
    services: AppState,
    req: Ruma<unban_user::v3::Request>,
) -> Result<unban_user::v3::Response> {
    let body = req.body;
    services
        .membership
        .unban(
            &req.identity.user_id,
            &body.room_id,
            &body.user_id,
            body.reason.as_deref(),
            Default::default(),
        )
        .await?;
    Ok(unban_user::v3::Response::new())
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined_rooms(
    services: AppState,
    req: Ruma<joined_rooms::v3::Request>,
) -> Result<joined_rooms::v3::Response> {
    Ok(joined_rooms::v3::Response::new(services.room_actions.joined_rooms(&req.identity.user_id)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn get_member_events(
    services: AppState,
    req: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let body = req.body;
    let at = body.at.as_deref().map(parse_stream_token).transpose()?;
    let events = services.room_actions.members(
        &req.identity.user_id,
        &body.room_id,
        at,
        body.membership.as_ref(),
        body.not_membership.as_ref(),
    )?;
    let chunk = events
        .iter()
        .map(|e| event_json(&services, &req.identity, e).map(Raw::from_json))
        .collect::<Result<_>>()?;
    Ok(get_member_events::v3::Response::new(chunk))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members(
    services: AppState,
    req: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    let mut joined = BTreeMap::new();
    for member in services.room_actions.joined_members(&req.identity.user_id, &req.body.room_id)? {
        let mut entry = joined_members::v3::RoomMember::new();
        entry.display_name = member.display_name;
        entry.avatar_url = member.avatar_url.map(Into::into);
        joined.insert(member.user_id, entry);
    }
    Ok(joined_members::v3::Response::new(joined))
}

/// `joined_members` spells out a member without a display name or avatar as `null`, as
/// Synapse does (ruma leaves the keys out); clients index both keys without checking.
pub fn fill_joined_members(json: &mut serde_json::Value) {
    let Some(joined) = json.get_mut("joined").and_then(serde_json::Value::as_object_mut) else { return };
    for member in joined.values_mut().filter_map(serde_json::Value::as_object_mut) {
        for key in ["display_name", "avatar_url"] {
            member.entry(key).or_insert(serde_json::Value::Null);
        }
    }
}

/// `GET /_matrix/client/v1/mutual_rooms` (and MSC2666's unstable path): the rooms the
/// requester and `user_id` are both joined to, a page at a time.
pub async fn get_mutual_rooms(
    services: AppState,
    req: Ruma<get_mutual_rooms::v1::Request>,
) -> Result<get_mutual_rooms::v1::Response> {
    let body = req.body;
    let page =
        services.membership.mutual_rooms(&req.identity.user_id, &body.user_id, body.from.as_deref())?;
    let mut response =
        get_mutual_rooms::v1::Response::new(ruma::UInt::new_saturating(page.count), page.rooms);
    response.next_batch = page.next_batch;
    Ok(response)
}

/// `GET /_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms`
pub async fn get_mutual_rooms_unstable(
    services: AppState,
    req: Ruma<get_mutual_rooms::unstable::Request>,
) -> Result<get_mutual_rooms::unstable::Response> {
    let body = req.body;
    let page =
        services.membership.mutual_rooms(&req.identity.user_id, &body.user_id, body.from.as_deref())?;
    let mut response = get_mutual_rooms::unstable::Response::new(page.rooms);
    response.next_batch = page.next_batch;
    Ok(response)
}
