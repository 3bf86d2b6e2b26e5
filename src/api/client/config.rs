//! Account data, global and per room.

use ruma::{
    UserId,
    api::client::config::{
        get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
    },
    serde::Raw,
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

fn own(requester: &UserId, target: &UserId) -> Result<()> {
    if requester == target {
        Ok(())
    } else {
        Err(Error::forbidden("You can only access your own account data"))
    }
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global_account_data(
    services: AppState,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    let kind = body.event_type.to_string();
    let content = if kind == crate::service::push::PUSH_RULES {
        // The defaults count as set, as in sync.
        services.notifications.push_rules_content(&body.user_id)?
    } else {
        services
            .account_data
            .get(&body.user_id, None, &kind)?
            .ok_or_else(|| Error::not_found("Account data not found"))?
    };
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(content)))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global_account_data(
    services: AppState,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    let content = body.data.into_json();
    services.account_data.set_by_client(&body.user_id, None, &body.event_type.to_string(), content)?;
    Ok(set_global_account_data::v3::Response::new())
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room_account_data(
    services: AppState,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    let content = services
        .account_data
        .get(&body.user_id, Some(&body.room_id), &body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("Account data not found"))?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(content)))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room_account_data(
    services: AppState,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let body = req.body;
    own(&req.identity.user_id, &body.user_id)?;
    let content = body.data.into_json();
    services.account_data.set_by_client(
        &body.user_id,
        Some(&body.room_id),
        &body.event_type.to_string(),
        content,
    )?;
    Ok(set_room_account_data::v3::Response::new())
}
