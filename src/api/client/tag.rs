//! Room tags (favourites, low priority, custom), kept in room account data `m.tag`.

use ruma::{
    UserId,
    api::client::tag::{create_tag, delete_tag, get_tags},
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

fn own(requester: &UserId, target: &UserId) -> Result<()> {
    if requester == target { Ok(()) } else { Err(Error::forbidden("You can only access your own tags")) }
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn get_tags(
    services: AppState,
    req: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    // `m.tag` can also be written whole as room account data, so a stored tag may not have
    // the shape of one; such a tag is left out rather than failing every read of the others.
    let tags = services
        .account_data
        .tags(&body.user_id, &body.room_id)?
        .into_iter()
        .filter_map(|(name, info)| Some((name.into(), serde_json::from_value(info).ok()?)))
        .collect();
    Ok(get_tags::v3::Response::new(tags))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn create_tag(
    services: AppState,
    req: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    let info = serde_json::to_value(&body.tag_info).map_err(|e| Error::bad_json(e.to_string()))?;
    services.account_data.set_tag(&body.user_id, &body.room_id, &body.tag, Some(info))?;
    Ok(create_tag::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(
    services: AppState,
    req: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    services.account_data.set_tag(&body.user_id, &body.room_id, &body.tag, None)?;
    Ok(delete_tag::v3::Response::new())
}
